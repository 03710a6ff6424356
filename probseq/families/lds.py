r"""Linear dynamical system (linear-Gaussian state-space model, the Kalman filter's model):

.. math::
    z_1 \sim \mathcal N(m_0, S_0), \quad
    z_{t+1} = A z_t + B u_t + w_t,\ w_t \sim \mathcal N(0, Q), \quad
    y_t = C z_t + D u_t + v_t,\ v_t \sim \mathcal N(0, R)

with latent states z_t of ``state_dim`` values, observations y_t of ``obs_dim`` and
optional inputs u_t of ``input_dim``. The input u_t acts on y_t and on the *next* state
z_{t+1} (the contract's ``update(h, y_t, u_t)`` has u_t, not u_{t+1}); dynamax's
convention (u_t on z_t) is ours with inputs (u_t, u_{t-1}), see the tests.

In the contract, the state h_t is the one-step predictive p(z_t | y_<t) = N(m, L L^T)
(:class:`LDSState`: mean and Cholesky factor); the emission is the predictive Gaussian
``MultivariateNormal(C m + D u_t, C L L^T C^T + R)``; the update is the Kalman update on
y_t followed by the prediction, in square-root form (:mod:`probseq.lds_inference`), so
float32 covariances stay positive definite over long runs. So ``probseq.log_prob`` is the
exact marginal likelihood log p(y_1:T), ``probseq.sample`` draws from the model, and
``probseq.forecast`` gets exact bands from :meth:`LDS.predict`.

Covariances are parametrised by Cholesky factors: ``exp(*_log_scale)`` on the diagonal,
the strict lower triangle of ``*_scale_lower`` below it. Fitting: :func:`probseq.fit_lds_em`
(closed-form EM) or :func:`probseq.fit_sgd`.

Example:
    >>> import jax, probseq
    >>> model = probseq.LDS(state_dim=2, obs_dim=1)
    >>> params = model.init(jax.random.key(0))
    >>> y = probseq.sample(model, params, jax.random.key(1), 50)
    >>> post = model.smoother(params, y)
    >>> post.smoothed_means.shape, post.smoothed_covariances.shape
    ((50, 2), (50, 2, 2))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from probseq import validation
from probseq.core import SequenceModel, as_batch, param_dtype
from probseq.families.registry import POSITIVE_INT, FamilySpec, choice
from probseq.heads import Head, NormalHead
from probseq.lds_inference import (
    LDSSmoothed,
    condition_step,
    kalman_filter,
    parallel_kalman_filter,
    parallel_rts_smoother,
    predict_step,
    rts_smoother,
    tria,
)
from probseq.scan import EXACT

__all__ = ["LDS", "LDSState", "LDSMatrices", "LDSFilterResult", "SCAN_CHOICES", "INITIAL_CHOICES"]

#: The ``scan=`` choices of an LDS.
SCAN_CHOICES = ("auto", "sequential", "parallel")

#: The ``initial=`` choices of :func:`probseq.fit_lds_em` (how EM fits the initial
#: distribution; a spec's ``[fit] initial``), the default first.
INITIAL_CHOICES = ("stationary", "learn", "fixed")

#: "auto" filters in parallel on an accelerator from this many steps on. Provisional:
#: not measured on a GPU for the LDS (the HMM's associative scan pays there from a few
#: hundred steps, ECOSYSTEM.md); on CPU the sequential filter is faster at every
#: measured size (benchmarks/RESULTS.md, "LDS"), so "auto" never picks parallel there.
PARALLEL_MIN_STEPS = 256


class LDSState(NamedTuple):
    """p(z_t | y_<t): mean (state_dim,) and lower Cholesky factor scale (state_dim,
    state_dim) of the covariance."""

    mean: jax.Array
    scale: jax.Array


class LDSMatrices(NamedTuple):
    """The model's matrices (what :meth:`LDS.matrices` returns and ``init`` accepts):
    initial_mean m_0 (n,), initial_covariance S_0 (n, n), dynamics A (n, n),
    dynamics_input B (n, m), dynamics_covariance Q (n, n), emission C (p, n),
    emission_input D (p, m), emission_covariance R (p, p)."""

    initial_mean: jax.Array
    initial_covariance: jax.Array
    dynamics: jax.Array
    dynamics_input: jax.Array
    dynamics_covariance: jax.Array
    emission: jax.Array
    emission_input: jax.Array
    emission_covariance: jax.Array


class LDSFilterResult(NamedTuple):
    """What :meth:`LDS.filter` returns; a leading (B,) axis for a batch.

    log_likelihood: log p(y_1:T), () or (B,).
    filtered_means (T, n), filtered_covariances (T, n, n): p(z_t | y_1:t) (padded steps
        carry the prediction on).
    """

    log_likelihood: jax.Array
    filtered_means: jax.Array
    filtered_covariances: jax.Array


def _mm(a, b):
    return jnp.matmul(a, b, precision=EXACT)


def _scale(params, name):
    return jnp.tril(params[f"{name}_scale_lower"], -1) + jnp.diag(
        jnp.exp(params[f"{name}_log_scale"])
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LDS(SequenceModel):
    """Linear-Gaussian state-space model with the Kalman filter as its state.

    Args:
        state_dim: n, the size of the latent state z_t.
        obs_dim: p, the size of each observation y_t.
        input_dim: m, the size of per-step inputs u_t (0: none).
        scan: how a sequence is filtered and smoothed (log_prob, score, filter, smoother,
            fit_sgd): "sequential" (the square-root filter, T steps, and the RTS
            smoother), "parallel" (the associative scans of
            :func:`probseq.lds_inference.parallel_kalman_filter` and
            :func:`~probseq.lds_inference.parallel_rts_smoother`, O(log T) depth) or
            "auto" (:meth:`filter_path`). Both give the same values and
            gradients (the tests: 1e-5 in float32).
    """

    state_dim: int
    obs_dim: int = 1
    input_dim: int = 0
    scan: str = "auto"
    head: Head = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "state_dim", validation.check_int("state_dim", self.state_dim))
        object.__setattr__(self, "obs_dim", validation.check_int("obs_dim", self.obs_dim))
        input_dim = validation.check_int("input_dim", self.input_dim, minimum=0)
        object.__setattr__(self, "input_dim", input_dim)
        object.__setattr__(self, "head", NormalHead(self.obs_dim))
        validation.check_choice("scan", self.scan, SCAN_CHOICES)

    # -------------------------------------------------------------- parameters
    def _shapes(self):
        n, p, m = self.state_dim, self.obs_dim, self.input_dim
        return LDSMatrices((n,), (n, n), (n, n), (n, m), (n, n), (p, n), (p, m), (p, p))

    def init(self, key, *, dtype=None, **matrices):
        """Parameters: any of :class:`LDSMatrices`' fields given by keyword are used as
        they are, the rest drawn. At random: A = 0.9 times a random orthogonal matrix
        (spectral radius 0.9, a stable start), C with N(0, 1/n) entries, B and D small,
        Q = 0.1 I, R = I, m_0 = 0, S_0 = I.

        Raises:
            ValueError: an unknown keyword, a wrong shape, a non-finite entry or a
                covariance that is not symmetric positive definite.
        """
        dtype = param_dtype(dtype)
        n, p, m = self.state_dim, self.obs_dim, self.input_dim
        unknown = sorted(set(matrices) - set(LDSMatrices._fields))
        if unknown:
            raise ValueError(f"{self!r}.init got unknown keyword(s) {unknown}; the matrices "
                             f"are {', '.join(LDSMatrices._fields)}.")  # fmt: skip
        k_a, k_c, k_b, k_d = jax.random.split(key, 4)
        orth = jnp.linalg.qr(jax.random.normal(k_a, (n, n), dtype))[0]
        drawn = LDSMatrices(
            initial_mean=jnp.zeros((n,), dtype),
            initial_covariance=jnp.eye(n, dtype=dtype),
            dynamics=0.9 * orth,
            dynamics_input=0.1 * jax.random.normal(k_b, (n, m), dtype),
            dynamics_covariance=0.1 * jnp.eye(n, dtype=dtype),
            emission=jax.random.normal(k_c, (p, n), dtype) / np.sqrt(n),
            emission_input=0.1 * jax.random.normal(k_d, (p, m), dtype),
            emission_covariance=jnp.eye(p, dtype=dtype),
        )
        given = {}
        for name, value in matrices.items():
            if value is None:
                continue
            a = np.asarray(value, np.float64)
            want = getattr(self._shapes(), name)
            if a.shape != want:
                raise ValueError(f"{name} has shape {a.shape}, but {self!r} expects {want}.")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} has non-finite entries.")
            if name.endswith("covariance"):
                if not np.allclose(a, a.T, rtol=1e-8, atol=1e-12):
                    raise ValueError(f"{name} is not symmetric.")
                try:
                    np.linalg.cholesky(a)
                except np.linalg.LinAlgError:
                    raise ValueError(f"{name} is not positive definite.") from None
            given[name] = jnp.asarray(a, dtype)
        return self.params_from_matrices(drawn._replace(**given))

    def params_from_matrices(self, mats: LDSMatrices) -> dict:
        """The parameter pytree for the given matrices (covariances by their Cholesky
        factors: ``*_log_scale`` the log of the diagonal, ``*_scale_lower`` below it)."""
        params = {
            "initial_mean": mats.initial_mean,
            "dynamics": mats.dynamics,
            "dynamics_input": mats.dynamics_input,
            "emission": mats.emission,
            "emission_input": mats.emission_input,
        }
        for name in ("initial", "dynamics", "emission"):
            lower = jnp.linalg.cholesky(getattr(mats, f"{name}_covariance"))
            params[f"{name}_log_scale"] = jnp.log(jnp.diagonal(lower))
            params[f"{name}_scale_lower"] = jnp.tril(lower, -1)
        return params

    def matrices(self, params) -> LDSMatrices:
        """The model's matrices (covariances as L L^T) from the parameters."""

        def cov(name):
            s = _scale(params, name)
            return _mm(s, s.T)

        return LDSMatrices(
            params["initial_mean"],
            cov("initial"),
            params["dynamics"],
            params["dynamics_input"],
            cov("dynamics"),
            params["emission"],
            params["emission_input"],
            cov("emission"),
        )

    # ---------------------------------------------------------------- contract
    def initial_state(self, params):
        return LDSState(params["initial_mean"], _scale(params, "initial"))

    def _offsets(self, params, u):
        """(B u, D u) for one step or (T, m) inputs; zeros without inputs."""
        dtype = params["dynamics"].dtype
        if u is None or not self.input_dim:
            lead = () if u is None else jnp.shape(u)[:-1]
            return (jnp.zeros(lead + (self.state_dim,), dtype),
                    jnp.zeros(lead + (self.obs_dim,), dtype))  # fmt: skip
        u = u.astype(dtype)
        return _mm(u, params["dynamics_input"].T), _mm(u, params["emission_input"].T)

    def emission(self, params, state, u=None):
        _, d = self._offsets(params, u)
        c = params["emission"]
        scale = tria(jnp.concatenate([_mm(c, state.scale), _scale(params, "emission")], axis=1))
        return dist.MultivariateNormal(_mm(c, state.mean) + d, scale_tril=scale)

    def update(self, params, state, x, u=None):
        b, d = self._offsets(params, u)
        _, mean, scale = condition_step(
            state.mean, state.scale, params["emission"], _scale(params, "emission"),
            x.astype(state.mean.dtype), d,
        )  # fmt: skip
        return LDSState(*predict_step(mean, scale, params["dynamics"],
                                      _scale(params, "dynamics"), b))  # fmt: skip

    # ---- the EM capability (probseq.families.lds_em holds the math); and predict
    supports_em = True
    supports_predict = True

    def em_options(self, params, batch, **settings):
        from probseq.families import lds_em

        return lds_em.em_options(self, params, batch, **settings)

    def em_start(self, params, batch, options):
        from probseq.families import lds_em

        return lds_em.em_start(self, params, batch, options)

    def expected_statistics(self, params, batch, options):
        from probseq.families import lds_em

        return lds_em.expected_statistics(self, params, batch, options)

    def m_step(self, params, stats, batch, options):
        from probseq.families import lds_em

        return lds_em.m_step(self, params, stats, batch, options)

    def em_info(self, options, start_metrics, metrics):
        from probseq.families import lds_em

        return lds_em.em_info(self, options, start_metrics, metrics)

    def filter_path(self, num_steps: int) -> str:
        """ "sequential" or "parallel": ``scan`` unless it is "auto", which takes the
        parallel filter on accelerators for at least :data:`PARALLEL_MIN_STEPS` steps
        and the sequential one otherwise (always on CPU)."""
        if self.scan != "auto":
            return self.scan
        on_cpu = jax.default_backend() == "cpu"
        return "parallel" if not on_cpu and num_steps >= PARALLEL_MIN_STEPS else "sequential"

    def _filter(self, params, state, xs, us=None, mask=None):
        b, d = self._offsets(params, us)
        if us is None:
            b = jnp.zeros((xs.shape[0], self.state_dim), xs.dtype)
            d = jnp.zeros_like(xs)
        kernel = kalman_filter
        if self.filter_path(xs.shape[0]) == "parallel":
            kernel = parallel_kalman_filter
        return kernel(
            state.mean, state.scale, params["dynamics"], _scale(params, "dynamics"),
            params["emission"], _scale(params, "emission"), xs.astype(state.mean.dtype),
            b, d, mask,
        )  # fmt: skip

    def sequence_log_probs(self, params, state, xs, us=None):
        """The Kalman filter of :meth:`filter_path`: sequential (the square-root filter,
        :func:`probseq.lds_inference.kalman_filter`: one QR per step for the update and
        one for the prediction) or parallel in time."""
        res = self._filter(params, state, xs, us)
        return res.log_normalizers, LDSState(res.predicted_means, res.predicted_scales)

    # ------------------------------------------------------ posterior over states
    def _posterior(self, kernel, params, x, mask, inputs):
        batch = as_batch(self, params, x, mask, inputs)
        out = _posterior_kernel(self, kernel, params, batch.x, batch.mask, batch.inputs)
        return out if batch.batched else jax.tree.map(lambda a: a[0], out)

    def filter(self, params, x, mask=None, inputs=None) -> LDSFilterResult:
        r"""Filtered state distributions :math:`p(z_t \mid y_{1:t})`.

        Args:
            params: this model's parameters.
            x: one sequence (T, p) (or (T,) when p = 1), a batch (B, T, p), or a list of
                unequal-length sequences (padded here).
            mask: optional (B, T) prefix mask, True on valid steps.
            inputs: (T, m) or (B, T, m) inputs, for a model with ``input_dim > 0``.

        Returns:
            :class:`LDSFilterResult`.
        """
        return self._posterior("filter", params, x, mask, inputs)

    def smoother(self, params, x, mask=None, inputs=None) -> LDSSmoothed:
        r"""Smoothed state distributions :math:`p(z_t \mid y_{1:T})` (Rauch-Tung-Striebel).

        Takes the same inputs as :meth:`filter`; returns
        :class:`probseq.lds_inference.LDSSmoothed` (with a leading (B,) axis for a
        batch). On padded steps the values continue the prediction and mean nothing.
        """
        return self._posterior("smoother", params, x, mask, inputs)

    # ------------------------------------------------------------------ closed forms
    def predict(self, params, state: LDSState, horizon: int, future_inputs=None):
        """Exact h-step predictive moments of y_{T+1..T+H} given the state after y_T
        (the predictive p(z_{T+1} | y_1:T)): m_1 = mean, P_1 = L L^T,
        E[y_{T+h}] = C m_h + D u_{T+h}, Cov = C P_h C^T + R,
        m_{h+1} = A m_h + B u_{T+h}, P_{h+1} = A P_h A^T + Q (kept as a square root).

        Args:
            params: the parameters.
            state: an unbatched :class:`LDSState` (e.g. ``probseq.score(...).final_state``
                of one sequence).
            horizon: H >= 1 steps.
            future_inputs: (H, input_dim) inputs u_{T+1..T+H}, for models with inputs.

        Returns:
            (mean (H, p), covariance (H, p, p)).
        """
        horizon = validation.check_int("horizon", horizon)
        dtype = params["dynamics"].dtype
        expected = (horizon, self.input_dim)  # (H, 0) without inputs
        validation.check_inputs(
            self, future_inputs, expected, what="future inputs", name="future_inputs"
        )
        us = jnp.asarray(jnp.zeros(expected) if future_inputs is None else future_inputs, dtype)
        c, r_scale = params["emission"], _scale(params, "emission")
        q_scale = _scale(params, "dynamics")

        def step(carry, u):
            mean, scale = carry
            b, d = self._offsets(params, u if self.input_dim else None)
            y_scale = tria(jnp.concatenate([_mm(c, scale), r_scale], axis=1))
            out = (_mm(c, mean) + d, _mm(y_scale, y_scale.T))
            return predict_step(mean, scale, params["dynamics"], q_scale, b), out

        start = (jnp.asarray(state.mean, dtype), jnp.asarray(state.scale, dtype))
        return jax.lax.scan(step, start, us)[1]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _posterior_kernel(model: LDS, kernel: str, params, x, mask, inputs):
    h0 = model.initial_state(params)

    def one(xs, ms, us):
        res = model._filter(params, h0, xs, us, ms)
        if kernel == "filter":
            covs = _mm(res.filtered_scales, jnp.swapaxes(res.filtered_scales, -1, -2))
            return LDSFilterResult(jnp.sum(res.log_normalizers), res.filtered_means, covs)
        parallel = model.filter_path(xs.shape[0]) == "parallel"
        return (parallel_rts_smoother if parallel else rts_smoother)(res, params["dynamics"])

    return jax.vmap(one)(x, mask, inputs)


SPEC = FamilySpec(
    name="lds",
    model=LDS,
    keys={"state_dim": POSITIVE_INT, "scan": choice(*SCAN_CHOICES)},
    build=lambda options, head: LDS(obs_dim=head.obs_dim, **options),
    heads=("normal",),
    required=("state_dim",),
    fit_methods=("sgd", "em"),
    fit_keys={"em": {"initial": choice(*INITIAL_CHOICES)}},
)
