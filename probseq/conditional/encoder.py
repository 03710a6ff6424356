r"""Encoders: a recurrent family run over a source sequence.

An :class:`Encoder` runs any recurrent family (RNN, LSTM, GRU, MinGRU, LRU) over a
source x_1..x_S (tokens or real vectors) and returns the per-step states and a summary:

.. math::  \overrightarrow{e}_s = f(\overrightarrow{e}_{s-1}, x_s), \quad
           \overleftarrow{e}_s = f'(\overleftarrow{e}_{s+1}, x_s), \quad
           e_s = [\overrightarrow{e}_s ; \overleftarrow{e}_s]

Bidirectional: a forward run and a run over the reversed valid prefix of each row
(``x_n, ..., x_1`` for a source of length n, whatever the padding after it), the
reversed run's outputs put back in source order and concatenated to the forward ones.
Stacked: layer l > 1 reads layer l - 1's (concatenated) states. The summary is the
top layer's forward state at the last valid step, with the backward state at the
first step. States at padded steps are exactly 0.

Example:
    >>> import jax, jax.numpy as jnp, probseq
    >>> enc = probseq.Encoder(probseq.GRU(vocab_size=10, hidden_size=8), bidirectional=True)
    >>> params = enc.init(jax.random.key(0))
    >>> out = enc.apply(params, jnp.array([3, 1, 4, 0]), jnp.array([True, True, True, False]))
    >>> out.states.shape, out.summary.shape
    ((4, 16), (16,))
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from probseq import validation
from probseq.core import param_dtype
from probseq.families.recurrent import RecurrentNetwork

__all__ = ["Encoder", "EncoderOutput", "as_encoder", "reverse_valid"]


class EncoderOutput(NamedTuple):
    """states: (S, output_size) per source step, 0 on padding; summary: (output_size,)."""

    states: jax.Array
    summary: jax.Array


def reverse_valid(a: jax.Array, length: jax.Array) -> jax.Array:
    """``a`` (S, ...) with its first ``length`` rows reversed and the rest in place.

    Its own inverse: applying it twice gives ``a`` back."""
    t = jnp.arange(a.shape[0])
    return a[jnp.where(t < length, length - 1 - t, t)]


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A recurrent family run over a source, one or both directions, stacked.

    Args:
        cell: the family of every run, built for the source's kind
            (``vocab_size=`` for tokens, ``obs_dim=`` for real vectors) with its own
            ``hidden_size`` (and ``num_layers``: depth inside one direction). Its
            readout head is not used (an encoder emits nothing).
        bidirectional: add a run over the reversed source (per row, its valid part).
        num_layers: stacked (bi)directional layers; layer l > 1 reads layer l - 1's
            states as real vectors.
    """

    cell: RecurrentNetwork
    bidirectional: bool = False
    num_layers: int = 1

    def __post_init__(self):
        if not isinstance(self.cell, RecurrentNetwork):
            raise ValueError(
                "Encoder(cell) needs a recurrent family (probseq.RNN, LSTM, GRU, MinGRU, "
                f"LRU) built for the source; got {type(self.cell).__name__}."
            )
        if self.cell.input_dim:
            raise ValueError(
                f"an encoder's cell reads only the source; got {self.cell!r} with input_dim="
                f"{self.cell.input_dim}."
            )
        if not isinstance(self.bidirectional, bool):
            raise ValueError(f"bidirectional must be True or False; got {self.bidirectional!r}.")
        object.__setattr__(self, "num_layers", validation.check_int("num_layers", self.num_layers))

    @property
    def head(self):
        """The head of the source's kind (what validates source sequences)."""
        return self.cell.head

    @property
    def input_dim(self) -> int:
        return 0

    @property
    def output_size(self) -> int:
        """Width of each per-step state and of the summary."""
        return self.cell.hidden_size * (2 if self.bidirectional else 1)

    def _layer(self, level: int) -> RecurrentNetwork:
        if level == 0:
            return self.cell
        return dataclasses.replace(
            self.cell, vocab_size=None, head=None, obs_dim=self.output_size, embed_size=None
        )

    def init(self, key, *, dtype=None):
        """{"layers": per layer {"forward": ..., "backward"?: ...}}: each run's family
        parameters without its (unused) readout."""
        dtype = param_dtype(dtype)
        keys = jax.random.split(key, self.num_layers)
        layers = []
        for level, k in enumerate(keys):
            model = self._layer(level)
            k_fwd, k_bwd = jax.random.split(k)
            names = ("forward", "backward") if self.bidirectional else ("forward",)
            runs = {}
            for name, kk in zip(names, (k_fwd, k_bwd), strict=False):
                p = model.init(kk, dtype=dtype)
                p.pop("head")
                runs[name] = p
            layers.append(runs)
        return {"layers": tuple(layers)}

    def apply(self, params, x, mask) -> EncoderOutput:
        """Encode one source: x (S, ...) with its (S,) prefix mask."""
        length = jnp.sum(mask)
        inp = x
        for level, runs in enumerate(params["layers"]):
            model = self._layer(level)
            outs = [_run(model, runs["forward"], inp)]
            if self.bidirectional:
                back = _run(model, runs["backward"], reverse_valid(inp, length))
                outs.append(reverse_valid(back, length))
            states = jnp.concatenate(outs, axis=-1)
            inp = jnp.where(mask[:, None], states, jnp.zeros((), states.dtype))
        last = jnp.maximum(length - 1, 0)
        h = self.cell.hidden_size
        summary = inp[last]
        if self.bidirectional:
            summary = jnp.concatenate([inp[last, :h], inp[0, h:]])
        return EncoderOutput(inp, summary)


def _run(model: RecurrentNetwork, params, xs) -> jax.Array:
    """Top-layer outputs (S, hidden_size) of one run of ``model`` from its initial state."""
    dtype = jax.tree.leaves(params["layers"])[0].dtype
    full = {**params, "head": {"bias": jnp.zeros((0,), dtype)}}
    return model.trajectory(full, model.initial_state(full), xs).features


def as_encoder(encoder) -> Encoder:
    """An :class:`Encoder` as given, or a bare family wrapped as a one-way encoder."""
    if isinstance(encoder, Encoder):
        return encoder
    if isinstance(encoder, RecurrentNetwork):
        return Encoder(encoder)
    raise ValueError(
        "encoder must be a probseq.Encoder or a recurrent family (probseq.GRU(...), ...); "
        f"got {type(encoder).__name__}."
    )
