r"""Pure HMM inference kernels: arrays in, NamedTuples out.

The forward filter is the normalized recursion

.. math::
    c_t = \sum_k \pi_{t|t-1}(k)\, p(x_t \mid z_t = k), \quad
    \pi_{t|t}(k) = \pi_{t|t-1}(k)\, p(x_t \mid k) / c_t, \quad
    \pi_{t+1|t} = \pi_{t|t} A

so that log p(x_{1:T}) = sum_t log c_t. Emission likelihoods enter in log space and
are shifted by their per-step maximum before exponentiating, so Gaussian emissions
far in the tails do not underflow. The per-step log normalizers are returned and
summed with a pairwise (tree) sum, which keeps float32 totals over 1e6 steps within
1e-6 relative of float64.

Example:
    >>> import jax.numpy as jnp
    >>> pi = jnp.array([0.5, 0.5]); A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
    >>> ll = jnp.log(jnp.array([[0.5, 0.1], [0.5, 0.1], [0.1, 0.9]]))
    >>> hmm_filter(pi, A, ll).marginal_loglik.shape
    ()

The smoother (:func:`hmm_smoother`), the most likely path (:func:`hmm_viterbi`) and
exact posterior path draws (:func:`hmm_posterior_sample`) build on the same filter.
Each takes an optional prefix ``mask`` (T,): True on the valid steps, then False on
trailing padding. Padded steps influence nothing: their log-likelihoods are taken
as 0, their probabilities are 0, their states are -1, and no transition into or out
of them is counted. So a padded sequence gives exactly what the sequence alone gives.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from probseq.scan import pairwise_sum

__all__ = [
    "HMMFilterResult",
    "HMMPosterior",
    "hmm_filter",
    "hmm_masked_filter",
    "hmm_smoother",
    "hmm_viterbi",
    "hmm_posterior_sample",
    "hmm_backward_sample",
]


class HMMFilterResult(NamedTuple):
    """marginal_loglik: log p(x_{1:T}), ();
    log_normalizers: log p(x_t | x_{<t}), (T,);
    predicted_probs: p(z_t | x_{<t}), (T, K);
    filtered_probs: p(z_t | x_{<=t}), (T, K)."""

    marginal_loglik: jax.Array
    log_normalizers: jax.Array
    predicted_probs: jax.Array
    filtered_probs: jax.Array


def condition_on(probs: jax.Array, log_likelihoods: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bayes' rule: p(z | x) from p(z) (K,) and log p(x | z) (K,); returns
    (posterior probs, log p(x)). An impossible observation gives log p(x) = -inf
    and an all-zero posterior (never NaN)."""
    m = jnp.max(log_likelihoods)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))
    w = probs * jnp.exp(log_likelihoods - m)
    c = jnp.sum(w)
    safe = jnp.where(c > 0, c, jnp.ones((), c.dtype))
    return w / safe, jnp.log(c) + m


def hmm_filter(
    initial_probs: jax.Array, transition_matrix: jax.Array, log_likelihoods: jax.Array
) -> HMMFilterResult:
    """Forward filter of a homogeneous HMM.

    Args:
        initial_probs: (K,) p(z_1).
        transition_matrix: (K, K) with A[i, j] = p(z_{t+1} = j | z_t = i).
        log_likelihoods: (T, K) log p(x_t | z_t = k).
    """

    lik, shift = _shifted_likelihoods(log_likelihoods)
    c, filtered = _forward(initial_probs, transition_matrix, lik)
    log_c = jnp.log(c) + shift
    predicted = _predicted(initial_probs, transition_matrix, filtered)
    return HMMFilterResult(pairwise_sum(log_c), log_c, predicted, filtered)


