r"""Gaussian autoregressive model of order d, AR(d), with optional inputs:

.. math::
    x_t = c + \sum_{k=1}^{d} x_{t-k} W_k + u_t B + \varepsilon_t, \qquad
    \varepsilon_t \sim \mathcal N(0, \Sigma), \quad \Sigma = L L^\top

for vectors x_t of ``obs_dim`` values (a VAR(d) when obs_dim > 1; row-vector
convention, ``W_k`` is (obs_dim, obs_dim)) and inputs u_t of ``input_dim`` values.
The noise covariance is full, through its Cholesky factor L (``exp(log_scale)`` on
the diagonal, ``scale_lower``'s strict lower triangle below it).

In the contract, the state is the window of the last d observations (most recent
first) and a count of the observations seen (capped at d); the emission is
``MultivariateNormal(c + sum_k x_{t-k} W_k + u_t B, scale_tril=L)``.

**The first d steps are conditioned on** (the conditional likelihood, as statsmodels'
``AutoReg`` and the least-squares fit use): their log-likelihood is 0, so
``log_prob`` is ``log p(x_{d+1:T} | x_{1:d})`` and a sequence of at most d steps
scores 0. (Their emission is a masked Normal whose mean reads the missing earlier
observations as 0: sampling from a fresh state uses that to start a path.)

Fitting: :func:`probseq.fit_ls` is the closed form (least squares, the conditional
maximum likelihood: coefficients by ordinary least squares, Sigma the residuals'
covariance divided by their number) and :func:`probseq.fit_sgd` works as for every
family. :meth:`AR.predict` gives the exact h-step predictive mean and covariance
(the closed form behind forecast bands). Stationarity is not imposed.

Example:
    >>> import jax, numpy as np, probseq
    >>> model = probseq.AR(order=2, obs_dim=1)
    >>> x = np.sin(np.arange(100) / 4.0)[:, None]
    >>> fit = probseq.fit_ls(model, x)
    >>> mean, cov = model.predict(fit.params, probseq.score(model, fit.params, x).final_state, 5)
    >>> mean.shape, cov.shape
    ((5, 1), (5, 1, 1))
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from probseq import validation
from probseq.core import SequenceModel, param_dtype
from probseq.families.registry import POSITIVE_INT, FamilySpec
from probseq.heads import Head, NormalHead
from probseq.scan import EXACT

__all__ = ["AR", "ARState"]


class ARState(NamedTuple):
    """window: (order, obs_dim) the last observations, most recent first (zeros before
    the first); count: () int32, observations seen, capped at order."""

    window: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class AR(SequenceModel):
    """Gaussian AR(order) over vectors of ``obs_dim`` values with optional inputs.

    Args:
        order: d >= 1, the number of past observations the mean reads.
        obs_dim: D, the size of each observation.
        input_dim: m, the size of per-step inputs u_t (0: none).
    """

    order: int
    obs_dim: int = 1
    input_dim: int = 0
    head: Head = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "order", validation.check_int("order", self.order))
        object.__setattr__(self, "obs_dim", validation.check_int("obs_dim", self.obs_dim))
        input_dim = validation.check_int("input_dim", self.input_dim, minimum=0)
        object.__setattr__(self, "input_dim", input_dim)
        # What the data checks and shapes see: real vectors of obs_dim values.
        object.__setattr__(self, "head", NormalHead(self.obs_dim))

    # the contract's optional capabilities: a closed-form predictive and fit
    supports_predict = True
    supports_least_squares = True

    @property
    def num_conditioned_steps(self) -> int:
        """The first ``order`` steps of each sequence are conditioned on, not scored
        (:func:`probseq.compare` scores every model on the same later steps)."""
        return self.order

    def init(self, key, *, dtype=None):
        """Random parameters: small coefficients (a stable start), zero intercept, unit
        noise. ``coef`` (d, D, D), ``intercept`` (D,), ``input_coef`` (m, D),
        ``log_scale`` (D,), ``scale_lower`` (D, D) (strict lower triangle used)."""
        dtype = param_dtype(dtype)
        d, n = self.order, self.obs_dim
        k_coef, k_in = jax.random.split(key)
        return {
            "intercept": jnp.zeros((n,), dtype),
            "coef": 0.1 / d * jax.random.normal(k_coef, (d, n, n), dtype),
            "input_coef": 0.1 * jax.random.normal(k_in, (self.input_dim, n), dtype),
            "log_scale": jnp.zeros((n,), dtype),
            "scale_lower": jnp.zeros((n, n), dtype),
        }

    def initial_state(self, params):
        dtype = params["intercept"].dtype
        return ARState(jnp.zeros((self.order, self.obs_dim), dtype), jnp.zeros((), jnp.int32))

    @staticmethod
    def scale_tril(params) -> jax.Array:
        """L, the Cholesky factor of the noise covariance (D, D)."""
        return jnp.tril(params["scale_lower"], -1) + jnp.diag(jnp.exp(params["log_scale"]))

    def _mean(self, params, window, u):
        mean = params["intercept"] + jnp.einsum(
            "kd,kde->e", window, params["coef"], precision=EXACT
        )
        if u is not None and self.input_dim:
            mean = mean + jnp.matmul(u.astype(mean.dtype), params["input_coef"], precision=EXACT)
        return mean

    def emission(self, params, state, u=None):
        normal = dist.MultivariateNormal(
            self._mean(params, state.window, u), scale_tril=self.scale_tril(params)
        )
        return normal.mask(state.count >= self.order)

    def update(self, params, state, x, u=None):
        x = x.astype(state.window.dtype)
        window = jnp.concatenate([x[None], state.window[:-1]], axis=0)
        return ARState(window, jnp.minimum(state.count + 1, self.order))

    # ------------------------------------------------------------------ closed forms
    def predict(self, params, state: ARState, horizon: int, future_inputs=None):
        """Exact h-step predictive moments of x_{T+1..T+H} given the state after x_T.

        The stacked window s = (x_t, ..., x_{t-d+1}) follows s' = F s + const + E eps
        with the companion matrix F; mean and covariance are propagated exactly:
        ``m_h = F m_{h-1} + const``, ``P_h = F P_{h-1} F^T + E Sigma E^T`` (P_0 = 0), so
        Cov(x_{T+h}) = sum_{j<h} Psi_j Sigma Psi_j^T with the MA(inf) weights Psi_j.

        Args:
            params: the parameters.
            state: an unbatched state (e.g. ``probseq.score(...).final_state`` of one
                sequence); a window that is not yet full reads the missing values as 0.
            horizon: H >= 1 steps.
            future_inputs: (H, input_dim) inputs u_{T+1..T+H}, for models with inputs.

        Returns:
            (mean (H, D), covariance (H, D, D)).
        """
        horizon = validation.check_int("horizon", horizon)
        d, n = self.order, self.obs_dim
        dtype = params["intercept"].dtype
        expected = (horizon, self.input_dim)  # (H, 0) without inputs
        validation.check_inputs(
            self, future_inputs, expected, what="future inputs", name="future_inputs"
        )
        us = jnp.asarray(jnp.zeros(expected) if future_inputs is None else future_inputs, dtype)
        # Column convention for the companion form: x_t = c + sum_k W_k^T x_{t-k}.
        top = jnp.concatenate([params["coef"][k].T for k in range(d)], axis=1)  # (D, dD)
        shift = jnp.eye(n * (d - 1), n * d, dtype=dtype)
        companion = jnp.concatenate([top, shift], axis=0)  # (dD, dD)
        lower = self.scale_tril(params)
        noise = jnp.zeros((n * d, n * d), dtype).at[:n, :n].set(lower @ lower.T)

        def step(carry, u):
            m, p = carry
            x_mean = self._mean(params, m.reshape(d, n), u if self.input_dim else None)
            m = jnp.concatenate([x_mean, m[: n * (d - 1)]])
            p = jnp.matmul(jnp.matmul(companion, p, precision=EXACT), companion.T,
                           precision=EXACT) + noise  # fmt: skip
            return (m, p), (x_mean, p[:n, :n])

        start = (jnp.asarray(state.window, dtype).reshape(-1), jnp.zeros((n * d, n * d), dtype))
        return jax.lax.scan(step, start, us)[1]

    def least_squares(self, x: np.ndarray, mask: np.ndarray, inputs=None) -> dict:
        """Conditional maximum likelihood in closed form, in float64 NumPy.

        Regresses every x_t with a full window (t > d within a sequence's valid steps)
        on (1, x_{t-1}, ..., x_{t-d}, u_t) by ordinary least squares; Sigma is the
        residuals' covariance divided by their number (the MLE, as AutoReg's sigma2).

        Args:
            x: (B, T, D) observations; mask: (B, T) prefix mask; inputs: (B, T, m) or None.

        Returns:
            float64 NumPy parameters (the layout of :meth:`init`).

        Raises:
            ValueError: fewer full-window steps than regressors, or a singular design.
        """
        x = np.asarray(x, np.float64)
        mask = np.asarray(mask, bool)
        d, n, t = self.order, self.obs_dim, x.shape[1]
        lags = [x[:, d - k : t - k] for k in range(1, d + 1)]  # each (B, T-d, D)
        columns = [np.ones(x.shape[:1] + (max(t - d, 0), 1))] + lags
        if self.input_dim:
            columns.append(np.asarray(inputs, np.float64)[:, d:])
        valid = mask[:, d:]
        design = np.concatenate(columns, axis=-1)[valid]
        target = x[:, d:][valid]
        num_rows, num_regressors = design.shape[0], 1 + d * n + self.input_dim
        if num_rows < num_regressors:
            raise ValueError(
                f"fit_ls: {self!r} has {num_regressors} regressors per output but the data "
                f"has {num_rows} steps after the first {d} of each sequence; give more data."
            )
        beta, _, rank, _ = np.linalg.lstsq(design, target, rcond=None)
        if rank < num_regressors:
            raise ValueError(
                f"fit_ls: the regression design of {self!r} is singular (rank {rank} < "
                f"{num_regressors}): a constant or repeated series, or collinear inputs."
            )
        resid = target - design @ beta
        cov = resid.T @ resid / num_rows
        try:
            lower = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ValueError(
                f"fit_ls: the residual covariance of {self!r} is singular (an exact fit)."
            ) from None
        return {
            "intercept": beta[0],
            "coef": beta[1 : 1 + d * n].reshape(d, n, n),
            "input_coef": beta[1 + d * n :].reshape(self.input_dim, n),
            "log_scale": np.log(np.diag(lower)),
            "scale_lower": np.tril(lower, -1),
        }


SPEC = FamilySpec(
    name="ar",
    model=AR,
    keys={"order": POSITIVE_INT},
    build=lambda options, head: AR(obs_dim=head.obs_dim, **options),
    heads=("normal",),
    required=("order",),
    fit_methods=("ls", "sgd"),
)
