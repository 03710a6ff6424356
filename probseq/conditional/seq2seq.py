r"""Encoder-decoder (sequence-to-sequence) models, with optional attention.

:class:`Seq2Seq` is a conditional sequence distribution in probseq's contract,

.. math::  p(y_{1:T} \mid x_{1:S}) = \prod_t p(y_t \mid h_t), \qquad
           h_1 = \mathrm{bridge}(\bar e), \quad
           s_{t+1} = f(s_t, y_t, c_t), \quad
           p(y_t \mid h_t) = \mathrm{head}([o_t ; c_t])

with e_1..e_S the encoder's states of the source, :math:`\bar e` its summary, s_t the
decoder's state (o_t its top-layer output) and c_t the attention context

.. math::  a_{tj} = \frac{\exp \mathrm{score}(o_t, e_j)}
                         {\sum_{k \le n} \exp \mathrm{score}(o_t, e_k)} \;(j \le n),
           \qquad c_t = \sum_j a_{tj} e_j

over the n valid source steps (a_{tj} = 0 exactly on padding). Scores:
``"additive"`` (Bahdanau et al. 2015) :math:`v^\top \tanh(W_q o_t + W_k e_j + b)`;
``"dot"`` (Luong et al. 2015) :math:`o_t \cdot (W_k e_j)` (Luong's "general" form:
a plain dot product would need equal widths). The context feeds the decoder's update
(its per-step input u_t: "input feeding") and its head. Without attention the decoder
sees the source only through its first state.

The bridge maps the summary to every leaf of the decoder's state:
``leaf = tanh(summary @ W + b)``, one (W, b) per leaf (every layer's carry and the
top-layer output, so p(y_1) depends on the source).

The state h_t (:class:`Seq2SeqState`) carries the encoder's states, so everything
written once over the contract works unchanged with ``source=``:
``probseq.log_prob(model, params, y, source=x)``, ``step_log_probs``, ``score``,
``sample``, ``fit_sgd``, ``compare``; :mod:`probseq.decoding` adds greedy and beam
search. Training is teacher forcing (the log-likelihood of the observed targets);
:class:`ScheduledSampling` wraps a model for scheduled sampling.

Example:
    >>> import jax, jax.numpy as jnp, probseq
    >>> model = probseq.Seq2Seq(probseq.GRU(vocab_size=10, hidden_size=16),
    ...                         probseq.GRU(vocab_size=12, hidden_size=16),
    ...                         attention="additive")
    >>> params = model.init(jax.random.key(0))
    >>> src, tgt = jnp.array([[1, 2, 3]]), jnp.array([[4, 5]])
    >>> probseq.log_prob(model, params, tgt, source=src).shape
    (1,)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from probseq import validation
from probseq.core import SequenceModel, Source, param_dtype
from probseq.families.recurrent import RecurrentNetwork, dense_init
from probseq.heads import NEURAL

from .encoder import Encoder, as_encoder

__all__ = ["Seq2Seq", "Seq2SeqState", "masked_softmax", "sequence_source"]

ATTENTION = (None, "additive", "dot")


class Seq2SeqState(NamedTuple):
    """h_t of a :class:`Seq2Seq`.

    decoder: the decoder family's state s_t.
    context: (C,) attention context c_t, or None without attention.
    weights: (S,) attention weights that made ``context`` (None without attention).
    memory: (S, C) encoder states (None without attention).
    keys: (S, A) the memory's projected attention keys (None without attention).
    source_mask: (S,) valid source steps (None without attention).
    """

    decoder: Any
    context: Any = None
    weights: Any = None
    memory: Any = None
    keys: Any = None
    source_mask: Any = None


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax over the entries where ``mask`` is True, exactly 0 elsewhere.

    NaN-free in value and gradient even for an all-False mask (then all zeros):
    masked entries never pass through ``exp``."""
    top = jnp.max(jnp.where(mask, scores, -jnp.inf), axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, jnp.zeros((), scores.dtype))
    e = jnp.where(mask, jnp.exp(jnp.where(mask, scores - top, 0.0)), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, jnp.ones((), total.dtype))


def sequence_source(encoder, source, source_mask) -> Source:
    """Validate a source of sequences for ``encoder`` (ValueError naming ``source``)."""
    batch = validation.prepare_batch(encoder, source, source_mask, name="source")
    return Source(batch.x, batch.mask, batch.batched)