def _forward(initial_probs, transition_matrix, lik):
    """The scaled forward loop on shifted likelihoods (T, K): per-step normalizers c_t
    (T,) and filtered probabilities (T, K). The shift and exp of ``condition_on`` are
    done for all steps before the loop, so its body is one product, one sum, one divide
    and one vector-matrix product."""

    def step(predicted, lik_t):
        w = predicted * lik_t
        c = jnp.sum(w)
        filtered = w / jnp.where(c > 0, c, jnp.ones((), c.dtype))
        return filtered @ transition_matrix, (c, filtered)

    return jax.lax.scan(step, initial_probs, lik)[1]


def _predicted(initial_probs, transition_matrix, filtered):
    """p(z_t | x_{<t}) for all t from the filtered probabilities: one matrix product."""
    return jnp.concatenate([initial_probs[None], filtered[:-1] @ transition_matrix])


# ------------------------------------------------------------------ masked kernels
class HMMPosterior(NamedTuple):
    """marginal_loglik: log p(x_{1:T}) over the valid steps, ();
    filtered_probs: p(z_t | x_{<=t}), (T, K), 0 on padded steps;
    predicted_probs: p(z_t | x_{<t}), (T, K), 0 on padded steps;
    smoothed_probs: p(z_t | x_{1:T}), (T, K), 0 on padded steps (row 0 is the
        posterior of the initial state);
    expected_transitions: sum_t p(z_t = i, z_{t+1} = j | x_{1:T}) over consecutive
        valid steps, (K, K); sums to (number of valid steps - 1)."""

    marginal_loglik: jax.Array
    filtered_probs: jax.Array
    predicted_probs: jax.Array
    smoothed_probs: jax.Array
    expected_transitions: jax.Array


