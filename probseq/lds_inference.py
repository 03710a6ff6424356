r"""Pure kernels for the linear-Gaussian state-space model (arrays in, NamedTuples out).

The model (:class:`probseq.LDS`), with the input u_t driving both y_t and z_{t+1}:

.. math::
    z_1 \sim \mathcal N(m_0, S_0), \quad
    z_{t+1} = A z_t + b_t + w_t,\ w_t \sim \mathcal N(0, Q), \quad
    y_t = C z_t + d_t + v_t,\ v_t \sim \mathcal N(0, R)

where ``b_t = B u_t`` and ``d_t = D u_t`` are given here as per-step offsets (zeros
without inputs). Covariances travel as lower Cholesky factors ("scales", L L^T = P).

- :func:`kalman_filter`: the square-root Kalman filter. Each step lower-triangularises
  one block array by a QR decomposition (:func:`tria`), so the covariances it carries
  are L L^T by construction: positive semi-definite in any precision, where the
  textbook update ``P - K S K^T`` loses definiteness in float32 over long runs.
- :func:`rts_smoother`: the Rauch-Tung-Striebel smoother on the filter's output.
- :func:`information_log_partition`: log p(y) from the model's *natural* parameters
  (the information form), the function whose gradient is the E-step of
  :mod:`probseq.fit.lds_em`.
- :func:`stationary_distribution`: the stationary N(m, P) of z_{t+1} = A z_t + b + w_t
  (P = A P A^T + Q by square-root doubling), or a flag that there is none.

A masked step (``mask[t]`` False) is a missing observation: no conditioning, no
log-likelihood; the state is only predicted on. A padded tail therefore leaves the
valid steps' filtered and smoothed values unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve, solve_triangular

from probseq.scan import EXACT

__all__ = [
    "LDSFiltered",
    "LDSSmoothed",
    "LDSNatural",
    "tria",
    "predict_step",
    "condition_step",
    "kalman_filter",
    "parallel_kalman_filter",
    "parallel_rts_smoother",
    "rts_smoother",
    "information_log_partition",
    "LDSStationary",
    "stationary_distribution",
    "NUM_DOUBLINGS",
]


def _mm(a, b):
    return jnp.matmul(a, b, precision=EXACT)


def tria(m: jax.Array) -> jax.Array:
    """A lower-triangular T with non-negative diagonal and ``T T^T = m m^T``.

    ``m`` is (r, c) with c >= r; T is (r, r). From the QR decomposition of m^T:
    m m^T = R^T Q^T Q R = R^T R, then column signs are flipped so the diagonal is
    non-negative (the Cholesky factor when m m^T is positive definite).
    """
    r = jnp.linalg.qr(m.T, mode="r").T
    sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(r.dtype)
    return r * sign[None, :]


class LDSFiltered(NamedTuple):
    """What :func:`kalman_filter` returns for one sequence of T steps (n = state size).

    log_normalizers: log p(y_t | y_<t), (T,); 0 on masked steps.
    filtered_means, filtered_scales: p(z_t | y_1:t) as mean (T, n) and Cholesky factor
        (T, n, n).
    predicted_means, predicted_scales: p(z_{t+1} | y_1:t), (T, n) and (T, n, n).
    """

    log_normalizers: jax.Array
    filtered_means: jax.Array
    filtered_scales: jax.Array
    predicted_means: jax.Array
    predicted_scales: jax.Array


class LDSSmoothed(NamedTuple):
    """What :func:`rts_smoother` returns for one sequence.

    log_likelihood: log p(y_1:T), ().
    smoothed_means (T, n), smoothed_covariances (T, n, n): p(z_t | y_1:T).
    smoothed_cross_covariances: Cov(z_t, z_{t+1} | y_1:T), (T - 1, n, n) (without the
        means' product, unlike dynamax's field of the same name).
    """

    log_likelihood: jax.Array
    smoothed_means: jax.Array
    smoothed_covariances: jax.Array
    smoothed_cross_covariances: jax.Array


def _normal_log_density(chol, resid):
    """(log N(resid; 0, chol chol^T), the whitened residual chol^-1 resid) for a lower
    Cholesky factor ``chol`` (p, p) and a residual (p,)."""
    white = solve_triangular(chol, resid, lower=True)
    log_density = (
        -0.5 * jnp.sum(white**2)
        - jnp.sum(jnp.log(jnp.diagonal(chol)))
        - 0.5 * chol.shape[0] * math.log(2 * math.pi)
    )
    return log_density, white


def _offsets_and_mask(ys, initial_mean, dynamics_offsets, emission_offsets, mask):
    """The filters' optional arguments filled in: (b (T, n), d (T, p), valid (T,)),
    zeros and all-observed where None."""
    num_steps, n = ys.shape[0], initial_mean.shape[0]
    b = (
        jnp.zeros((num_steps, n), initial_mean.dtype)
        if dynamics_offsets is None
        else dynamics_offsets
    )
    d = jnp.zeros_like(ys) if emission_offsets is None else emission_offsets
    valid = jnp.ones((num_steps,), bool) if mask is None else mask
    return b, d, valid


def condition_step(mean, scale, emission, emission_scale, y, offset, valid=True):
    """Condition the predictive p(z) = N(mean, scale scale^T) on y = C z + offset + v.

    The square-root update: the block array [[R^1/2, C L], [0, L]] is triangularised to
    [[S, 0], [K S, L_f]], where S S^T = C P C^T + R is the innovation covariance, K the
    gain and L_f L_f^T the filtered covariance (Joseph-stable, PSD by construction).

    Returns:
        (log p(y), filtered mean, filtered scale); unchanged with log p = 0 where not
        ``valid`` (a missing observation).
    """
    p, n = emission.shape
    top = jnp.concatenate([emission_scale, _mm(emission, scale)], axis=1)
    bottom = jnp.concatenate([jnp.zeros((n, p), scale.dtype), scale], axis=1)
    post = tria(jnp.concatenate([top, bottom], axis=0))
    s, gain_s, filtered_scale = post[:p, :p], post[p:, :p], post[p:, p:]
    log_norm, white = _normal_log_density(s, y - _mm(emission, mean) - offset)
    filtered_mean = mean + _mm(gain_s, white)
    return (
        jnp.where(valid, log_norm, jnp.zeros((), log_norm.dtype)),
        jnp.where(valid, filtered_mean, mean),
        jnp.where(valid, filtered_scale, scale),
    )


def predict_step(mean, scale, dynamics, dynamics_scale, offset):
    """p(z') for z' = A z + offset + w from p(z) = N(mean, scale scale^T):
    mean A m + offset, scale tria([A L, Q^1/2])."""
    return _mm(dynamics, mean) + offset, tria(
        jnp.concatenate([_mm(dynamics, scale), dynamics_scale], axis=1)
    )


def kalman_filter(
    initial_mean,
    initial_scale,
    dynamics,
    dynamics_scale,
    emission,
    emission_scale,
    ys,
    dynamics_offsets=None,
    emission_offsets=None,
    mask=None,
) -> LDSFiltered:
    """The square-root Kalman filter over one sequence.

    Args:
        initial_mean (n,), initial_scale (n, n): p(z_1) (a Cholesky factor).
        dynamics A (n, n), dynamics_scale Q^1/2 (n, n); emission C (p, n),
            emission_scale R^1/2 (p, p) (any square roots, e.g. Cholesky factors).
        ys: (T, p) observations.
        dynamics_offsets: (T, n) b_t = B u_t added to z_{t+1} (None: zeros).
        emission_offsets: (T, p) d_t = D u_t added to y_t (None: zeros).
        mask: (T,) True on observed steps (None: all).

    Returns:
        :class:`LDSFiltered`.
    """
    b, d, valid = _offsets_and_mask(ys, initial_mean, dynamics_offsets, emission_offsets, mask)

    def step(carry, args):
        mean, scale = carry
        y, b_t, d_t, v = args
        log_norm, f_mean, f_scale = condition_step(mean, scale, emission, emission_scale, y, d_t, v)
        p_mean, p_scale = predict_step(f_mean, f_scale, dynamics, dynamics_scale, b_t)
        return (p_mean, p_scale), (log_norm, f_mean, f_scale, p_mean, p_scale)

    _, out = jax.lax.scan(step, (initial_mean, initial_scale), (ys, b, d, valid))
    return LDSFiltered(*out)


#: Doublings :func:`stationary_distribution` runs: the sum it forms has 2**40 terms,
#: enough for a spectral radius up to about 1 - 1e-11 (beyond float32's resolution of 1).
NUM_DOUBLINGS = 40


class LDSStationary(NamedTuple):
    """What :func:`stationary_distribution` returns.

    mean: (n,) the stationary mean (I - A)^-1 b.
    scale: (n, n) lower Cholesky factor of the stationary covariance P = A P A^T + Q.
    stable: () bool, whether the dynamics have a stationary distribution (to working
        precision); where False, ``mean`` and ``scale`` mean nothing.
    """

    mean: jax.Array
    scale: jax.Array
    stable: jax.Array


def stationary_distribution(
    dynamics, dynamics_scale, offset=None, *, num_doublings: int = NUM_DOUBLINGS
) -> LDSStationary:
    r"""The stationary distribution of z_{t+1} = A z_t + b + w_t, w_t ~ N(0, Q).

    The covariance solves the discrete Lyapunov equation :math:`P = A P A^T + Q`, i.e.
    :math:`P = \sum_{k \ge 0} A^k Q (A^T)^k`, summed by doubling: with
    :math:`P_0 = Q, A_0 = A`, :math:`P_{j+1} = P_j + A_j P_j A_j^T` and
    :math:`A_{j+1} = A_j^2`, so :math:`P_j` holds the first :math:`2^j` terms. It is
    carried as a Cholesky factor, :math:`L_{j+1} = \mathrm{tria}([L_j, A_j L_j])`
    (:func:`tria`), so it stays positive definite in float32. The truncation error is
    :math:`A_J P A_J^T` with :math:`A_J = A^{2^J}`, so the sum has converged to relative
    accuracy eps when :math:`\max |A_J| \le \sqrt{\epsilon}`; that is the ``stable``
    test, which fails (rather than returning a huge or infinite P) when A has an
    eigenvalue of modulus >= 1 or so close to 1 that 2**num_doublings steps do not
    forget the start. The mean solves m = A m + b.

    Args:
        dynamics: A (n, n).
        dynamics_scale: Q^1/2 (n, n), any square root of Q (e.g. its Cholesky factor).
        offset: b (n,) (None: zeros, so the mean is 0).
        num_doublings: J, the number of doublings.

    Returns:
        :class:`LDSStationary`.

    Example:
        >>> import jax.numpy as jnp
        >>> st = stationary_distribution(jnp.array([[0.5]]), jnp.array([[1.0]]))
        >>> round(float(st.scale[0, 0] ** 2), 6), bool(st.stable)  # 1 / (1 - 0.25)
        (1.333333, True)
    """
    n = dynamics.shape[0]
    dtype = dynamics.dtype

    def double(_, carry):
        power, scale = carry
        scale = tria(jnp.concatenate([scale, _mm(power, scale)], axis=1))
        return _mm(power, power), scale

    power, scale = jax.lax.fori_loop(0, num_doublings, double, (dynamics, dynamics_scale))
    tol = math.sqrt(float(jnp.finfo(dtype).eps))
    stable = jnp.all(jnp.abs(power) <= tol) & jnp.all(jnp.isfinite(scale))
    b = jnp.zeros((n,), dtype) if offset is None else offset
    mean = jnp.linalg.solve(jnp.eye(n, dtype=dtype) - dynamics, b)
    return LDSStationary(mean, scale, stable)


def _gram(scale):
    return _mm(scale, jnp.swapaxes(scale, -1, -2))


def rts_smoother(filtered: LDSFiltered, dynamics) -> LDSSmoothed:
    """The Rauch-Tung-Striebel smoother from :func:`kalman_filter`'s output.

    With the gain G_t = P_t|t A^T P_t+1|t^-1 (solved with the predicted Cholesky factor):
    m_t|T = m_t|t + G_t (m_t+1|T - m_t+1|t), P_t|T = P_t|t + G_t (P_t+1|T - P_t+1|t) G_t^T
    and Cov(z_t, z_t+1 | y) = G_t P_t+1|T.
    """
    f_means, f_covs = filtered.filtered_means, _gram(filtered.filtered_scales)
    p_means, p_scales = filtered.predicted_means, filtered.predicted_scales

    def step(carry, args):
        s_mean_next, s_cov_next = carry
        f_mean, f_cov, p_mean, p_scale = args
        gain = cho_solve((p_scale, True), _mm(dynamics, f_cov)).T  # P A^T Ppred^-1
        s_mean = f_mean + _mm(gain, s_mean_next - p_mean)
        s_cov = f_cov + _mm(_mm(gain, s_cov_next - _gram(p_scale)), gain.T)
        s_cov = 0.5 * (s_cov + s_cov.T)
        return (s_mean, s_cov), (s_mean, s_cov, _mm(gain, s_cov_next))

    last = (f_means[-1], f_covs[-1])
    args = (f_means[:-1], f_covs[:-1], p_means[:-1], p_scales[:-1])
    _, (means, covs, cross) = jax.lax.scan(step, last, args, reverse=True)
    return LDSSmoothed(
        jnp.sum(filtered.log_normalizers),
        jnp.concatenate([means, f_means[-1:]]),
        jnp.concatenate([covs, f_covs[-1:]]),
        cross,
    )


class LDSNatural(NamedTuple):
    r"""Natural parameters of the joint density of (z_1:T, y_1:T), tied over time.

    The log joint is, up to the constants of :func:`natural_constants`,

    .. math::
        -\tfrac12 z_1^\top J_0 z_1 + h_0^\top z_1
        + \sum_{t<T} \big[-\tfrac12 z_{t+1}^\top J_{11} z_{t+1} + z_{t+1}^\top J_{12} z_t
          - \tfrac12 z_t^\top J_{22} z_t + z_{t+1}^\top H_1 u_t + z_t^\top H_2 u_t\big]
        + \sum_t \big[-\tfrac12 z_t^\top J_o z_t + z_t^\top \Lambda_y y_t
          + z_t^\top \Lambda_u u_t\big]

    with J_0 = S_0^-1, h_0 = S_0^-1 m_0, J_11 = Q^-1, J_12 = Q^-1 A, J_22 = A^T Q^-1 A,
    H_1 = Q^-1 B, H_2 = -A^T Q^-1 B, J_o = C^T R^-1 C, Lambda_y = C^T R^-1,
    Lambda_u = -C^T R^-1 D. Each entry multiplies one sufficient statistic, so the
    gradient of the log-partition with respect to it is that statistic's posterior
    expectation (summed over time).
    """

    initial_precision: jax.Array  # J_0 (n, n)
    initial_linear: jax.Array  # h_0 (n,)
    next_precision: jax.Array  # J_11 (n, n)
    cross: jax.Array  # J_12 (n, n)
    prev_precision: jax.Array  # J_22 (n, n)
    next_input: jax.Array  # H_1 (n, m)
    prev_input: jax.Array  # H_2 (n, m)
    emission_precision: jax.Array  # J_o (n, n)
    emission_linear: jax.Array  # Lambda_y (n, p)
    emission_input: jax.Array  # Lambda_u (n, m)


def _sym(a):
    return 0.5 * (a + a.T)


def information_log_partition(natural: LDSNatural, constants, ys, us, mask) -> jax.Array:
    r"""log \int exp(<natural, T(z, y, u)> + constants) dz for one sequence: log p(y_1:T)
    when ``natural`` and ``constants`` come from one parameter set.

    The information-form forward recursion over canonical messages
    exp(-1/2 z^T J z + h^T z + c): integrating z_t out against the pairwise potential
    gives J' = J_11 - J_12 K^-1 J_12^T, h' = H_1 u_t + J_12 K^-1 h~ with
    K = J + J_22, h~ = h + H_2 u_t. The natural parameters enter as free variables
    (symmetrised where they are quadratic), so the gradient with respect to them is
    exact for any value, not only on the model's manifold.

    Args:
        natural: :class:`LDSNatural`.
        constants: (initial (), per transition (T,), per emission (T,)): the log
            normalisers and the terms that do not involve z (see
            :func:`probseq.fit.lds_em.natural_parameters`).
        ys: (T, p); us: (T, m) (m may be 0); mask: (T,) prefix mask.
    """
    n = natural.initial_linear.shape[0]
    half_log_2pi = 0.5 * n * math.log(2 * math.pi)
    j11, j22 = _sym(natural.next_precision), _sym(natural.prev_precision)
    jo, j0 = _sym(natural.emission_precision), _sym(natural.initial_precision)
    c_init, c_trans, c_obs = constants

    def observe(y, u):
        return _mm(natural.emission_linear, y) + _mm(natural.emission_input, u)

    start = (j0 + jo, natural.initial_linear + observe(ys[0], us[0]), c_init + c_obs[0])

    def step(carry, args):
        j, h, c = carry
        u_prev, y, u, c_t, c_o, v = args
        chol = jnp.linalg.cholesky(j + j22)
        h_t = h + _mm(natural.prev_input, u_prev)
        k_inv_h = cho_solve((chol, True), h_t)
        k_inv_j12t = cho_solve((chol, True), natural.cross.T)
        c_new = (
            c + 0.5 * jnp.dot(h_t, k_inv_h) + half_log_2pi - jnp.sum(jnp.log(jnp.diagonal(chol)))
        )
        j_new = j11 - _mm(natural.cross, k_inv_j12t) + jo
        h_new = _mm(natural.next_input, u_prev) + _mm(natural.cross, k_inv_h) + observe(y, u)
        new = (j_new, h_new, c_new + c_t + c_o)
        return jax.tree.map(lambda a, b: jnp.where(v, a, b), new, carry), None

    args = (us[:-1], ys[1:], us[1:], c_trans[:-1], c_obs[1:], mask[1:])
    (j, h, c), _ = jax.lax.scan(step, start, args)
    chol = jnp.linalg.cholesky(j)
    white = solve_triangular(chol, h, lower=True)
    total = c + 0.5 * jnp.sum(white**2) + half_log_2pi - jnp.sum(jnp.log(jnp.diagonal(chol)))
    return jnp.where(mask[0], total, jnp.zeros((), total.dtype))


def _combine(first, second):
    """The associative operator of Sarkka and Garcia-Fernandez (2021), eq. (12)-(13), on
    elements (A, b, C, eta, J) for p(z_k | z_{j-1}, y_{j:k}) and the likelihood of
    y_{j:k} given z_{j-1} in information form (batched over a leading axis)."""
    a1, b1, c1, e1, j1 = first
    a2, b2, c2, e2, j2 = second
    eye = jnp.eye(a1.shape[-1], dtype=a1.dtype)
    t = lambda m: jnp.swapaxes(m, -1, -2)  # noqa: E731
    # M = (I + C1 J2)^-1, and (I + J2 C1)^-1 = M^T (C1, J2 symmetric): one inverse
    m = jnp.linalg.inv(eye + _mm(c1, j2))
    a2m = _mm(a2, m)
    a = _mm(a2m, a1)
    b = _mm(a2m, (b1 + _mm(c1, e2[..., None])[..., 0])[..., None])[..., 0] + b2
    c = _mm(_mm(a2m, c1), t(a2)) + c2
    n_a1 = t(_mm(m, a1))  # A1^T (I + J2 C1)^-1
    e = _mm(n_a1, (e2 - _mm(j2, b1[..., None])[..., 0])[..., None])[..., 0] + e1
    j = _mm(_mm(n_a1, j2), a1) + j1
    sym = lambda m: 0.5 * (m + t(m))  # noqa: E731
    return a, b, sym(c), e, sym(j)


def parallel_kalman_filter(
    initial_mean,
    initial_scale,
    dynamics,
    dynamics_scale,
    emission,
    emission_scale,
    ys,
    dynamics_offsets=None,
    emission_offsets=None,
    mask=None,
) -> LDSFiltered:
    """The parallel-in-time Kalman filter (Sarkka and Garcia-Fernandez 2021): every
    step's conditional (A_k, b_k, C_k, eta_k, J_k) is built at once and the filtered
    moments are the prefix products of ``jax.lax.associative_scan`` (O(log T) depth, O(T
    n^3) work); the one-step predictives and log p(y_t | y_<t) then follow in parallel.
    Same arguments and result as :func:`kalman_filter` (the scales by Cholesky
    factorisation of the covariances, in covariance form: for very long float32 runs
    the sequential square-root filter is the safer one).
    """
    n, dtype = initial_mean.shape[0], initial_mean.dtype
    b_off, d_off, valid = _offsets_and_mask(
        ys, initial_mean, dynamics_offsets, emission_offsets, mask
    )
    f, h = dynamics, emission
    q, r = _gram(dynamics_scale), _gram(emission_scale)
    p0 = _gram(initial_scale)

    def first_element(y, d, v):
        s = _mm(_mm(h, p0), h.T) + r
        k = jnp.where(v, cho_solve((jnp.linalg.cholesky(s), True), _mm(h, p0)).T, 0.0)
        mean = initial_mean + _mm(k, y - _mm(h, initial_mean) - d)
        cov = p0 - _mm(_mm(k, s), k.T)
        zero = jnp.zeros((n, n), dtype)
        return zero, mean, cov, jnp.zeros((n,), dtype), zero

    def element(y, b_prev, d, v):
        s = _mm(_mm(h, q), h.T) + r
        chol = jnp.linalg.cholesky(s)
        k = jnp.where(v, cho_solve((chol, True), _mm(h, q)).T, 0.0)  # Q H^T S^-1
        resid = y - _mm(h, b_prev) - d
        ikh = jnp.eye(n, dtype=dtype) - _mm(k, h)
        hf = _mm(h, f)
        s_inv_hf = cho_solve((chol, True), hf)
        eta = jnp.where(v, _mm(s_inv_hf.T, resid), 0.0)
        j = jnp.where(v, _mm(hf.T, s_inv_hf), 0.0)
        return _mm(ikh, f), b_prev + _mm(k, resid), _mm(ikh, q), eta, j

    first = first_element(ys[0], d_off[0], valid[0])
    rest = jax.vmap(element)(ys[1:], b_off[:-1], d_off[1:], valid[1:])
    elements = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    _, f_means, f_covs, _, _ = jax.lax.associative_scan(_combine, elements)

    p_means = _mm(f_means, f.T) + b_off
    p_covs = _mm(_mm(f, f_covs), f.T) + q
    prior_means = jnp.concatenate([initial_mean[None], p_means[:-1]])
    prior_covs = jnp.concatenate([p0[None], p_covs[:-1]])

    def log_norm(mean, cov, y, d, v):
        s_chol = jnp.linalg.cholesky(_mm(_mm(h, cov), h.T) + r)
        ll = _normal_log_density(s_chol, y - _mm(h, mean) - d)[0]
        return jnp.where(v, ll, jnp.zeros((), ll.dtype))

    lls = jax.vmap(log_norm)(prior_means, prior_covs, ys, d_off, valid)
    chol = jnp.linalg.cholesky
    sym = lambda m: 0.5 * (m + jnp.swapaxes(m, -1, -2))  # noqa: E731
    return LDSFiltered(lls, f_means, chol(sym(f_covs)), p_means, chol(sym(p_covs)))


def parallel_rts_smoother(filtered: LDSFiltered, dynamics) -> LDSSmoothed:
    """The parallel-in-time Rauch-Tung-Striebel smoother (Sarkka and Garcia-Fernandez
    2021, section 4): with G_t the RTS gain, each step is the affine map
    (E_t, g_t, L_t) = (G_t, m_t|t - G_t m_t+1|t, P_t|t - G_t P_t+1|t G_t^T) of
    p(z_t | z_t+1, y_1:t), and the smoothed moments are their suffix compositions by a
    reverse ``jax.lax.associative_scan``. Same result as :func:`rts_smoother`."""
    f_means, f_covs = filtered.filtered_means, _gram(filtered.filtered_scales)
    p_means, p_scales = filtered.predicted_means, filtered.predicted_scales

    def element(f_mean, f_cov, p_mean, p_scale):
        gain = cho_solve((p_scale, True), _mm(dynamics, f_cov)).T
        cov = f_cov - _mm(_mm(gain, _gram(p_scale)), gain.T)
        return gain, f_mean - _mm(gain, p_mean), 0.5 * (cov + cov.T)

    gains, offsets, covs = jax.vmap(element)(f_means[:-1], f_covs[:-1], p_means[:-1],
                                             p_scales[:-1])  # fmt: skip
    last = (jnp.zeros_like(f_covs[-1]), f_means[-1], f_covs[-1])
    elements = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]),
                            (gains, offsets, covs), last)  # fmt: skip

    def compose(later, earlier):
        # associative_scan(reverse=True) passes the later element first
        e2, g2, l2 = later
        e1, g1, l1 = earlier
        t = lambda m: jnp.swapaxes(m, -1, -2)  # noqa: E731
        cov = _mm(_mm(e1, l2), t(e1)) + l1
        return _mm(e1, e2), _mm(e1, g2[..., None])[..., 0] + g1, 0.5 * (cov + t(cov))

    _, means, s_covs = jax.lax.associative_scan(compose, elements, reverse=True)
    cross = _mm(gains, s_covs[1:])  # Cov(z_t, z_t+1 | y) = G_t P_t+1|T
    return LDSSmoothed(jnp.sum(filtered.log_normalizers), means, s_covs, cross)
