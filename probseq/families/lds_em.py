r"""Expectation-maximisation for :class:`probseq.LDS`, with autodiff expected statistics.

**The identity.** Written in its natural parameters eta (:class:`probseq.lds_inference.LDSNatural`),
the joint density of states and observations is an exponential family in z,

.. math::
    \log p(z_{1:T}, y_{1:T}) = \langle \eta, T(z, y, u) \rangle + c(\theta, y, u),

with sufficient statistics T: z_1, z_1 z_1^T, and summed over time z_t z_t^T,
z_{t+1} z_t^T, z_{t+1} z_{t+1}^T, z_t y_t^T, z_t u_t^T, z_{t+1} u_t^T. With the terms c
that do not involve z held fixed, :math:`F(\eta) = \log \int \exp(\langle\eta, T\rangle + c)\,dz`
is a log-partition function, so

.. math::  \nabla_\eta F = \mathbb E_{p(z \mid y)}[T(z, y, u)],

and at the model's own eta, F is log p(y). One ``jax.value_and_grad`` of F, computed by
the information-form forward recursion
(:func:`probseq.lds_inference.information_log_partition`, in which eta's entries are free
variables), therefore gives the log-likelihood and every expected statistic the M-step
needs, with no backward pass written by hand; the tests check them against the RTS
smoother's moments. (As for the HMM's E-step, the identity needs eta to enter as free
coordinates: differentiating with respect to A, Q, ... would give
:math:`\mathbb E[\nabla_\theta \log p(z, y)]` (Fisher's identity), not the statistics.)

**The M-step** is closed form, the maximum-likelihood regressions on the expected
statistics: [A B] from regressing z_{t+1} on (z_t, u_t), Q their residual covariance;
[C D] from regressing y_t on (z_t, u_t), R its residual covariance. The initial
distribution N(m_0, S_0) is set by ``initial=`` (:data:`INITIAL_CHOICES`):

- ``"stationary"`` (the default; statsmodels' choice for a stationary state-space model):
  after each M-step (and once at the start) N(m_0, S_0) is the stationary distribution
  of the new dynamics, S_0 = A S_0 A^T + Q and m_0 = A m_0 + B u-bar, with u-bar the
  mean training input (0 without inputs)
  (:func:`probseq.lds_inference.stationary_distribution`). Where A has no stationary
  distribution (an eigenvalue of modulus >= 1), the previous m_0, S_0 are kept and the
  iteration is listed in ``info["nonstationary_iterations"]``.
- ``"learn"`` (dynamax's ``fit_em``): m_0, S_0 the mean and covariance of the smoothed
  z_1 over sequences, their maximum-likelihood update.
- ``"fixed"``: m_0, S_0 stay those of the starting parameters (bit for bit).

Why the default is not the maximum-likelihood update: probseq scores every sequence
(a validation or test part too) from the initial state, and from a single training
sequence the update sets S_0 to the smoothed covariance of one z_1, nearly singular,
so any other sequence's first step costs hundreds of nats (a sunspots fit: valid 51.6
bits/step against SGD's 7.5, see models/README.md). With several independent
sequences that share a start (trials from rest), ``"learn"`` estimates that start.

"learn" and "fixed" are exact EM (coordinate-wise for "fixed"): the log-likelihood
never decreases (in float64 to rounding; in float32 the information-form sums carry
~1e-5 relative rounding, which is what a float32 fit's history can wobble by: fit in
float64 where that matters). "stationary" is not: its M-step for A and Q ignores that
S_0 and m_0 now depend on them, so the initial term can fall by more than the rest
gains and the log-likelihood *can* decrease. It is one term against T - 1 transitions,
so on long sequences the changes are tiny (measured: one decrease of 1.2e-6 nats on a
log-likelihood of -744 in 40 float64 iterations on 1000 simulated steps; none on
sunspots or nile), but its history is not guaranteed monotone.

Example:
    >>> import jax, probseq
    >>> model = probseq.LDS(state_dim=2, obs_dim=2)
    >>> y = probseq.sample(model, model.init(jax.random.key(0)), jax.random.key(1), 200)
    >>> fit = probseq.fit_lds_em(model, model.init(jax.random.key(2)), y, num_iters=20)
    >>> fit.info["initial"], fit.info["nonstationary_iterations"]
    ('stationary', [])
    >>> learned = probseq.fit_lds_em(model, model.init(jax.random.key(2)), y, num_iters=20,
    ...                              initial="learn")  # dynamax's fit_em: exact EM
    >>> bool((jax.numpy.diff(learned.history["log_likelihood"]) >= -1e-3).all())
    True
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probseq import validation
from probseq.core import EMOptions
from probseq.families.lds import INITIAL_CHOICES, LDS, LDSMatrices
from probseq.lds_inference import LDSNatural, information_log_partition, stationary_distribution
from probseq.scan import EXACT

__all__ = [
    "INITIAL_CHOICES",
    "LDSStatistics",
    "natural_parameters",
    "lds_expected_statistics",
    "lds_m_step",
]


_INITIAL_LEAVES = ("initial_mean", "initial_log_scale", "initial_scale_lower")


def _mm(a, b):
    return jnp.matmul(a, b, precision=EXACT)


class LDSStatistics(NamedTuple):
    """Expected sufficient statistics of a batch (sums over sequences; "pairs" are the
    steps t with t + 1 observed, "all" every observed step).

    log_likelihood: log p(y) of the batch, ().
    num_sequences, num_pairs, num_steps: counts, ().
    initial_mean: sum E[z_1] (n,); initial_second: sum E[z_1 z_1^T] (n, n).
    prev_second: sum_pairs E[z_t z_t^T]; cross: sum_pairs E[z_{t+1} z_t^T];
        next_second: sum_pairs E[z_{t+1} z_{t+1}^T], each (n, n).
    prev_input: sum_pairs E[z_t] u_t^T; next_input: sum_pairs E[z_{t+1}] u_t^T (n, m);
        pair_input_second: sum_pairs u_t u_t^T (m, m).
    state_second: sum_all E[z_t z_t^T] (n, n); state_obs: sum_all E[z_t] y_t^T (n, p);
        state_input: sum_all E[z_t] u_t^T (n, m).
    obs_second: sum_all y_t y_t^T (p, p); obs_input: sum_all y_t u_t^T (p, m);
        input_second: sum_all u_t u_t^T (m, m).
    """

    log_likelihood: jax.Array
    num_sequences: jax.Array
    num_pairs: jax.Array
    num_steps: jax.Array
    initial_mean: jax.Array
    initial_second: jax.Array
    prev_second: jax.Array
    cross: jax.Array
    next_second: jax.Array
    prev_input: jax.Array
    next_input: jax.Array
    pair_input_second: jax.Array
    state_second: jax.Array
    state_obs: jax.Array
    state_input: jax.Array
    obs_second: jax.Array
    obs_input: jax.Array
    input_second: jax.Array


def _quad_inv(cov, v):
    """v^T cov^-1 v for v (..., k) and (log det cov), through one Cholesky factor."""
    chol = jnp.linalg.cholesky(cov)
    white = jax.scipy.linalg.solve_triangular(chol, v.T, lower=True)
    return jnp.sum(white**2, axis=0), 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


def natural_parameters(model: LDS, params, ys, us):
    """The natural parameters of ``params`` (:class:`probseq.lds_inference.LDSNatural`)
    and, for each sequence of ys (B, T, p) / us (B, T, m), the z-free terms of the log
    joint: (initial (B,), per transition (B, T), per emission (B, T))."""
    mats = model.matrices(params)
    n, p = model.state_dim, model.obs_dim
    q_inv = jnp.linalg.inv(mats.dynamics_covariance)
    r_inv = jnp.linalg.inv(mats.emission_covariance)
    s0_inv = jnp.linalg.inv(mats.initial_covariance)
    a, b, c, d = mats.dynamics, mats.dynamics_input, mats.emission, mats.emission_input
    at_qinv = _mm(a.T, q_inv)
    ct_rinv = _mm(c.T, r_inv)
    natural = LDSNatural(
        initial_precision=s0_inv,
        initial_linear=_mm(s0_inv, mats.initial_mean),
        next_precision=q_inv,
        cross=_mm(q_inv, a),
        prev_precision=_mm(at_qinv, a),
        next_input=_mm(q_inv, b),
        prev_input=-_mm(at_qinv, b),
        emission_precision=_mm(ct_rinv, c),
        emission_linear=ct_rinv,
        emission_input=-_mm(ct_rinv, d),
    )
    log_2pi = math.log(2 * math.pi)
    quad0, logdet0 = _quad_inv(mats.initial_covariance, mats.initial_mean[None])
    c_init = -0.5 * (n * log_2pi + logdet0 + quad0[0])
    shape = ys.shape[:2]
    quad_q, logdet_q = _quad_inv(mats.dynamics_covariance, _mm(us, b.T).reshape(-1, n))
    c_trans = -0.5 * (n * log_2pi + logdet_q + quad_q.reshape(shape))
    quad_r, logdet_r = _quad_inv(mats.emission_covariance, (ys - _mm(us, d.T)).reshape(-1, p))
    c_obs = -0.5 * (p * log_2pi + logdet_r + quad_r.reshape(shape))
    return natural, (jnp.broadcast_to(c_init, shape[:1]), c_trans, c_obs)


def _inputs_or_empty(model, x, inputs):
    if inputs is None:
        return jnp.zeros(x.shape[:2] + (0,), x.dtype)
    return inputs.astype(x.dtype)


def lds_expected_statistics(model: LDS, params, x, mask, inputs=None) -> LDSStatistics:
    """Expected sufficient statistics of a padded batch by the autodiff identity (the
    module docstring): one ``jax.value_and_grad`` of the information-form log-partition
    with respect to the natural parameters. Pure and traceable (no validation).

    Args:
        x: (B, T, p) observations; mask: (B, T) prefix mask; inputs: (B, T, m) or None.
    """
    us = _inputs_or_empty(model, x, inputs)
    natural, constants = natural_parameters(model, params, x, us)

    def total(nat):
        one = functools.partial(information_log_partition, nat)
        return jnp.sum(jax.vmap(one)(constants, x, us, mask))

    value, g = jax.value_and_grad(total)(natural)
    maskf = mask.astype(x.dtype)
    pairs = jnp.concatenate([maskf[:, 1:], jnp.zeros_like(maskf[:, :1])], axis=1)

    def outer(a, w, b):
        return jnp.einsum("bti,bt,btj->ij", a, w, b, precision=EXACT)

    return LDSStatistics(
        log_likelihood=value,
        num_sequences=jnp.sum(maskf[:, 0]),
        num_pairs=jnp.sum(pairs),
        num_steps=jnp.sum(maskf),
        initial_mean=g.initial_linear,
        initial_second=-2.0 * g.initial_precision,
        prev_second=-2.0 * g.prev_precision,
        cross=g.cross,
        next_second=-2.0 * g.next_precision,
        prev_input=g.prev_input,
        next_input=g.next_input,
        pair_input_second=outer(us, pairs, us),
        state_second=-2.0 * g.emission_precision,
        state_obs=g.emission_linear,
        state_input=g.emission_input,
        obs_second=outer(x, maskf, x),
        obs_input=outer(x, maskf, us),
        input_second=outer(us, maskf, us),
    )


def _regress(second, cross_in, input_second, target_state, target_input):
    """W = [target_state target_input] G^-1 with G = [[second, cross_in], [., input_second]]."""
    gram = jnp.block([[second, cross_in], [cross_in.T, input_second]])
    rhs = jnp.concatenate([target_state, target_input], axis=1)
    gram = 0.5 * (gram + gram.T)
    return jnp.linalg.solve(gram, rhs.T).T, rhs


def lds_m_step(model: LDS, stats: LDSStatistics) -> LDSMatrices:
    """The closed-form maximum-likelihood M-step (the module docstring) as matrices."""
    n = model.state_dim
    m0 = stats.initial_mean / stats.num_sequences
    s0 = stats.initial_second / stats.num_sequences - jnp.outer(m0, m0)
    w_dyn, y_dyn = _regress(stats.prev_second, stats.prev_input, stats.pair_input_second,
                            stats.cross, stats.next_input)  # fmt: skip
    q = (stats.next_second - _mm(w_dyn, y_dyn.T)) / stats.num_pairs
    w_obs, y_obs = _regress(stats.state_second, stats.state_input, stats.input_second,
                            stats.state_obs.T, stats.obs_input)  # fmt: skip
    r = (stats.obs_second - _mm(w_obs, y_obs.T)) / stats.num_steps

    def sym(a):
        return 0.5 * (a + a.T)

    return LDSMatrices(
        initial_mean=m0,
        initial_covariance=sym(s0),
        dynamics=w_dyn[:, :n],
        dynamics_input=w_dyn[:, n:],
        dynamics_covariance=sym(q),
        emission=w_obs[:, :n],
        emission_input=w_obs[:, n:],
        emission_covariance=sym(r),
    )


def _with_initial(params, source):
    return {**params, **{name: source[name] for name in _INITIAL_LEAVES}}


def _stationary_initial(model, params, mean_input):
    """``params`` with N(m_0, S_0) the stationary distribution of their dynamics driven
    by the input ``mean_input`` (m,), unchanged where there is none; and whether there is."""
    mats = model.matrices(params)
    offset = _mm(mats.dynamics_input, mean_input)
    st = stationary_distribution(
        mats.dynamics, jnp.linalg.cholesky(mats.dynamics_covariance), offset
    )
    tied = {
        "initial_mean": st.mean,
        "initial_log_scale": jnp.log(jnp.diagonal(st.scale)),
        "initial_scale_lower": jnp.tril(st.scale, -1),
    }
    tied = {name: jnp.where(st.stable, tied[name], params[name]) for name in _INITIAL_LEAVES}
    return {**params, **tied}, st.stable


def _mean_input(model, batch, params):
    """The mean input u-bar (m,) over the observed steps (zeros without inputs)."""
    dtype = params["dynamics"].dtype
    if batch.inputs is None or not model.input_dim:
        return jnp.zeros((model.input_dim,), dtype)
    w = np.asarray(batch.mask, np.float64)
    total = np.einsum("bt,btm->m", w, np.asarray(batch.inputs, np.float64))
    return jnp.asarray(total / w.sum(), dtype)


# ------------------------------------------------------ the capability (LDS's methods)
def em_options(model: LDS, params, batch, *, initial=None, **others) -> EMOptions:
    """fit_em's LDS settings: ``initial`` (static) and the mean input (an array)."""
    defaults = {"prior": None, "num_restarts": 1, "estep": "auto", "mesh": None}
    for name, value in others.items():
        if name not in defaults:
            raise TypeError(f"unexpected EM setting {name}=")
        if value is not defaults[name] and value != defaults[name]:
            raise ValueError(
                f"fit_em of {model!r} (a linear-Gaussian state-space model, by "
                f"probseq.fit_lds_em) takes no {name}=; got {name}={value!r}."
            )
    initial = "stationary" if initial is None else initial
    validation.check_choice("initial", initial, INITIAL_CHOICES)
    if int(np.sum(np.asarray(batch.mask)[:, 1:])) < 1:
        raise ValueError(
            "fit_lds_em: no sequence has two observed steps, so there is no transition "
            "to estimate the dynamics from; give longer sequences."
        )
    return EMOptions(initial, _mean_input(model, batch, params), "vmap")


