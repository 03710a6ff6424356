"""Closed-form least-squares fitting for families whose conditional likelihood is a
linear-Gaussian regression (:class:`probseq.AR`).

Example:
    >>> import numpy as np, probseq
    >>> x = np.cumsum(np.random.default_rng(0).normal(size=200))[:, None]
    >>> fit = probseq.fit_ls(probseq.AR(order=2), x)
    >>> fit.params["coef"].shape
    (2, 1, 1)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from probseq import validation
from probseq.core import SequenceModel, param_dtype
from probseq.fit.registry import FitterSpec, register
from probseq.fit.result import FitHistory, FitResult

__all__ = ["fit_ls"]


def fit_ls(model, data, *, mask=None, inputs=None, dtype=None) -> FitResult:
    """Fit ``model`` by its closed-form least squares: the conditional maximum likelihood
    (for AR(d): the first d steps of each sequence conditioned on, as statsmodels'
    ``AutoReg``). Computed in float64 NumPy whatever JAX's x64 setting.

    Args:
        model: a model with a closed-form fit (``model.least_squares``): :class:`probseq.AR`.
        data: sequences in any form :func:`probseq.log_prob` accepts.
        mask: (B, T) prefix mask for a padded batch.
        inputs: per-step inputs (models with ``input_dim > 0``).
        dtype: the parameters' floating dtype (None: JAX's default float).

    Returns:
        :class:`probseq.FitResult`: ``params``; ``history["log_likelihood"]``, one entry,
        the maximised conditional log-likelihood (total, float64), and
        ``log_likelihood_per_token`` over the regression steps;
        ``info["num_regression_steps"]``, the steps it is summed over.

    Raises:
        ValueError: a model without a closed form, bad data (as for ``log_prob``), too
            few steps for the regressors, or a singular design.
    """
    if not (isinstance(model, SequenceModel) and model.supports_least_squares):
        raise ValueError(
            f"fit_ls fits models with a closed-form least-squares fit (probseq.AR); "
            f"{model!r} has none: use probseq.fit_sgd (or fit_em for an HMM)."
        )
    dtype = param_dtype(dtype)
    batch = validation.prepare_batch(model, data, mask, inputs)
    x, m = np.asarray(batch.x, np.float64), np.asarray(batch.mask, bool)
    us = None if batch.inputs is None else np.asarray(batch.inputs, np.float64)
    raw = model.least_squares(x, m, us)
    num_steps = int(m[:, model.order :].sum())
    dim = x.shape[-1]
    log_det = 2.0 * float(np.sum(raw["log_scale"]))
    log_lik = -0.5 * num_steps * (dim * math.log(2 * math.pi) + log_det + dim)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), raw)
    return FitResult(
        params=params,
        history=FitHistory.from_totals("fit_ls", log_likelihood=[log_lik], num_tokens=num_steps),
        info={"method": "ls", "num_regression_steps": num_steps, "converged": True},
    )


def _fit_from_spec(spec, model, params, train, valid, *, progress, checkpoint_dir, mesh):
    """A spec's ``[fit] method = "ls"``: closed form, in the parameters' dtype."""
    return fit_ls(model, train.x, mask=train.mask, dtype=jax.tree.leaves(params)[0].dtype)


SPEC = register(FitterSpec(name="ls", function="fit_ls", keys={}, fit=_fit_from_spec))
