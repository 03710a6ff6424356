r"""Decoding token sequences from any model: ancestral sampling, greedy, beam search.

Written once over the contract (``emission`` / ``update``), so every token model
decodes the same way: an unconditional one from its initial state, a conditional one
(:class:`probseq.Seq2Seq`, ...) from each source's state. Each search runs up to
``max_length`` steps; with ``eos`` a sequence ends with (and includes) its first
``eos`` token, and the steps after it are 0 (``lengths`` says where each ends).

* :func:`greedy`: :math:`y_t = \arg\max_y p(y \mid h_t)`.
* :func:`ancestral`: :math:`y_t \sim p(y \mid h_t)^{1/\tau}` (``temperature`` τ).
* :func:`beam_search`: keeps the ``beam_width`` best partial sequences by total
  log-probability, or with ``length_normalization=α`` by
  :math:`\log p(y_{1:n}) / n^\alpha` (Wu et al. 2016 use a similar penalty), where n
  counts the tokens including the final ``eos``. A finished beam competes with its
  frozen score. Beams come best first.

Every result holds the model's log-probability of each returned sequence (equal to
``probseq.log_prob`` on it, up to float rounding) and, for models with attention, the
weights behind each emitted token.

Example:
    >>> out = probseq.decoding.beam_search(model, params, 20, beam_width=4, source=src,
    ...                                    eos=1)  # doctest: +SKIP
    >>> out.sequences.shape  # (B, beam_width, 20)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from probseq import validation
from probseq.core import source_start_states, start_states

__all__ = ["DecodeResult", "BeamResult", "greedy", "ancestral", "beam_search"]


class DecodeResult(NamedTuple):
    """One decoded sequence per start (no batch axis for a single one).

    sequences: (B, L) int32 tokens, 0 after each sequence's end.
    lengths: (B,) tokens in each sequence (the ``eos`` included).
    log_probs: (B,) the model's log p of each sequence.
    attention: (B, L, S) the attention weights behind each token (0 after the end),
        or None for a model without attention.
    """

    sequences: jax.Array
    lengths: jax.Array
    log_probs: jax.Array
    attention: Any


class BeamResult(NamedTuple):
    """``beam_width`` sequences per start, best first.

    sequences: (B, k, L); lengths: (B, k); log_probs: (B, k) the model's log p;
    scores: (B, k) what the beams are ranked by (log_probs / lengths**α);
    attention: (B, k, L, S) or None.
    """

    sequences: jax.Array
    lengths: jax.Array
    log_probs: jax.Array
    scores: jax.Array
    attention: Any


# ------------------------------------------------------------------------ pieces
def _token_log_probs(model, params, h):
    """log p(y | h) for every token y: (V,)."""
    return model.emission(params, h).log_prob(jnp.arange(model.head.vocab_size))


def _weights(model, h):
    return model.attention_weights(h)


def _starts(model, params, source, source_mask):
    """(batched start states (B, ...), whether the caller passed a batch)."""
    validation.check_params(model, params)
    if not model.head.is_token:
        raise ValueError(f"decoding needs a token model (a categorical head); got {model!r}.")
    if source is not None or model.takes_source:
        return source_start_states(model, params, source, source_mask)
    return start_states(model, params, 1), False


def _check(max_length, eos, model):
    max_length = validation.check_int("max_length", max_length)
    if eos is not None:
        vocab = model.head.vocab_size
        if not isinstance(eos, int) or isinstance(eos, bool) or not 0 <= eos < vocab:
            raise ValueError(f"eos must be a token id in [0, {vocab}) or None; got {eos=}.")
    return max_length


def _unbatch(result, batched):
    return result if batched else jax.tree.map(lambda a: a[0], result)


# ----------------------------------------------------------- greedy / ancestral
@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _chain_kernel(model, params, states, max_length, eos, temperature, keys):
    def one(h, key):
        def step(carry, k):
            h, done, total, length = carry
            logp = _token_log_probs(model, params, h)
            if temperature == 0.0:
                tok = jnp.argmax(logp)
            else:
                tok = jax.random.categorical(k, logp / temperature)
            tok = tok.astype(jnp.int32)
            w = _weights(model, h)
            total = total + jnp.where(done, 0.0, logp[tok])
            length = length + (~done).astype(jnp.int32)
            out = jnp.where(done, 0, tok)
            w = None if w is None else jnp.where(done, 0.0, w)
            done = done | (tok == eos) if eos is not None else done
            h = model.update(params, h, tok)
            return (h, done, total, length), (out, w)

        dtype = jax.tree.leaves(params)[0].dtype
        init = (h, jnp.array(False), jnp.zeros((), dtype), jnp.zeros((), jnp.int32))
        (_, _, total, length), (toks, ws) = jax.lax.scan(
            step, init, jax.random.split(key, max_length)
        )
        return DecodeResult(toks, length, total, ws)

    return jax.vmap(one)(states, keys)


def greedy(model, params, max_length: int, *, source=None, source_mask=None, eos=None):
    """The most probable token at every step (temperature 0).

    Args:
        model, params: a token model (a conditional one needs ``source``).
        max_length: most tokens per sequence.
        source, source_mask: the source(s), as for :func:`probseq.log_prob`.
        eos: end-of-sequence token id: a sequence stops after it (None: never).

    Returns:
        A :class:`DecodeResult` (no batch axis for a single source).
    """
    max_length = _check(max_length, eos, model)
    states, batched = _starts(model, params, source, source_mask)
    num = jax.tree.leaves(states)[0].shape[0]
    keys = jax.random.split(jax.random.key(0), num)  # unused at temperature 0
    out = _chain_kernel(model, params, states, max_length, eos, 0.0, keys)
    return _unbatch(out, batched)


def ancestral(
    model, params, key, max_length: int, *, source=None, source_mask=None, eos=None,
    temperature: float = 1.0,
):  # fmt: skip
    """Ancestral sampling with ``eos`` handling: y_t ~ p(y | h_t) (tempered).

    ``log_probs`` are the model's (untempered) log-probabilities of the draws. Other
    arguments as for :func:`greedy`; ``key`` a PRNG key.
    """
    validation.check_key(key)
    max_length = _check(max_length, eos, model)
    if (
        not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or (temperature <= 0)
    ):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature=}")
    states, batched = _starts(model, params, source, source_mask)
    num = jax.tree.leaves(states)[0].shape[0]
    out = _chain_kernel(
        model, params, states, max_length, eos, float(temperature), jax.random.split(key, num)
    )
    return _unbatch(out, batched)


# -------------------------------------------------------------------- beam search
@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def _beam_kernel(model, params, states, max_length, beam_width, eos, alpha):
    vocab = model.head.vocab_size
    k = beam_width

    def one(h0):
        h = jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), h0)
        dtype = jax.tree.leaves(params)[0].dtype
        w0 = _weights(model, h0)
        neg = jnp.full((), -jnp.inf, dtype)
        carry = (
            h,
            jnp.where(jnp.arange(k) == 0, jnp.zeros((), dtype), neg),  # log p so far
            jnp.zeros((k,), jnp.int32),  # lengths
            jnp.zeros((k,), bool),  # done
            jnp.zeros((k, max_length), jnp.int32),
            None if w0 is None else jnp.zeros((k, max_length) + w0.shape, w0.dtype),
        )

        def step(carry, t):
            h, total, length, done, toks, attn = carry
            logp = jax.vmap(lambda s: _token_log_probs(model, params, s))(h)  # (k, V)
            cand = total[:, None] + logp
            stay = jnp.where(jnp.arange(vocab) == 0, total[:, None], neg)
            cand = jnp.where(done[:, None], stay, cand)
            new_len = jnp.broadcast_to((length + (~done))[:, None], (k, vocab))
            rank = cand if alpha == 0.0 else cand / new_len.astype(dtype) ** alpha
            rank_top, idx = jax.lax.top_k(rank.reshape(-1), k)
            parent, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
            was_done = done[parent]
            total = cand.reshape(-1)[idx]
            length = new_len.reshape(-1)[idx]
            toks = toks[parent].at[:, t].set(jnp.where(was_done, 0, tok))
            if attn is not None:
                w = jax.vmap(lambda s: _weights(model, s))(h)[parent]
                attn = attn[parent].at[:, t].set(jnp.where(was_done[:, None], 0.0, w))
            done = was_done | (tok == eos) if eos is not None else was_done
            h = jax.vmap(lambda s, y: model.update(params, s, y))(
                jax.tree.map(lambda a: a[parent], h), tok
            )
            return (h, total, length, done, toks, attn), rank_top

        carry, ranks = jax.lax.scan(step, carry, jnp.arange(max_length))
        _, total, length, _, toks, attn = carry
        return BeamResult(toks, length, total, ranks[-1], attn)

    return jax.vmap(one)(states)


def beam_search(
    model,
    params,
    max_length: int,
    *,
    beam_width: int,
    source=None,
    source_mask=None,
    eos=None,
    length_normalization: float = 0.0,
):
    """Beam search for the most probable sequences.

    Args:
        model, params: a token model (a conditional one needs ``source``).
        max_length: most tokens per sequence.
        beam_width: beams kept (at most the vocabulary size); 1 is greedy.
        source, source_mask: the source(s), as for :func:`probseq.log_prob`.
        eos: end-of-sequence token id (None: every beam has ``max_length`` tokens).
        length_normalization: α >= 0; beams are ranked by log p / length**α
            (0: by log p).

    Returns:
        A :class:`BeamResult`, beams best first (no batch axis for a single source).
    """
    max_length = _check(max_length, eos, model)
    beam_width = validation.check_int("beam_width", beam_width)
    if beam_width > model.head.vocab_size:
        raise ValueError(
            f"beam_width must be at most the vocabulary size {model.head.vocab_size}; got "
            f"{beam_width=}."
        )
    alpha = validation.check_nonnegative_float("length_normalization", length_normalization)
    states, batched = _starts(model, params, source, source_mask)
    out = _beam_kernel(model, params, states, max_length, beam_width, eos, float(alpha))
    return _unbatch(out, batched)