def _prefix_mask(log_likelihoods: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.ones(jnp.shape(log_likelihoods)[:1], bool)
    return jnp.asarray(mask, bool)


def _safe_normalize(w: jax.Array) -> jax.Array:
    """w / sum(w); all zeros (never NaN) when the sum is 0."""
    c = jnp.sum(w)
    return w / jnp.where(c > 0, c, jnp.ones((), c.dtype))


def _shifted_likelihoods(log_likelihoods: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(exp(log p(x_t | k) - m_t), m_t) with m_t = max_k log p(x_t | k) (the shift
    condition_on uses), so emissions far in a Gaussian tail stay representable."""
    m = jnp.max(log_likelihoods, axis=-1)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))
    return jnp.exp(log_likelihoods - m[..., None]), m


def _sum_of_outer_products(p: jax.Array, q: jax.Array, chunk: int = 256) -> jax.Array:
    """sum_t p_t q_t^T for (T, K) arrays: matrix products over chunks of ``chunk``
    steps, then a pairwise sum over chunks, so float32 counts over 1e6 steps keep
    ~1e-7 relative accuracy (a running float32 sum loses ~1e-4)."""
    t, k = p.shape
    n = -(-t // chunk) if t else 1
    pad = n * chunk - t
    p = jnp.pad(p, ((0, pad), (0, 0))).reshape(n, chunk, k)
    q = jnp.pad(q, ((0, pad), (0, 0))).reshape(n, chunk, q.shape[-1])
    return pairwise_sum(jnp.einsum("nti,ntj->ijn", p, q), axis=-1)


def _log(p: jax.Array) -> jax.Array:
    """log with log 0 = -inf (structural zeros), without a NaN for p = 0."""
    return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, jnp.ones((), p.dtype))), -jnp.inf)


def hmm_masked_filter(
    initial_probs: jax.Array,
    transition_matrix: jax.Array,
    log_likelihoods: jax.Array,
    mask: jax.Array | None = None,
) -> HMMFilterResult:
    """:func:`hmm_filter` of the valid prefix of a padded sequence.

    Padded steps carry log-likelihood 0 through the recursion (which cannot reach the
    earlier, valid steps) and are then zeroed: log normalizers 0, probabilities 0, so
    ``marginal_loglik`` sums the valid steps only.

    Args:
        initial_probs: (K,) p(z_1).
        transition_matrix: (K, K) with A[i, j] = p(z_{t+1} = j | z_t = i).
        log_likelihoods: (T, K) log p(x_t | z_t = k).
        mask: (T,) bool prefix mask, or None (every step valid).

    Example:
        >>> pi = jnp.array([0.5, 0.5]); A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
        >>> ll = jnp.zeros((4, 2)); mask = jnp.array([True, True, False, False])
        >>> hmm_masked_filter(pi, A, ll, mask).filtered_probs[2:].sum()
        Array(0., dtype=float32)
    """
    log_likelihoods = jnp.asarray(log_likelihoods)
    valid = _prefix_mask(log_likelihoods, mask)
    ll = jnp.where(valid[:, None], log_likelihoods, jnp.zeros((), log_likelihoods.dtype))
    res = hmm_filter(initial_probs, transition_matrix, ll)
    zero = jnp.zeros((), res.filtered_probs.dtype)
    log_c = jnp.where(valid, res.log_normalizers, zero)
    return HMMFilterResult(
        pairwise_sum(log_c),
        log_c,
        jnp.where(valid[:, None], res.predicted_probs, zero),
        jnp.where(valid[:, None], res.filtered_probs, zero),
    )


def hmm_smoother(
    initial_probs: jax.Array,
    transition_matrix: jax.Array,
    log_likelihoods: jax.Array,
    mask: jax.Array | None = None,
) -> HMMPosterior:
    r"""Forward-backward smoother of a homogeneous HMM (scaled, normalized messages).

    With filtered probabilities :math:`\alpha_t(i) = p(z_t = i \mid x_{1:t})` from
    :func:`hmm_filter` and shifted likelihoods :math:`\ell_t(j) \propto p(x_t \mid j)`,
    the backward messages :math:`\beta_t \propto p(x_{t+1:T} \mid z_t)` are

    .. math::
        \beta_T = 1, \qquad \beta_t \propto A\,(\ell_{t+1} \odot \beta_{t+1}),

    each normalized to sum 1 (only ratios matter), and

    .. math::
        p(z_t \mid x_{1:T}) \propto \alpha_t \odot \beta_t, \qquad
        \xi_t(i, j) = p(z_t = i, z_{t+1} = j \mid x_{1:T}) \propto
            \alpha_t(i)\, A_{ij}\, \ell_{t+1}(j)\, \beta_{t+1}(j).

    ``expected_transitions`` is :math:`\sum_t \xi_t` over pairs of valid steps,
    computed after the backward loop as one contraction over time,
    :math:`A \odot \sum_t \alpha_t w_{t+1}^\top` with
    :math:`w_{t+1} = \ell_{t+1} \odot \beta_{t+1} / (\alpha_t \cdot A(\ell_{t+1} \odot
    \beta_{t+1}))`, in chunked matrix products summed pairwise (float32 counts over
    1e6 steps keep ~1e-7 relative accuracy). An impossible
    sequence (some step with p(x_t | x_{<t}) = 0) gives marginal_loglik = -inf and
    zero probabilities from then on, never NaN.

    Args:
        initial_probs: (K,) p(z_1).
        transition_matrix: (K, K) with A[i, j] = p(z_{t+1} = j | z_t = i).
        log_likelihoods: (T, K) log p(x_t | z_t = k).
        mask: (T,) bool prefix mask (valid steps first, then padding), or None.

    Returns:
        An :class:`HMMPosterior`.

    Example:
        >>> pi = jnp.array([0.5, 0.5]); A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
        >>> ll = jnp.log(jnp.array([[0.5, 0.1], [0.5, 0.1], [0.1, 0.9]]))
        >>> post = hmm_smoother(pi, A, ll)
        >>> post.smoothed_probs.shape, float(post.expected_transitions.sum())
        ((3, 2), 2.0)
    """
    log_likelihoods = jnp.asarray(log_likelihoods)
    valid = _prefix_mask(log_likelihoods, mask)
    a = jnp.asarray(transition_matrix)
    ll = jnp.where(valid[:, None], log_likelihoods, jnp.zeros((), log_likelihoods.dtype))
    lik, shift = _shifted_likelihoods(ll)
    c, filtered = _forward(initial_probs, a, lik)
    dtype = filtered.dtype
    num_states = a.shape[-1]
    zero = jnp.zeros((), dtype)
    log_c = jnp.where(valid, jnp.log(c) + shift, zero)

    def step(beta_next, inputs):
        lik_next, has_next = inputs
        beta = _safe_normalize(a @ (lik_next * beta_next))
        beta = jnp.where(has_next, beta, jnp.ones_like(beta_next))
        return beta, beta

    _, betas = jax.lax.scan(
        step, jnp.ones((num_states,), dtype), (lik[1:], valid[1:]), reverse=True
    )
    # xi_t = alpha_t(i) A_ij v_{t+1}(j) / Z_t with v = lik * beta and Z_t = alpha_t . (A v):
    # the sum over t is A * (alpha^T W), one contraction over time outside the loop.
    betas = jnp.concatenate([betas, jnp.ones((1, num_states), dtype)])
    alpha = filtered[:-1]
    v = lik[1:] * betas[1:]
    z = jnp.sum(alpha * (v @ a.T), axis=-1, keepdims=True)
    w = jnp.where(valid[1:, None] & (z > 0), v / jnp.where(z > 0, z, jnp.ones((), dtype)), 0.0)
    counts = a * _sum_of_outer_products(alpha, w)
    smoothed = jax.vmap(_safe_normalize)(filtered * betas)
    keep = valid[:, None]
    return HMMPosterior(
        pairwise_sum(log_c),
        jnp.where(keep, filtered, zero),
        jnp.where(keep, _predicted(initial_probs, a, filtered), zero),
        jnp.where(keep, smoothed, zero),
        counts,
    )


def hmm_viterbi(
    initial_probs: jax.Array,
    transition_matrix: jax.Array,
    log_likelihoods: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Most likely state path :math:`\arg\max_{z_{1:T}} p(z_{1:T} \mid x_{1:T})`.

    Max-product in log space with back-pointers:

    .. math::
        \delta_1 = \log \pi + \log p(x_1 \mid \cdot), \qquad
        \delta_t(j) = \max_i\,[\delta_{t-1}(i) + \log A_{ij}] + \log p(x_t \mid j),

    :math:`\psi_t(j) = \arg\max_i [\delta_{t-1}(i) + \log A_{ij}]`,
    :math:`z_T = \arg\max \delta_T`, :math:`z_{t-1} = \psi_t(z_t)`. Each
    :math:`\delta_t` is shifted by its maximum, so float32 scores do not lose the
    resolution between states on long sequences. Structural zeros (log 0 = -inf) are
    never chosen when a possible path exists; ties go to the lowest state index.

    Args:
        initial_probs: (K,) p(z_1).
        transition_matrix: (K, K) with A[i, j] = p(z_{t+1} = j | z_t = i).
        log_likelihoods: (T, K) log p(x_t | z_t = k).
        mask: (T,) bool prefix mask (valid steps first, then padding), or None.

    Returns:
        (T,) int32 state path; -1 on padded steps.

    Example:
        >>> pi = jnp.array([0.5, 0.5]); A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
        >>> ll = jnp.log(jnp.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]]))
        >>> hmm_viterbi(pi, A, ll, jnp.array([True, True, False]))
        Array([ 0,  0, -1], dtype=int32)
    """
    log_likelihoods = jnp.asarray(log_likelihoods)
    valid = _prefix_mask(log_likelihoods, mask)
    log_likelihoods = jnp.where(
        valid[:, None], log_likelihoods, jnp.zeros((), log_likelihoods.dtype)
    )
    log_a = _log(jnp.asarray(transition_matrix))
    num_states = log_a.shape[-1]

    def shift(delta):
        m = jnp.max(delta)
        return delta - jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))

    def step(delta, inputs):
        ll, is_valid = inputs
        scores = delta[:, None] + log_a
        pointers = jnp.argmax(scores, axis=0).astype(jnp.int32)
        new = shift(jnp.max(scores, axis=0) + ll)
        delta = jnp.where(is_valid, new, delta)
        pointers = jnp.where(is_valid, pointers, jnp.arange(num_states, dtype=jnp.int32))
        return delta, pointers

    delta0 = shift(_log(jnp.asarray(initial_probs)) + log_likelihoods[0])
    delta, pointers = jax.lax.scan(step, delta0, (log_likelihoods[1:], valid[1:]))
    last = jnp.argmax(delta).astype(jnp.int32)

    def backtrack(z_next, ptr):
        z = ptr[z_next]
        return z, z

    _, earlier = jax.lax.scan(backtrack, last, pointers, reverse=True)
    path = jnp.concatenate([earlier, last[None]])
    return jnp.where(valid, path, -jnp.ones((), jnp.int32))