def em_start(model: LDS, params, batch, options: EMOptions):
    """With "stationary": the start's initial distribution tied to its dynamics."""
    if options.static != "stationary":
        return params, {"stationary": jnp.ones((), bool)}
    params, stable = _stationary_initial(model, params, options.constants)
    return params, {"stationary": stable}


def expected_statistics(model: LDS, params, batch, options: EMOptions):
    x, mask, inputs = batch
    stats = lds_expected_statistics(model, params, x, mask, inputs)
    return stats, stats.log_likelihood


def m_step(model: LDS, params, stats, batch, options: EMOptions):
    """Closed form; then the initial distribution by ``initial`` (see the module):
    (params, {"stationary": whether the new dynamics have a stationary distribution})."""
    new = model.params_from_matrices(lds_m_step(model, stats))
    stable = jnp.ones((), bool)
    if options.static == "fixed":
        new = _with_initial(new, params)
    elif options.static == "stationary":
        new, stable = _stationary_initial(model, new, options.constants)
    return new, {"stationary": stable}


def em_info(model: LDS, options: EMOptions, start_metrics: dict, metrics: dict) -> dict:
    """``initial``, and with "stationary" the iterations (0: the start, i: after the
    i-th M-step) whose dynamics had no stationary distribution (so the previous
    initial distribution was kept)."""
    info = {"initial": options.static}
    if options.static == "stationary":
        unstable = [0] if not bool(start_metrics["stationary"]) else []
        unstable += [i + 1 for i, ok in enumerate(np.asarray(metrics["stationary"])) if not ok]
        info["nonstationary_iterations"] = unstable
    return info
