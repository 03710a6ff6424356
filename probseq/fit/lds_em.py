"""EM for a :class:`probseq.LDS`: :func:`fit_lds_em`, the one EM driver
(:func:`probseq.fit_em`) with the LDS's settings. The math (autodiff E-step in the
natural parameters, closed-form M-step, the initial distribution's choices) is the
family's, in :mod:`probseq.families.lds_em`."""

from __future__ import annotations

from probseq.families.lds import LDS
from probseq.families.lds_em import (  # noqa: F401  (their old home)
    INITIAL_CHOICES,
    LDSStatistics,
    _stationary_initial,
    lds_expected_statistics,
    lds_m_step,
    natural_parameters,
)
from probseq.fit.result import FitResult

__all__ = ["fit_lds_em"]


def fit_lds_em(model: LDS, params, data, *, mask=None, inputs=None, num_iters: int = 100,
               tol: float = 1e-6, initial: str = "stationary", progress: bool = False,
               checkpoint_dir=None) -> FitResult:  # fmt: skip
    """Fit a :class:`probseq.LDS` by expectation-maximisation (closed-form M-step; the
    E-step by autodiff of log p(y) in the natural parameters).

    Args:
        model: a :class:`probseq.LDS`.
        params: starting parameters (``model.init(key)``).
        data, mask, inputs: sequences as for :func:`probseq.log_prob`.
        num_iters: at most this many iterations.
        tol: stop when the log-likelihood changes by at most ``tol`` times its magnitude.
        initial: how the initial distribution N(m_0, S_0) is fitted: "stationary" (the
            stationary distribution of the fitted dynamics; the default), "learn" (the
            maximum-likelihood update, as dynamax) or "fixed" (kept as in ``params``).
        progress: show a tqdm progress bar.
        checkpoint_dir: checkpoint every call and resume from it (as :func:`probseq.fit_em`).

    Returns:
        :class:`probseq.FitResult` as :func:`probseq.fit_em`'s (with "stationary" the
        first log-likelihood is of ``params`` with their stationary start); ``info``
        adds ``initial`` and, with "stationary", ``nonstationary_iterations``.

    Raises:
        ValueError: a model that is not an LDS, bad data (as for ``log_prob``), fewer
            than two observed steps in every sequence, or an unknown ``initial``.
    """
    from probseq.fit.em import fit_em

    if not isinstance(model, LDS):
        raise ValueError(f"fit_lds_em fits a probseq.LDS; got {model!r} "
                         "(fit_em fits HMMs, fit_ls AR models, fit_sgd every model).")  # fmt: skip
    return fit_em(model, params, data, mask=mask, inputs=inputs, num_iters=num_iters, tol=tol,
                  initial=initial, progress=progress, checkpoint_dir=checkpoint_dir)  # fmt: skip
