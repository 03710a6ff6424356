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
import numpy as np

from probseq.auto import chunking_pays, default_chunk_size
from probseq.scan import EXACT, pairwise_sum

__all__ = [
    "HMMFilterResult",
    "HMMPosterior",
    "hmm_filter",
    "hmm_filter_batch",
    "hmm_filter_parallel",
    "FILTER_METHODS",
    "hmm_masked_filter",
    "hmm_smoother",
    "hmm_smoother_batch",
    "hmm_smoother_chunked",
    "hmm_smoother_from_likelihoods",
    "ChunkLayout",
    "chunked_statistics",
    "default_chunk_size",
    "chunking_pays",
    "hmm_viterbi",
    "hmm_posterior_sample",
    "hmm_backward_sample",
    "check_possible",
    "check_model_data",
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


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at full float32 precision on every backend (see probseq.scan.EXACT)."""
    return jnp.matmul(a, b, precision=EXACT)


def condition_on(probs: jax.Array, log_likelihoods: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bayes' rule: p(z | x) from p(z) (K,) and log p(x | z) (K,); returns
    (posterior probs, log p(x)). An impossible observation gives log p(x) = -inf
    and an all-zero posterior (never NaN)."""
    # Shift by the largest log-likelihood among the states with p(z) > 0: one with
    # p(z) = 0 and a far larger likelihood must not underflow the possible ones to 0.
    ll = jnp.where(probs > 0, log_likelihoods, -jnp.inf)
    m = jnp.max(ll)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))
    w = probs * jnp.exp(ll - m)
    c = jnp.sum(w)
    safe = jnp.where(c > 0, c, jnp.ones((), c.dtype))
    return w / safe, jnp.log(c) + m


def hmm_filter(
    initial_probs: jax.Array, transition_matrix: jax.Array, log_likelihoods: jax.Array
) -> HMMFilterResult:
    """Forward filter of a homogeneous HMM.

    Args:
        initial_probs: (K,) p(z_1).
        transition_matrix: (K, K) with A[i, j] = p(z_{t+1} = j | z_t = i), or (T, K, K)
            with A_t the transition out of step t (an input-driven HMM; A_{T-1} is not
            used).
        log_likelihoods: (T, K) log p(x_t | z_t = k).
    """

    lik, shift = _shifted_likelihoods(log_likelihoods, initial_probs, transition_matrix)
    c, filtered = _forward(initial_probs, transition_matrix, lik)
    log_c = jnp.log(c) + shift
    predicted = _predicted(initial_probs, transition_matrix, filtered)
    return HMMFilterResult(pairwise_sum(log_c), log_c, predicted, filtered)


def _forward(initial_probs, transition_matrix, lik):
    """The scaled forward loop on shifted likelihoods (T, K): per-step normalizers c_t
    (T,) and filtered probabilities (T, K). The shift and exp of ``condition_on`` are
    done for all steps before the loop, so its body is one product, one sum, one divide
    and one vector-matrix product."""

    def step(predicted, inputs):
        lik_t, a = inputs
        w = predicted * lik_t
        c = jnp.sum(w)
        filtered = w / jnp.where(c > 0, c, jnp.ones((), c.dtype))
        return _mm(filtered, a), (c, filtered)

    if jnp.ndim(transition_matrix) == 3:  # A_t per step
        return jax.lax.scan(step, initial_probs, (lik, transition_matrix))[1]
    return jax.lax.scan(lambda p, lik_t: step(p, (lik_t, transition_matrix)), initial_probs, lik)[1]


def _after(filtered, transition_matrix):
    """p(z_{t+1} | x_{<=t}) for t < T of a batch: filtered (B, T, K) times A (K, K) or
    A_t per step (B, T, K, K); (B, T - 1, K)."""
    if jnp.ndim(transition_matrix) == 4:
        return jnp.einsum(
            "btk,btkj->btj", filtered[:, :-1], transition_matrix[:, :-1], precision=EXACT
        )
    return _mm(filtered[:, :-1], transition_matrix)


def _predicted(initial_probs, transition_matrix, filtered):
    """p(z_t | x_{<t}) for all t from the filtered probabilities: one matrix product
    (a batched one for A_t per step)."""
    if jnp.ndim(transition_matrix) == 3:
        after = jnp.einsum("tk,tkj->tj", filtered[:-1], transition_matrix[:-1], precision=EXACT)
    else:
        after = _mm(filtered[:-1], transition_matrix)
    return jnp.concatenate([initial_probs[None], after])


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


def _shifted_likelihoods(
    log_likelihoods: jax.Array, initial_probs=None, transition_matrix=None
) -> tuple[jax.Array, jax.Array]:
    """(exp(log p(x_t | k) - m_t), m_t) with m_t = max_k log p(x_t | k) (the shift
    condition_on uses), so emissions far in a Gaussian tail stay representable.

    Given p(z_1) (..., K) and A, the max and the likelihoods are over the states the
    chain can be in: p(z_1) > 0 at the first step, a column of A with a positive entry
    after it (0 for the others, which have probability 0 there). Otherwise a state of
    probability 0 with a far larger likelihood (a fitted p(z_1) = [0, 0, 1], a
    left-to-right chain) would shift the possible ones below float range and give
    log p(x) = -inf for a possible sequence."""
    ll = log_likelihoods
    if initial_probs is not None:
        first = jnp.asarray(initial_probs) > 0
        later = jnp.any(jnp.asarray(transition_matrix) > 0, axis=-2)
        if jnp.ndim(transition_matrix) >= 3:  # A_t per step (..., T, K, K): t enters by A_{t-1}
            later = jnp.concatenate([later[..., :1, :], later[..., :-1, :]], axis=-2)
        steps = jnp.arange(ll.shape[-2])[:, None]
        support = jnp.where(steps == 0, first[..., None, :], later)
        ll = jnp.where(support, ll, -jnp.inf)
    m = jnp.max(ll, axis=-1)
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))
    return jnp.exp(ll - m[..., None]), m


