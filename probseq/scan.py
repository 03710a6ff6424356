"""Scans shared by every family: linear recurrences (sequential or parallel) and an
accurate long sum.

``linear_recurrence`` solves ``h_t = a_t * h_{t-1} + b_t`` (elementwise, complex or
real) from a given ``h_0``, either with ``lax.scan`` or with
``lax.associative_scan``. The parallel path combines the pairs ``(a, b)`` with
``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)`` and applies the prefix products to
``h_0`` at the end, so a non-zero starting state is exact (public minGRU ports often
drop it).

``log_linear_recurrence`` solves the same recurrence with positive ``a_t, b_t`` given
as logarithms (minLSTM's log-space scan): the parallel path combines
``(log a, log b)`` pairs with ``logaddexp``, so products of many gates < 1 never
underflow; ``h_0`` of any sign enters linearly at the end.

``pairwise_sum`` adds long float32 sequences of per-step log-likelihoods with a
balanced tree: the rounding error grows like log2(T) instead of T, which keeps a
T = 1,000,000 HMM log-likelihood within 1e-6 relative of float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from probseq.validation import check_choice

__all__ = [
    "linear_recurrence",
    "log_linear_recurrence",
    "pairwise_sum",
    "resolve_scan_mode",
    "SCAN_MODES",
    "EXACT",
    "NEURAL",
]

SCAN_MODES = ("auto", "sequential", "parallel")

#: Precision of every contraction whose result is a probability, a likelihood or an
#: expected sufficient statistic (the HMM kernels, heads' mixtures and M-steps). XLA
#: runs float32 matmuls on recent NVIDIA GPUs at TF32-class precision by default
#: (measured on an H200: HMM log_prob 1.9e-6 relative error vs 1.2e-7 with HIGHEST;
#: a transition matrix after 2 EM iterations 1.8e-4 vs 1.6e-7). Stated per call, never
#: as a global setting. tests/test_precision.py inspects the jaxprs.
EXACT = jax.lax.Precision.HIGHEST

#: Precision of the neural layers' projections (RNN/LSTM/GRU cells, the LRU's and
#: MinGRU's input and output maps, the readout heads): XLA's fast default, as flax and
#: PyTorch use; their rounding does not compound through a recurrence of probabilities.
#: The LRU/MinGRU scans themselves are elementwise (no contraction).
NEURAL = jax.lax.Precision.DEFAULT


def resolve_scan_mode(mode: str) -> str:
    """'auto' -> 'parallel' on accelerators, 'sequential' on CPU (where
    associative_scan is measured 2-3x slower); other values pass through."""
    check_choice("scan", mode, SCAN_MODES)
    if mode == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "parallel"
    return mode


def linear_recurrence(a: jax.Array, b: jax.Array, h0: jax.Array, *, parallel: bool) -> jax.Array:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` for t = 1..T (time on axis 0).

    Args:
        a: (T, ...) multipliers, broadcastable against ``b``.
        b: (T, ...) additive terms.
        h0: (...) the state before the first step.
        parallel: use ``lax.associative_scan`` (O(log T) depth) instead of ``lax.scan``.

    Returns:
        (T, ...) array of h_1..h_T.
    """
    a = jnp.broadcast_to(a, b.shape)
    if not parallel:

        def step(h, ab):
            h = ab[0] * h + ab[1]
            return h, h

        return jax.lax.scan(step, h0, (a, b))[1]

    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a1 * a2, a2 * b1 + b2

    prod_a, acc_b = jax.lax.associative_scan(combine, (a, b))
    return prod_a * h0 + acc_b


def log_linear_recurrence(
    log_a: jax.Array, log_b: jax.Array, h0: jax.Array, *, parallel: bool
) -> jax.Array:
    """All states of ``h_t = a_t * h_{t-1} + b_t`` for positive ``a_t = exp(log_a)`` and
    ``b_t = exp(log_b)`` (time on axis 0), from any real ``h_0``.

    The parallel path is an associative scan in log space,
    ``(la1, lb1) o (la2, lb2) = (la1 + la2, logaddexp(la2 + lb1, lb2))``, which gives
    ``log prod a`` and ``log`` of the accumulated ``b``; then
    ``h_t = exp(log prod a) h_0 + exp(acc)``. The sequential path is the plain update.

    Args:
        log_a: (T, ...) log multipliers, broadcastable against ``log_b``.
        log_b: (T, ...) log additive terms (-inf: b = 0).
        h0: (...) the state before the first step.
        parallel: use ``lax.associative_scan`` instead of ``lax.scan``.

    Returns:
        (T, ...) array of h_1..h_T.
    """
    log_a = jnp.broadcast_to(log_a, log_b.shape)
    if not parallel:
        return linear_recurrence(jnp.exp(log_a), jnp.exp(log_b), h0, parallel=False)

    def combine(earlier, later):
        la1, lb1 = earlier
        la2, lb2 = later
        return la1 + la2, jnp.logaddexp(la2 + lb1, lb2)

    log_prod_a, log_acc_b = jax.lax.associative_scan(combine, (log_a, log_b))
    return jnp.exp(log_prod_a) * h0 + jnp.exp(log_acc_b)


def pairwise_sum(x: jax.Array, axis: int = -1) -> jax.Array:
    """Sum along ``axis`` by a balanced binary tree (error O(log n) ulps, not O(n))."""
    x = jnp.moveaxis(x, axis, -1)
    n = x.shape[-1]
    if n == 0:
        return jnp.zeros(x.shape[:-1], x.dtype)
    size = 1 << (n - 1).bit_length()
    if size != n:
        x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (size - n,), x.dtype)], axis=-1)
    while x.shape[-1] > 1:
        x = x[..., 0::2] + x[..., 1::2]
    return x[..., 0]