def hmm_posterior_sample(
    key: jax.Array,
    initial_probs: jax.Array,
    transition_matrix: jax.Array,
    log_likelihoods: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""One exact draw :math:`z_{1:T} \sim p(z_{1:T} \mid x_{1:T})` by forward
    filtering, backward sampling:

    .. math::
        z_T \sim \alpha_T, \qquad
        p(z_t = i \mid z_{t+1}, x_{1:T}) \propto \alpha_t(i)\, A_{i, z_{t+1}},

    with :math:`\alpha_t = p(z_t \mid x_{1:t})` from the filter. States with zero
    posterior probability (structural zeros in pi, A or the emissions) are never drawn.

    Args:
        key: a PRNG key.
        initial_probs: (K,) p(z_1).
        transition_matrix: (K, K) with A[i, j] = p(z_{t+1} = j | z_t = i).
        log_likelihoods: (T, K) log p(x_t | z_t = k).
        mask: (T,) bool prefix mask (valid steps first, then padding), or None.

    Returns:
        (T,) int32 states; -1 on padded steps. Step t uses ``fold_in(key, t)``, so
        padding does not change the draw on the valid steps.

    Example:
        >>> pi = jnp.array([0.5, 0.5]); A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
        >>> ll = jnp.log(jnp.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]]))
        >>> hmm_posterior_sample(jax.random.key(0), pi, A, ll).shape
        (3,)
    """
    log_likelihoods = jnp.asarray(log_likelihoods)
    valid = _prefix_mask(log_likelihoods, mask)
    a = jnp.asarray(transition_matrix)
    filt = hmm_masked_filter(initial_probs, a, log_likelihoods, valid)
    return hmm_backward_sample(key, a, filt.filtered_probs, valid)


def hmm_backward_sample(
    key: jax.Array, transition_matrix: jax.Array, filtered_probs: jax.Array, mask: jax.Array
) -> jax.Array:
    """The backward half of :func:`hmm_posterior_sample`, from filtered probabilities
    (T, K) of :func:`hmm_masked_filter` (filter once, then draw many paths)."""
    valid = jnp.asarray(mask, bool)
    log_alpha = _log(filtered_probs)
    log_a = _log(jnp.asarray(transition_matrix))
    has_next = jnp.concatenate([valid[1:], jnp.zeros((1,), bool)])
    # Step t draws with fold_in(key, t): the same key gives the same states on the
    # valid steps however much padding follows.
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(filtered_probs.shape[0]))

    def step(z_next, inputs):
        k, log_alpha_t, has_next_t, is_valid = inputs
        logits = log_alpha_t + jnp.where(has_next_t, log_a[:, z_next], 0.0)
        z = jax.random.categorical(k, logits).astype(jnp.int32)
        return z, jnp.where(is_valid, z, -jnp.ones((), jnp.int32))

    _, states = jax.lax.scan(
        step, jnp.zeros((), jnp.int32), (keys, log_alpha, has_next, valid), reverse=True
    )
    return states