def _check_decoder(decoder, what="decoder"):
    if not isinstance(decoder, RecurrentNetwork):
        raise ValueError(
            f"{what} must be a recurrent family (probseq.RNN, LSTM, GRU, MinGRU, LRU); "
            f"got {type(decoder).__name__}."
        )
    if decoder.input_dim:
        raise ValueError(
            f"the {what}'s per-step inputs are the attention context, which the model "
            f"sizes itself: build it with input_dim=0; got {decoder!r}."
        )


def widened(family: RecurrentNetwork, input_dim: int) -> RecurrentNetwork:
    """``family`` with ``input_dim`` per-step inputs (its head rebuilt from
    vocab_size / obs_dim when it was given that way)."""
    built = family.vocab_size is not None or family.obs_dim is not None
    head = None if built else family.head
    return dataclasses.replace(family, input_dim=input_dim, head=head)


def init_bridge(key, template, in_size: int, dtype) -> tuple:
    """One (kernel, bias) per leaf of the state ``template`` (real leaves only)."""
    leaves = jax.tree.leaves(template)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, leaf in zip(keys, leaves, strict=True):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(
                f"a bridge maps a summary to real state leaves; this decoder's state has a "
                f"{leaf.dtype} leaf of shape {leaf.shape} (use a real-state family)."
            )
        size = max(1, int(leaf.size))
        out.append(
            {"kernel": dense_init(k, in_size, size, dtype), "bias": jnp.zeros((size,), dtype)}
        )
    return tuple(out)