def _sum_of_outer_products(p: jax.Array, q: jax.Array, max_chunk: int = 256) -> jax.Array:
    """sum_t p_t q_t^T for (..., T, K) arrays, per leading index: (..., K, K).

    Products over chunks of steps, then a pairwise sum over chunks, so float32 counts
    over 1e6 steps keep ~1e-7 relative accuracy (a running float32 sum loses ~1e-4).
    For K <= 16 the outer products of chunks of up to 64 steps are summed by
    broadcasting (4x faster than a batched matrix product at K=8 on CPU); for larger K,
    matrix products over chunks of up to ``max_chunk`` steps. Measured on CPU, float32:
    per sequence (64, 1000, 32), chunks of 250 take 2.2 ms (4.7e-7 relative error
    against float64) and of 1000 2.8 ms (7.6e-7); one sum over 64,000 steps (the
    chunked E-step's), 16 chunks of 4000 take 1.2 ms and 250 of 256 take 3.4 ms, both
    1.2e-7."""
    *batch, t, k = p.shape
    # n chunks of at most 64 / max_chunk steps, as even as possible: T = 1000 takes four
    # chunks of 250 and no padded copy of p and q (a pad of T to 1024 costs two copies).
    n = -(-t // (64 if k <= 16 else max_chunk)) if t else 1
    chunk = -(-t // n) if t else 1
    pad = [(0, 0)] * len(batch) + [(0, n * chunk - t), (0, 0)]
    # Batch and chunks on one leading axis: XLA compiles the 3-d forms much better.
    p = jnp.pad(p, pad).reshape((-1, chunk, k))
    q = jnp.pad(q, pad).reshape((-1, chunk, q.shape[-1]))
    if k <= 16:
        outer = jnp.sum(p[:, :, :, None] * q[:, :, None, :], axis=1)  # (B * n, K, K)
    else:
        outer = jnp.einsum("nti,ntj->nij", p, q, precision=EXACT)
    return pairwise_sum(outer.reshape((*batch, n) + outer.shape[1:]), axis=-3)


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
        transition_matrix: (K, K) with A[i, j] = p(z_{t+1} = j | z_t = i), or (T, K, K)
            with A_t the transition out of step t (an input-driven HMM; then
            :math:`\xi_t` uses :math:`A_t`).
        log_likelihoods: (T, K) log p(x_t | z_t = k).
        mask: (T,) bool prefix mask (valid steps first, then padding), or None.

    Returns:
        An :class:`HMMPosterior`.

    Example:
        >>> pi = jnp.array([0.5, 0.5]); A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
        >>> ll = jnp.log(jnp.array([[0.5, 0.1], [0.5, 0.1], [0.1, 0.9]]))
        >>> post = hmm_smoother(pi, A, ll)
        >>> post.smoothed_probs.shape, round(float(post.expected_transitions.sum()), 5)
        ((3, 2), 2.0)
    """
    ll = jnp.asarray(log_likelihoods)
    a = jnp.asarray(transition_matrix)
    a = a[None] if a.ndim == 3 else a  # A_t per step (T, K, K): a batch of one
    post = hmm_smoother_batch(initial_probs, a, ll[None], _prefix_mask(ll, mask)[None])
    return jax.tree.map(lambda z: z[0], post)


def hmm_smoother_batch(
    initial_probs: jax.Array,
    transition_matrix: jax.Array,
    log_likelihoods: jax.Array,
    mask: jax.Array,
) -> HMMPosterior:
    """``jax.vmap(hmm_smoother)`` over a batch (B, T, K) with masks (B, T) (A: (K, K), or
    per step (B, T, K, K)), the loops vmapped and the rest (posteriors, counts) written
    for the batch: the same values, about twice as fast for long sequences on CPU."""
    lik, shift = _shifted_likelihoods(
        jnp.asarray(log_likelihoods), initial_probs, transition_matrix
    )
    return hmm_smoother_from_likelihoods(
        initial_probs, transition_matrix, lik, shift, mask, method="forward_backward"
    )


def _neutral_padding(lik, shifts, valid):
    """Likelihoods 1 and shifts 0 on padded steps (whatever the padding held)."""
    lik = jnp.where(valid[..., None], lik, jnp.ones((), lik.dtype))
    return lik, jnp.where(valid, jnp.asarray(shifts, lik.dtype), jnp.zeros((), lik.dtype))


def hmm_smoother_from_likelihoods(
    initial_probs: jax.Array,
    transition_matrix: jax.Array,
    likelihoods: jax.Array,
    shifts: jax.Array,
    mask: jax.Array | None = None,
    *,
    method: str = "forward_backward",
    chunk_size: int | None = None,
    tol: float | None = None,
) -> HMMPosterior:
    """The smoother of a batch from its emission likelihoods given up to a factor per
    step, log p(x_t | k) = log likelihoods[..., t, k] + shifts[..., t] (what
    :meth:`probseq.HMM.emission_likelihoods` returns; the largest entry of a step
    should be about 1): the EM E-step's entry, which skips the exp of a (B, T, K)
    log-likelihood array where a head has a cheaper exact form.

    Args:
        initial_probs: (K,) p(z_1).
        transition_matrix: (K, K), or (B, T, K, K) with A_t the transition out of step
            t of each sequence (an input-driven HMM; "forward_backward" only).
        likelihoods: (B, T, K). shifts: (B, T).
        mask: (B, T) prefix masks, or None.
        method: "forward_backward" (:func:`hmm_smoother_batch`) or "chunked"
            (:func:`hmm_smoother_chunked`, with ``chunk_size`` and ``tol``).
    """
    lik = jnp.asarray(likelihoods)
    b, num_steps, k = lik.shape
    valid = jnp.broadcast_to(
        jnp.ones((b, num_steps), bool) if mask is None else jnp.asarray(mask, bool), (b, num_steps)
    )
    lik, shift = _neutral_padding(lik, shifts, valid)
    pi = jnp.asarray(initial_probs)
    a = jnp.asarray(transition_matrix)
    per_step = a.ndim == 4
    if per_step and a.shape != (b, num_steps, k, k):
        raise ValueError(
            f"transition_matrix must be (K, K) or per step (B, T, K, K) = {(b, num_steps, k, k)}"
            f"; got shape {a.shape}."
        )
    if method == "chunked" and not per_step:
        layout = ChunkLayout.of(num_steps, b, k, chunk_size)
        _, *messages = _chunked_messages(
            pi, a, layout.rows_of(lik, 1.0), layout.rows_of(valid, False), layout, tol
        )
        c, filtered, betas, s = map(layout.unchunk, messages)
    elif method == "forward_backward":
        c, filtered, betas, s = jax.vmap(_messages, in_axes=(None, 0 if per_step else None, 0, 0))(
            pi, a, lik, valid
        )
    elif method == "chunked":
        raise ValueError("method='chunked' takes one transition matrix (K, K), not one per step.")
    else:
        raise ValueError(f"method must be 'forward_backward' or 'chunked'; got {method!r}.")
    return _posterior(pi, a, lik, shift, valid, c, filtered, betas, s)


def _messages(initial_probs, a, lik, valid):
    """The two loops of :func:`hmm_smoother` for one sequence of shifted likelihoods
    (T, K) (1 on padded steps) and its mask (T,): (normalizers, filtered probabilities,
    backward messages normalized to sum 1, and their normalizers)."""
    c, filtered = _forward(initial_probs, a, lik)
    dtype = filtered.dtype
    num_states = a.shape[-1]

    per_step = a.ndim == 3  # A_t per step (T, K, K): beta_t = A_t (lik_{t+1} * beta_{t+1})

    def step(beta_next, inputs):
        lik_next, has_next = inputs[:2]
        u = _mm(inputs[2] if per_step else a, lik_next * beta_next)
        s = jnp.sum(u)
        beta = u / jnp.where(s > 0, s, jnp.ones((), dtype))
        beta = jnp.where(has_next, beta, jnp.ones_like(beta_next))
        return beta, (beta, s)

    xs = (lik[1:], valid[1:]) + ((a[:-1],) if per_step else ())
    _, (betas, s) = jax.lax.scan(step, jnp.ones((num_states,), dtype), xs, reverse=True)
    betas = jnp.concatenate([betas, jnp.ones((1, num_states), dtype)])
    s = jnp.concatenate([s, jnp.ones((1,), dtype)])
    return c, filtered, betas, s


def _smoothed_and_weights(lik, shift, valid, has_next, to_next, c, filtered, betas, s):
    """What the smoother computes from its two loops' outputs, in any layout of the
    steps: log-normalizers log p(x_t | x_{<t}), smoothed probabilities, and the weights
    w_t whose outer products with the filtered probabilities sum to the transition
    counts (times A). ``to_next(z)`` puts step t + 1's value at step t; ``has_next``
    marks steps followed by a valid step of their own sequence."""
    dtype = filtered.dtype
    zero = jnp.zeros((), dtype)
    log_c = jnp.where(valid, jnp.log(c) + shift, zero)
    prod = filtered * betas
    total = jnp.sum(prod, axis=-1, keepdims=True)
    smoothed = prod / jnp.where(total > 0, total, jnp.ones((), dtype))
    # xi_t = alpha_t(i) A_ij v_{t+1}(j) / Z_t with v = lik * beta and Z_t = alpha_t . (A v):
    # the sum over t is A * (F^T W) with w_t = v_{t+1} / Z_t, one contraction over time
    # outside the loop. A v_{t+1} = s_t beta_t, so Z_t = s_t (alpha_t . beta_t) needs no
    # product with A (the backward loop kept s_t). v_{t+1} is moved back to step t in
    # the one pass that makes w, so the filtered probabilities enter the contraction as
    # they are (misaligned [1:] slices cost a copy each).
    z = s[..., None] * total
    ok = has_next[..., None] & (z > 0)
    w = jnp.where(ok, to_next(lik * betas) / jnp.where(z > 0, z, jnp.ones((), dtype)), zero)
    return log_c, jnp.where(valid[..., None], smoothed, zero), w


def _posterior(initial_probs, a, lik, shift, valid, c, filtered, betas, s) -> HMMPosterior:
    """The smoother's outputs from the forward normalizers c (B, T), filtered
    probabilities (B, T, K), backward messages (B, T, K) normalized to sum 1 and their
    normalizers s (B, T) (beta_t = A (lik_{t+1} * beta_{t+1}) / s_t) of a batch:
    everything after the two loops, shared by the sequential and the chunked smoothers
    (written for a batch axis: under vmap the roll and the chunked contraction cost XLA
    twice as much)."""
    dtype = filtered.dtype
    zero = jnp.zeros((), dtype)
    has_next = jnp.roll(valid, -1, axis=-1).at[:, -1].set(False)
    log_c, smoothed, w = _smoothed_and_weights(
        lik, shift, valid, has_next, lambda z: jnp.roll(z, -1, axis=-2), c, filtered, betas, s
    )
    if a.ndim == 4:  # A_t per step (B, T, K, K): xi_t = A_t * outer(alpha_t, w_t)
        counts = jnp.einsum("btij,bti,btj->bij", a, filtered, w, precision=EXACT)
    else:
        counts = a * _sum_of_outer_products(filtered, w)
    predicted = jnp.concatenate(
        [jnp.broadcast_to(initial_probs, filtered[:, :1].shape), _after(filtered, a)], axis=1
    )
    keep = valid[..., None]
    return HMMPosterior(
        pairwise_sum(log_c),
        jnp.where(keep, filtered, zero),
        jnp.where(keep, predicted, zero),
        smoothed,
        counts,
    )


# ----------------------------------------------------------- chunked smoother
def _rel_close(x: jax.Array, y: jax.Array, tol) -> jax.Array:
    """Rows (..., K) of x and y equal to relative tolerance ``tol`` in every entry
    (entries equal to 0 in both count as equal). An entrywise relative bound is a
    bound in Hilbert's projective metric, in which Bayes' rule is an isometry and a
    stochastic matrix a contraction: messages this close stay this close."""
    return jnp.all(jnp.abs(x - y) <= tol * jnp.maximum(jnp.abs(x), jnp.abs(y)), axis=-1)


def _chunked_recursion(step, boundary, guess, exit_map, num_chunks, length, reverse, tol):
    """All chunks of a normalized recursion at once, then fixed-point fix-ups.

    The rows (R = B * C) are chunks of ``length`` steps; row r's entering message is
    ``exit_map`` of its neighbour's last message (r - 1 forward, r + 1 backward), or
    ``boundary`` (R, K) on the rows whose chunk starts a sequence (``is_edge``).

    step(carry (R, K), j) -> (message (R, K), normalizer (R,), next carry).

    1. One sweep of all rows from ``guess`` (exact on the edge rows), storing the
       messages (L, R, K) and scalars (L, R), time-major: a step's rows are contiguous.
    2. While some row's entering message differs from the one it was run with (by more
       than ``tol``, relative): rerun those rows from their new entering message, step
       by step, overwriting the stored values, and stop a row as soon as its new message
       equals the stored one (the two trajectories have merged; from there on the
       stored values are the new ones). At most C - 1 fix-ups: after fix-up n the
       first n + 1 chunks of every sequence are exact, by induction. A filter forgets
       its start geometrically, so one fix-up of a few dozen steps is the usual case;
       a nearly reducible chain takes more steps and fix-ups, never a wrong answer.
    """
    edge, boundary = boundary
    order = (lambda i: length - 1 - i) if reverse else (lambda i: i)
    shift = -1 if reverse else 1
    last = 0 if reverse else length - 1

    def entering(msgs):
        ex = exit_map(msgs[last])
        return jnp.where(edge[:, None], boundary, jnp.roll(ex, shift, axis=0))

    def sweep(carry, j):
        m, sc, carry = step(carry, j)
        return carry, (m, sc)

    # A scan's outputs need no initial fill (a preallocated buffer carried by a loop does).
    start = jnp.where(edge[:, None], boundary, guess)
    _, (msgs, scal) = jax.lax.scan(sweep, start, jnp.arange(length), reverse=reverse)

    def fix_cond(state):
        n, enter, msgs, _ = state
        return (n < num_chunks) & jnp.any(~_rel_close(entering(msgs), enter, tol))

    def fix_body(state):
        n, enter, msgs, scal = state
        new = entering(msgs)
        active = ~_rel_close(new, enter, tol)

        def row_cond(s):
            i, _, active, _, _ = s
            return (i < length) & jnp.any(active)

        def row_body(s):
            i, carry, active, msgs, scal = s
            j = order(i)
            m, sc, carry = step(carry, j)
            old = jax.lax.dynamic_index_in_dim(msgs, j, axis=0, keepdims=False)
            merged = _rel_close(m, old, tol)
            # The message written depends on `merged`, so XLA reads the old one before it
            # overwrites it in place (otherwise it copies the whole buffer every step).
            write = active & ~merged
            msgs = jax.lax.dynamic_update_index_in_dim(
                msgs, jnp.where(write[:, None], m, old), j, axis=0
            )
            # A merged message can follow a different normalizer: write it when active.
            old_sc = jax.lax.dynamic_index_in_dim(scal, j, axis=0, keepdims=False)
            scal = jax.lax.dynamic_update_index_in_dim(
                scal, jnp.where(active, sc, old_sc), j, axis=0
            )
            return i + 1, carry, write, msgs, scal

        _, _, _, msgs, scal = jax.lax.while_loop(row_cond, row_body, (0, new, active, msgs, scal))
        return n + 1, new, msgs, scal

    n, _, msgs, scal = jax.lax.while_loop(fix_cond, fix_body, (1, start, msgs, scal))
    return msgs, scal, n


class ChunkLayout(NamedTuple):
    """B sequences of T steps cut into C chunks of L steps: R = B * C rows (the last
    chunk of each sequence padded), stored time-major (L, R, ...) so that one step of
    every row is contiguous (the recursions read and write one step at a time).

    ``ChunkLayout.of(T, B, K, chunk_size=None)`` picks L (:func:`default_chunk_size`);
    ``rows_of(z, fill)`` puts a (B, T, ...) array in the layout, ``unchunk`` takes it
    back, and ``starts()`` gives each sequence's first step in the flattened rows."""

    num_steps: int
    num_sequences: int
    length: int
    num_chunks: int

    @classmethod
    def of(cls, num_steps, num_sequences, num_states, chunk_size=None):
        length = (
            default_chunk_size(num_steps, num_sequences, num_states)
            if chunk_size is None
            else max(int(chunk_size), 1)
        )
        length = min(length, max(num_steps, 1))
        num_chunks = -(-num_steps // length) if num_steps else 1
        return cls(num_steps, num_sequences, length, num_chunks)

    @property
    def rows(self):
        return self.num_sequences * self.num_chunks

    def rows_of(self, z, fill):
        """(B, T, ...) -> (L, R, ...), padding with ``fill``."""
        pad = self.num_chunks * self.length - self.num_steps
        widths = ((0, 0), (0, pad)) + ((0, 0),) * (z.ndim - 2)
        z = jnp.pad(z, widths, constant_values=fill).reshape((self.rows, self.length) + z.shape[2:])
        return jnp.swapaxes(z, 0, 1)

    def starts(self):
        """Where each sequence's first step lies in ``rows_of(z).reshape(L * R, ...)``."""
        return jnp.arange(self.num_sequences) * self.num_chunks

    def unchunk(self, z):
        """(L, R, ...) -> (B, T, ...)."""
        b, t = self.num_sequences, self.num_steps
        z = jnp.swapaxes(z, 0, 1)
        return z.reshape((b, self.num_chunks * self.length) + z.shape[2:])[:, :t]


def _chunked_forward(initial_probs, a, lik_r, layout: ChunkLayout, tol):
    """The forward half of the chunked smoother: normalizers (L, R) and filtered
    probabilities (L, R, K) of every chunk row, from per-sequence initial_probs (B, K)
    and chunked shifted likelihoods ``lik_r`` (L, R, K) (``ChunkLayout.rows_of``)."""
    rows, k = layout.rows, a.shape[-1]
    dtype = lik_r.dtype
    chunk = jnp.arange(rows) % layout.num_chunks
    uniform = jnp.full((rows, k), 1.0 / k, dtype)
    start = jnp.repeat(initial_probs, layout.num_chunks, axis=0)

    def forward(pred, j):
        w = pred * jax.lax.dynamic_index_in_dim(lik_r, j, axis=0, keepdims=False)
        c = jnp.sum(w, axis=-1)
        f = w / jnp.where(c > 0, c, jnp.ones((), dtype))[:, None]
        return f, c, _mm(f, a)

    filtered, c, _ = _chunked_recursion(
        forward,
        (chunk == 0, start),
        uniform,
        lambda f: _mm(f, a),
        layout.num_chunks,
        layout.length,
        False,
        tol,
    )
    return c, filtered


def hmm_smoother_chunked(
    initial_probs: jax.Array,
    transition_matrix: jax.Array,
    log_likelihoods: jax.Array,
    mask: jax.Array | None = None,
    *,
    chunk_size: int | None = None,
    tol: float | None = None,
) -> HMMPosterior:
    r""":func:`hmm_smoother` of a batch, with time cut into chunks run in parallel.

    Each sequence is cut into C chunks of L steps (the last one padded). The forward
    message entering chunk c is the one leaving chunk c - 1, so all chunks are
    filtered at once from guessed entering messages (the initial distribution for the
    first chunk, uniform for the others), and then every chunk whose entering message
    was wrong is rerun from the right one until its messages merge with the stored
    ones (see ``_chunked_recursion``); repeated until no entering message changes. The
    backward messages follow by the same scheme in reverse (a chunk that ends a
    sequence is exact at once), and the posteriors, transition counts and
    log-likelihood by the same contraction as :func:`hmm_smoother`.

    The result is exact: the fix-ups stop only when every entering message equals
    (to ``tol``, relative, per entry) the one leaving the chunk before, and at most
    C - 1 rounds are run (after round n the first n + 1 chunks are exact whatever the
    model). HMM filters forget their start geometrically (a contraction in Hilbert's
    projective metric when A has positive entries), so the usual cost is one sweep of
    L steps over B * C rows plus a few dozen steps of fix-up, instead of T sequential
    steps; a sticky, nearly reducible chain needs more rounds, and costs up to T steps.

    Args:
        initial_probs: (K,) p(z_1).
        transition_matrix: (K, K).
        log_likelihoods: (B, T, K) (any number of leading batch axes, or none).
        mask: (B, T) prefix masks, or None.
        chunk_size: L; None picks :func:`default_chunk_size`. L >= T runs the
            sequential recursion (one chunk).
        tol: relative tolerance of the merge test (default 8 float eps of the dtype).

    Returns:
        An :class:`HMMPosterior` with the leading batch axes (``expected_transitions``
        per sequence), equal to ``jax.vmap(hmm_smoother)`` to rounding.

    Example:
        >>> pi = jnp.array([0.5, 0.5]); A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
        >>> ll = jnp.log(jnp.array([[[0.5, 0.1], [0.5, 0.1], [0.1, 0.9]]] * 2))
        >>> post = hmm_smoother_chunked(pi, A, ll, chunk_size=2)
        >>> post.smoothed_probs.shape, post.expected_transitions.shape
        ((2, 3, 2), (2, 2, 2))
    """
    log_likelihoods = jnp.asarray(log_likelihoods)
    *batch, num_steps, k = log_likelihoods.shape
    valid = jnp.broadcast_to(
        jnp.ones(log_likelihoods.shape[:-1], bool) if mask is None else jnp.asarray(mask, bool),
        log_likelihoods.shape[:-1],
    )
    ll = log_likelihoods.reshape((-1, num_steps, k))
    valid = valid.reshape((-1, num_steps))
    lik, shift = _shifted_likelihoods(
        jnp.where(valid[..., None], ll, jnp.zeros((), ll.dtype)), initial_probs, transition_matrix
    )
    post = hmm_smoother_from_likelihoods(
        initial_probs,
        transition_matrix,
        lik,
        shift,
        valid,
        method="chunked",
        chunk_size=chunk_size,
        tol=tol,
    )
    return jax.tree.map(lambda z: z.reshape(tuple(batch) + z.shape[1:]), post)


def _chunked_messages(pi, a, lik_r, valid_r, layout: ChunkLayout, tol):
    """The two loops of :func:`hmm_smoother_chunked` over a batch of shifted
    likelihoods and masks in the chunks' layout (``ChunkLayout.rows_of``: (L, R, K),
    1 on padded steps, and (L, R)): (whether each step has a valid next step in its
    sequence (L, R), normalizers (L, R), filtered probabilities (L, R, K), backward
    messages normalized to sum 1, their normalizers)."""
    b, k = layout.num_sequences, a.shape[-1]
    dtype = lik_r.dtype
    length, num_chunks, rows = layout.length, layout.num_chunks, layout.rows
    if tol is None:
        tol = 8 * float(jnp.finfo(dtype).eps)
    chunk = jnp.arange(rows) % num_chunks
    pi_b = jnp.broadcast_to(pi, (b, k)).astype(dtype)
    c, filtered = _chunked_forward(pi_b, a, lik_r, layout, tol)

    # Backward: beta_t = A v_{t+1} / s_t with v_{t+1} = lik_{t+1} * beta_{t+1}, carried
    # from step to step (so a step reads only its own likelihood) and from the first
    # step of the next row at the end of a chunk; never across sequences (beta = 1
    # where step t + 1 is not a valid step of the same sequence).
    last_chunk = chunk == num_chunks - 1
    next_valid = jnp.roll(valid_r[0], -1, axis=0) & ~last_chunk
    has_next = jnp.concatenate([valid_r[1:], next_valid[None]], axis=0)
    ones = jnp.ones((rows, k), dtype)

    def backward(v_next, j):
        u = _mm(v_next, a.T)
        s = jnp.sum(u, axis=-1, keepdims=True)
        beta = u / jnp.where(s > 0, s, jnp.ones((), dtype))
        beta = jnp.where(
            jax.lax.dynamic_index_in_dim(has_next, j, keepdims=False)[:, None], beta, ones
        )
        return beta, s[:, 0], jax.lax.dynamic_index_in_dim(lik_r, j, keepdims=False) * beta

    betas, s, _ = _chunked_recursion(
        backward,
        (last_chunk, ones),
        ones,
        lambda beta: lik_r[0] * beta,
        num_chunks,
        length,
        True,
        tol,
    )

    return has_next, c, filtered, betas, s


def chunked_statistics(
    initial_probs, transition_matrix, likelihoods, shifts, mask, layout: ChunkLayout, *, tol=None
):
    """The EM E-step's sums from the chunked smoother, in the chunks' own layout.

    The inputs are those of :func:`hmm_smoother_from_likelihoods` already in
    ``layout`` (``layout.rows_of`` of the (B, T) arrays: likelihoods (L, R, K), shifts
    and mask (L, R)), so that the emission likelihoods can be computed there directly
    and no (B, T, K) array is transposed on the way in or out (the sums below need no
    particular order of the steps).

    Returns:
        (log p(x) per sequence (B,), initial counts (K,), transition counts (K, K) summed
        over sequences, posteriors (L * R, K), 0 on padded steps): to rounding the values
        of :func:`hmm_smoother_chunked` summed over sequences, with the posteriors in the
        order of ``layout.rows_of(x).reshape(L * R, ...)``.

    Example:
        >>> pi = jnp.array([0.5, 0.5]); A = jnp.array([[0.9, 0.1], [0.2, 0.8]])
        >>> lik = jnp.array([[[1.0, 0.2], [1.0, 0.2], [0.1, 1.0]]] * 2)  # (B, T, K)
        >>> layout = ChunkLayout.of(3, 2, 2, chunk_size=2)
        >>> rows = layout.rows_of
        >>> out = chunked_statistics(pi, A, rows(lik, 1.0), rows(jnp.zeros((2, 3)), 0.0),
        ...                          rows(jnp.ones((2, 3), bool), False), layout)
        >>> ref = hmm_smoother_chunked(pi, A, jnp.log(lik), chunk_size=2)
        >>> bool(jnp.allclose(out[2], ref.expected_transitions.sum(0)))
        True
    """
    lik = jnp.asarray(likelihoods)
    k = lik.shape[-1]
    valid = jnp.asarray(mask, bool)
    lik, shift = _neutral_padding(lik, shifts, valid)
    pi = jnp.asarray(initial_probs)
    a = jnp.asarray(transition_matrix)
    has_next, c, filtered, betas, s = _chunked_messages(pi, a, lik, valid, layout, tol)

    def to_next(z):  # step t + 1 of (L, R, ...): the next row's first step after a row's last
        return jnp.concatenate([z[1:], jnp.roll(z[:1], -1, axis=1)], axis=0)

    log_c, smoothed, w = _smoothed_and_weights(
        lik, shift, valid, has_next, to_next, c, filtered, betas, s
    )
    counts = a * _sum_of_outer_products(filtered.reshape(-1, k), w.reshape(-1, k), 4096)
    first = smoothed[0].reshape(layout.num_sequences, layout.num_chunks, k)[:, 0]
    return (
        pairwise_sum(layout.unchunk(log_c)),
        jnp.sum(first, axis=0),
        counts,
        smoothed.reshape(-1, k),
    )


# ------------------------------------------------------- filters of a whole batch
FILTER_METHODS = ("sequential", "chunked", "parallel")


def hmm_filter_batch(
    initial_probs: jax.Array,
    transition_matrix: jax.Array,
    log_likelihoods: jax.Array,
    mask: jax.Array | None = None,
    *,
    method: str = "sequential",
    chunk_size: int | None = None,
    group_size: int | None = None,
) -> HMMFilterResult:
    r"""Forward filter of a batch of sequences by one of three exact paths.

    * ``"sequential"``: the scaled recursion of :func:`hmm_filter`, T steps per
      sequence (vmapped over the batch).
    * ``"chunked"``: time cut into chunks filtered all at once from guessed entering
      messages, then fixed up until exact (the forward half of
      :func:`hmm_smoother_chunked`): about L + F sequential steps instead of T (F: the
      steps the filter takes to forget its start). Its fix-up loops cannot be
      reverse-differentiated, so under ``jax.grad`` it runs the sequential filter and
      its reverse pass (a custom VJP): the same values, and no slower than
      ``"sequential"`` when differentiated.
    * ``"parallel"``: an associative scan over the normalised K x K operators
      :math:`M_t = \mathrm{diag}(\ell_t) A` (Hassan, Sarkka and Garcia-Fernandez 2021):
      the predictive message is the first row of the prefix product
      :math:`1 (\pi \odot \ell_1)^\top A\, M_2 \cdots M_t`, renormalised after each
      product so it never under- or overflows; depth O(log T), work O(T K^3), memory
      a few T K^2 per sequence (:func:`probseq.auto.parallel_filter_bytes`).
      Each step's normaliser :math:`c_t = p_{t|t-1} \cdot \ell_t` is then computed
      directly, not as a difference of cumulative sums, so per-step terms keep full
      relative precision on long sequences.

    The three agree to rounding (tests/test_hmm_filters.py: float32 1e-5 relative in
    values and gradients). Which one ``"auto"`` picks: :func:`probseq.auto.choose_hmm_filter`.

    Args:
        initial_probs: (K,) p(z_1), or (B, K) one per sequence (continuing a stream).
        transition_matrix: (K, K), or (B, T, K, K) with A_t the transition out of step t
            of each sequence (an input-driven HMM; ``"sequential"`` only).
        log_likelihoods: (B, T, K) log p(x_t | z_t = k).
        mask: (B, T) prefix masks or None; padded steps give 0 / zero rows.
        method: one of :data:`FILTER_METHODS`.
        chunk_size: the chunked path's chunk length (None: :func:`default_chunk_size`).
        group_size: the parallel path runs this many sequences at a time (None: all),
            which bounds its memory.

    Returns:
        An :class:`HMMFilterResult` with a leading batch axis: marginal_loglik (B,),
        log_normalizers (B, T), predicted_probs and filtered_probs (B, T, K).
    """
    if method not in FILTER_METHODS:
        raise ValueError(f"method must be one of {FILTER_METHODS}, got {method!r}")
    ll = jnp.asarray(log_likelihoods)
    b, num_steps, k = ll.shape
    a = jnp.asarray(transition_matrix)
    pi = jnp.broadcast_to(jnp.asarray(initial_probs, ll.dtype), (b, k))
    valid = jnp.ones((b, num_steps), bool) if mask is None else jnp.asarray(mask, bool)
    ll = jnp.where(valid[..., None], ll, jnp.zeros((), ll.dtype))
    if a.ndim == 4 and (method != "sequential" or a.shape != (b, num_steps, k, k)):
        raise ValueError(
            "a transition matrix per step must be (B, T, K, K) = "
            f"{(b, num_steps, k, k)} (got {a.shape}) and takes method='sequential' (got "
            f"{method!r})."
        )
    if method == "sequential":
        log_c, filtered = _filter_sequential(pi, a, ll)
    elif method == "chunked":
        log_c, filtered = _filter_chunked(pi, a, ll, chunk_size)
    else:
        log_c, filtered = _filter_parallel(pi, a, ll, group_size)
    zero = jnp.zeros((), filtered.dtype)
    log_c = jnp.where(valid, log_c, zero)
    predicted = jnp.concatenate([pi[:, None], _after(filtered, a)], axis=1)
    keep = valid[..., None]
    return HMMFilterResult(
        pairwise_sum(log_c),
        log_c,
        jnp.where(keep, predicted, zero),
        jnp.where(keep, filtered, zero),
    )


def _filter_sequential(pi, a, ll):
    """(log c (B, T), filtered (B, T, K)) by the scaled recursion, per sequence."""

    def one(p, a, lls):
        lik, shift = _shifted_likelihoods(lls, p, a)
        c, filtered = _forward(p, a, lik)
        return jnp.log(c) + shift, filtered

    return jax.vmap(one, in_axes=(0, 0 if a.ndim == 4 else None, 0))(pi, a, ll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _filter_chunked(pi, a, ll, chunk_size):
    b, num_steps, k = ll.shape
    lik, shift = _shifted_likelihoods(ll, pi, a)
    layout = ChunkLayout.of(num_steps, b, k, chunk_size)
    tol = 8 * float(jnp.finfo(lik.dtype).eps)
    c, filtered = _chunked_forward(pi, a, layout.rows_of(lik, 1.0), layout, tol)
    return jnp.log(layout.unchunk(c)) + shift, layout.unchunk(filtered)


def _filter_chunked_fwd(pi, a, ll, chunk_size):
    # Differentiated (fit_sgd, NUTS): the sequential recursion, whose values equal the
    # chunked ones to the merge tolerance, and its reverse pass. A reverse pass needs
    # every step's message anyway, so chunking would only add work here.
    values, vjp = jax.vjp(_filter_sequential, pi, a, ll)
    return values, vjp


def _filter_chunked_bwd(chunk_size, vjp, cotangents):
    return vjp(cotangents)


_filter_chunked.defvjp(_filter_chunked_fwd, _filter_chunked_bwd)


def _normalize_operator(m):
    """Scale (..., K, K) operators to maximum entry 1 (all-zero ones stay 0)."""
    top = jnp.max(m, axis=(-2, -1), keepdims=True)
    return m / jnp.where(top > 0, top, jnp.ones((), m.dtype))


def _normalize_rows(w):
    """Rows (..., K) scaled to sum 1 (all-zero rows stay 0, never NaN)."""
    c = jnp.sum(w, axis=-1, keepdims=True)
    return w / jnp.where(c > 0, c, jnp.ones((), c.dtype))


def _filter_parallel(pi, a, ll, group_size):
    k = a.shape[-1]

    def one(inputs):
        p, lls = inputs
        lik, shift = _shifted_likelihoods(lls, p, a)
        ops = lik[:, :, None] * a  # M_t = diag(l_t) A
        # The first operator carries p(z_1): every row is (pi * l_1) A, so the first
        # row of any prefix product is the (unnormalised) predictive message.
        first = jnp.broadcast_to(_mm(p * lik[0], a), (k, k))
        ops = _normalize_operator(ops.at[0].set(first))
        prefix = jax.lax.associative_scan(lambda x, y: _normalize_operator(_mm(x, y)), ops)
        # Only the direction of p(z_t | x_<t) comes from the products: the filtered
        # message is scale-free, and the predictive one is then filtered @ A, as in the
        # sequential recursion, so values and gradients are the same function of
        # (pi, A, log-likelihoods), on and off the simplex.
        direction = jnp.concatenate([p[None], prefix[:-1, 0, :]])
        filtered = _normalize_rows(direction * lik)
        predicted = jnp.concatenate([p[None], _mm(filtered[:-1], a)])
        return jnp.log(jnp.sum(predicted * lik, axis=-1)) + shift, filtered

    b = pi.shape[0]
    if group_size is None or group_size >= b:
        return jax.vmap(lambda p, lls: one((p, lls)))(pi, ll)
    return jax.lax.map(one, (pi, ll), batch_size=max(int(group_size), 1))


def hmm_filter_parallel(
    initial_probs: jax.Array, transition_matrix: jax.Array, log_likelihoods: jax.Array
) -> HMMFilterResult:
    """:func:`hmm_filter` of one sequence (T, K) by the associative scan of
    :func:`hmm_filter_batch` (``method="parallel"``): the same values, O(log T) depth."""
    res = hmm_filter_batch(
        initial_probs, transition_matrix, jnp.asarray(log_likelihoods)[None], method="parallel"
    )
    return jax.tree.map(lambda z: z[0], res)


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
        transition_matrix: (K, K) with A[i, j] = p(z_{t+1} = j | z_t = i), or (T, K, K)
            with A_t the transition out of step t (an input-driven HMM).
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

    per_step = log_a.ndim == 3

    def step(delta, inputs):
        ll, is_valid = inputs[:2]
        scores = delta[:, None] + (inputs[2] if per_step else log_a)
        pointers = jnp.argmax(scores, axis=0).astype(jnp.int32)
        new = shift(jnp.max(scores, axis=0) + ll)
        delta = jnp.where(is_valid, new, delta)
        pointers = jnp.where(is_valid, pointers, jnp.arange(num_states, dtype=jnp.int32))
        return delta, pointers

    delta0 = shift(_log(jnp.asarray(initial_probs)) + log_likelihoods[0])
    xs = (log_likelihoods[1:], valid[1:]) + ((log_a[:-1],) if per_step else ())
    delta, pointers = jax.lax.scan(step, delta0, xs)
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
        transition_matrix: (K, K) with A[i, j] = p(z_{t+1} = j | z_t = i), or (T, K, K)
            with A_t the transition out of step t (an input-driven HMM).
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
    (T, K) of :func:`hmm_masked_filter` (filter once, then draw many paths); A is (K, K)
    or (T, K, K) per step (A_t the transition out of step t)."""
    valid = jnp.asarray(mask, bool)
    log_alpha = _log(filtered_probs)
    log_a = _log(jnp.asarray(transition_matrix))
    has_next = jnp.concatenate([valid[1:], jnp.zeros((1,), bool)])
    # Step t draws with fold_in(key, t): the same key gives the same states on the
    # valid steps however much padding follows.
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(filtered_probs.shape[0]))

    per_step = log_a.ndim == 3

    def step(z_next, inputs):
        k, log_alpha_t, has_next_t, is_valid = inputs[:4]
        log_a_t = inputs[4] if per_step else log_a
        logits = log_alpha_t + jnp.where(has_next_t, log_a_t[:, z_next], 0.0)
        z = jax.random.categorical(k, logits).astype(jnp.int32)
        return z, jnp.where(is_valid, z, -jnp.ones((), jnp.int32))

    xs = (keys, log_alpha, has_next, valid) + ((log_a,) if per_step else ())
    _, states = jax.lax.scan(step, jnp.zeros((), jnp.int32), xs, reverse=True)
    return states


# ------------------------------------------------------- impossible data (prob. 0)
@jax.jit
def _first_impossible(initial_probs, transition_matrix, log_likelihoods, valid):
    """(B,) the first valid step of each sequence that no state can reach and emit
    (a boolean forward recursion over supports, exact: no rounding), or -1.

    initial_probs (K,) or (B, K); transition_matrix (K, K), (T, K, K) or (B, T, K, K)
    (never broadcast to the batch: a (B, T, K, K) copy of one matrix would be the
    largest array of a fit); log_likelihoods (B, T, K); valid (B, T)."""
    num_seq, _, num_states = log_likelihoods.shape
    pi = jnp.broadcast_to(initial_probs > 0, (num_seq, num_states))
    a = (jnp.asarray(transition_matrix) > 0).astype(jnp.float32)
    emits = log_likelihoods > -jnp.inf  # NaN is not a possible step either

    def step(reach, inputs):
        e, a_t, v = inputs  # (B, K), None | (K, K) | (B, K, K), (B,)
        alive = reach & e
        possible = alive.any(axis=-1) | ~v
        f = alive.astype(jnp.float32)  # sums of 0/1 up to K: exact in float32
        a_t = a if a_t is None else a_t
        if a_t.ndim == 2:
            nxt = jnp.matmul(f, a_t, precision=EXACT)
        else:
            nxt = jnp.einsum("bi,bij->bj", f, a_t, precision=EXACT)
        return jnp.where(v[:, None], nxt > 0, reach), possible

    per_step = None if a.ndim == 2 else (a if a.ndim == 3 else jnp.swapaxes(a, 0, 1))
    xs = (jnp.swapaxes(emits, 0, 1), per_step, jnp.swapaxes(valid, 0, 1))
    _, possible = jax.lax.scan(step, pi, xs)  # (T, B)
    bad = ~possible.T
    return jnp.where(bad.any(axis=1), jnp.argmax(bad, axis=1), -1)


@functools.partial(jax.jit, static_argnums=0)
def _first_impossible_of(model, params, x, mask, inputs):
    """:func:`_first_impossible` of a padded batch under an HMM: one compiled call
    (the emission log-likelihoods are never materialised op by op)."""
    ll = jax.vmap(lambda xs: model.emission_log_likelihoods(params, xs))(x)
    a = model._transition(params, inputs)
    return _first_impossible(model.initial_state(params), a, ll, mask)


def _raise_first_impossible(first, batched: bool) -> None:
    first = np.asarray(jax.device_get(first))
    bad = np.flatnonzero(first >= 0)
    if bad.size == 0:
        return
    b, t = int(bad[0]), int(first[bad[0]])
    which = f"sequence {b}" if batched else "the sequence"
    more = f" ({bad.size} of {first.size} sequences are)" if batched and bad.size > 1 else ""
    raise ValueError(
        f"{which} has probability zero under these parameters: step {t} (0-based) is "
        f"impossible{more} - no state that the initial and transition probabilities "
        "allow there can emit it (structural zeros the data contradict). Start from "
        "parameters that give every sequence a positive probability (e.g. a small "
        "probability in place of each zero)."
    )


def check_possible(
    initial_probs, transition_matrix, log_likelihoods, mask=None, *, batched=None
) -> None:
    """Raise a ValueError when a sequence has probability zero under the parameters.

    A step is impossible when no state that the start and transition probabilities
    can reach there emits x_t (log-likelihood -inf): structural zeros, such as a
    left-to-right HMM's, that the data contradict. The filter, smoother and Viterbi
    would return rows of zeros or a path that looks valid, and EM would run at -inf.
    The user-facing entries call it before jit: ``HMM.filter`` / ``smoother`` /
    ``most_likely_states`` and ``fit_em`` (before its first iteration). The kernels
    here stay pure and keep their documented -inf / zero rows under jit, and
    ``log_prob`` keeps returning -inf (a probability, not an inference).

    Args:
        initial_probs: (K,) p(z_1).
        transition_matrix: (K, K), (T, K, K), or (B, T, K, K) for a batch.
        log_likelihoods: (T, K) one sequence or (B, T, K) a batch.
        mask: (T,) / (B, T) prefix mask, or None.
        batched: whether ``log_likelihoods`` has a batch axis (None: ndim == 3).

    Raises:
        ValueError: naming the first impossible sequence (in a batch) and its step.

    Example:
        >>> pi = jnp.array([1.0, 0.0]); A = jnp.array([[0.5, 0.5], [0.0, 1.0]])
        >>> ll = jnp.log(jnp.array([[0.0, 1.0], [1.0, 0.0]]))
        >>> check_possible(pi, A, ll)
        Traceback (most recent call last):
        ...
        ValueError: the sequence has probability zero under these parameters: step 0 ...
    """
    ll = jnp.asarray(log_likelihoods)
    batched = ll.ndim == 3 if batched is None else batched
    if not batched:
        ll = ll[None]
        transition_matrix = jnp.asarray(transition_matrix)
        if transition_matrix.ndim == 3:
            transition_matrix = transition_matrix[None]
        mask = None if mask is None else jnp.asarray(mask)[None]
    valid = jnp.ones(ll.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
    first = _first_impossible(jnp.asarray(initial_probs), jnp.asarray(transition_matrix), ll, valid)
    _raise_first_impossible(first, batched)


def check_model_data(model, params, x, mask=None, inputs=None) -> None:
    """:func:`check_possible` of a padded batch ``x`` (B, T, ...) under an HMM ``model``
    and ``params`` (its initial, transition and emission probabilities); ``inputs``
    (B, T, m) for an input-driven HMM. Called by ``fit_em`` before its first iteration.
    Under a trace (the values unknown) it checks nothing."""
    leaves = jax.tree.leaves((params, x, mask, inputs))
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return
    x = jnp.asarray(x)
    valid = jnp.ones(x.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
    _raise_first_impossible(_first_impossible_of(model, params, x, valid, inputs), True)
