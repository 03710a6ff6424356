r"""Elman RNN: :math:`h' = \tanh(x W_{ih} + b + h W_{hh})`, stacked ``num_layers`` deep.

Example:
    >>> import jax, probseq
    >>> model = probseq.RNN(vocab_size=27, hidden_size=64, num_layers=2)
    >>> params = model.init(jax.random.key(0))
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from probseq.families.recurrent import (
    RecurrentNetwork,
    dense_init,
    recurrent_init,
    recurrent_spec,
)

__all__ = ["RNN"]


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class RNN(RecurrentNetwork):
    """Elman recurrent network with tanh units (see RecurrentNetwork for arguments)."""

    def cell_init(self, key, in_size, dtype):
        k1, k2 = jax.random.split(key)
        h = self.hidden_size
        return {
            "w_ih": dense_init(k1, in_size, h, dtype),
            "w_hh": recurrent_init(k2, h, 1, dtype),
            "b": jnp.zeros((h,), dtype),
        }

    def cell_carry(self, p):
        return jnp.zeros((self.hidden_size,), p["b"].dtype)

    def cell_project(self, p, x):
        return x @ p["w_ih"] + p["b"]

    def cell_recur(self, p, h, pre):
        h = jnp.tanh(pre + h @ p["w_hh"])
        return h, h


SPEC = recurrent_spec("rnn", RNN)