def apply_bridge(params, template, summary):
    """The state shaped like ``template`` with every leaf ``tanh(summary @ W + b)``."""
    leaves, treedef = jax.tree.flatten(template)
    new = [
        jnp.tanh(jnp.matmul(summary, p["kernel"], precision=NEURAL) + p["bias"])[: leaf.size]
        .reshape(leaf.shape)
        .astype(leaf.dtype)
        for p, leaf in zip(params, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, new)


@dataclasses.dataclass(frozen=True)
class Seq2Seq(SequenceModel):
    """Encoder-decoder p(y | x) with an optional attention (see the module docstring).

    Args:
        encoder: a :class:`probseq.Encoder` or a bare recurrent family (a one-way,
            one-layer encoder) built for the source's kind.
        decoder: a recurrent family built for the targets (``vocab_size=`` or
            ``obs_dim=`` or ``head=``), with ``input_dim=0``: the model widens its
            input to the attention context.
        attention: None, ``"additive"`` (Bahdanau) or ``"dot"`` (Luong).
        attention_size: width of the additive score's hidden layer (default: the
            decoder's hidden_size).
    """

    encoder: Encoder | RecurrentNetwork
    decoder: RecurrentNetwork
    attention: str | None = None
    attention_size: int | None = None

    takes_source = True

    def __post_init__(self):
        object.__setattr__(self, "encoder", as_encoder(self.encoder))
        _check_decoder(self.decoder)
        if self.attention not in ATTENTION:
            raise ValueError(
                f"attention must be None, 'additive' or 'dot'; got attention={self.attention!r}."
            )
        if self.attention_size is not None:
            size = validation.check_int("attention_size", self.attention_size)
            object.__setattr__(self, "attention_size", size)

    # ------------------------------------------------------------------ pieces
    @property
    def head(self):
        return self.decoder.head

    @property
    def context_size(self) -> int:
        """Width of the attention context (the encoder's output size), 0 without."""
        return self.encoder.output_size if self.attention else 0

    @property
    def inner_decoder(self) -> RecurrentNetwork:
        """The decoder as run: its per-step input widened by the context."""
        if not self.attention:
            return self.decoder
        return widened(self.decoder, self.context_size)

    def init(self, key, *, dtype=None):
        """{"encoder", "decoder", "bridge", "attention"?} parameters."""
        dtype = param_dtype(dtype)
        k_enc, k_dec, k_bridge, k_att = jax.random.split(key, 4)
        dec = self.inner_decoder
        params = {
            "encoder": self.encoder.init(k_enc, dtype=dtype),
            "decoder": dec.init(k_dec, dtype=dtype),
        }
        template = jax.eval_shape(dec.initial_state, params["decoder"])
        params["bridge"] = init_bridge(k_bridge, template, self.encoder.output_size, dtype)
        if self.attention:
            params["attention"] = self._init_attention(k_att, dtype)
        return params

    def _init_attention(self, key, dtype):
        c, h = self.encoder.output_size, self.decoder.hidden_size
        k1, k2, k3 = jax.random.split(key, 3)
        if self.attention == "dot":
            return {"w_key": dense_init(k1, c, h, dtype)}
        a = self.attention_size or h
        return {
            "w_query": dense_init(k1, h, a, dtype),
            "w_key": dense_init(k2, c, a, dtype),
            "bias": jnp.zeros((a,), dtype),
            "v": dense_init(k3, a, 1, dtype)[:, 0],
        }

    def attend(self, params, query, keys, memory, mask):
        """(context (C,), weights (S,)) for the decoder output ``query``."""
        p = params["attention"]
        if self.attention == "dot":
            scores = jnp.matmul(keys, query, precision=NEURAL)
        else:
            q = jnp.matmul(query, p["w_query"], precision=NEURAL)
            scores = jnp.matmul(jnp.tanh(keys + q), p["v"], precision=NEURAL)
        weights = masked_softmax(scores, mask)
        return jnp.matmul(weights, memory, precision=NEURAL), weights

    # ---------------------------------------------------------------- contract
    def prepare_source(self, source, source_mask, target_mask) -> Source:
        return sequence_source(self.encoder, source, source_mask)

    def source_state(self, params, source, source_mask) -> Seq2SeqState:
        enc = self.encoder.apply(params["encoder"], source, source_mask)
        dec = self.inner_decoder
        template = dec.initial_state(params["decoder"])
        s1 = apply_bridge(params["bridge"], template, enc.summary)
        if not self.attention:
            return Seq2SeqState(s1)
        p = params["attention"]
        keys = jnp.matmul(enc.states, p["w_key"], precision=NEURAL)
        if self.attention == "additive":
            keys = keys + p["bias"]
        context, weights = self.attend(params, s1.features, keys, enc.states, source_mask)
        return Seq2SeqState(s1, context, weights, enc.states, keys, source_mask)

    def initial_state(self, params):
        raise ValueError(
            f"{self!r} starts from its source: pass source= (the first state is "
            "model.source_state(params, source, source_mask))."
        )

    def emission(self, params, state, u=None):
        return self.inner_decoder.emission(params["decoder"], state.decoder, state.context)

    def update(self, params, state, x, u=None):
        s = self.inner_decoder.update(params["decoder"], state.decoder, x, state.context)
        if not self.attention:
            return state._replace(decoder=s)
        context, weights = self.attend(params, s.features, state.keys, state.memory,
                                       state.source_mask)  # fmt: skip
        return state._replace(decoder=s, context=context, weights=weights)

    def attention_weights(self, state):
        """The (S,) weights behind the context of ``state`` (None without attention)."""
        return state.weights

    # ------------------------------------------------------------ faster path
    def sequence_log_probs(self, params, state, xs, us=None):
        """Per-step log-likelihoods and states: without attention the decoder's own
        hoisted trajectory; with it one scan over (decoder step, attention) that
        keeps the encoder's states out of the stacked output (broadcast back at the
        end). Equal to the generic path (tested)."""
        dec = self.inner_decoder
        pd = params["decoder"]
        if not self.attention:
            lps, after = dec.sequence_log_probs(pd, state.decoder, xs)
            return lps, Seq2SeqState(after)

        def step(carry, x):
            s, c = carry
            s = dec.update(pd, s, x, c)
            c, w = self.attend(params, s.features, state.keys, state.memory, state.source_mask)
            return (s, c), (s, c, w)

        _, (after, contexts, weights) = jax.lax.scan(step, (state.decoder, state.context), xs)

        def before(first, rest):
            return jnp.concatenate([first[None], rest[:-1]], axis=0)

        feats = jnp.concatenate(
            [before(state.decoder.features, after.features), before(state.context, contexts)],
            axis=-1,
        )
        lps = jax.vmap(lambda f, x: dec.head.readout(pd["head"], f).log_prob(x))(feats, xs)
        num = xs.shape[0]

        def tile(a):
            return jnp.broadcast_to(a, (num,) + a.shape)

        return lps, Seq2SeqState(
            after,
            contexts,
            weights,
            tile(state.memory),
            tile(state.keys),
            tile(state.source_mask),
        )
