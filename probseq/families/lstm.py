r"""LSTM (Hochreiter & Schmidhuber 1997, PyTorch gate order i, f, g, o):

.. math::
    [i, f, g, o] = x W_{ih} + b + h W_{hh}, \quad
    c' = \sigma(f) c + \sigma(i) \tanh(g), \quad h' = \sigma(o) \tanh(c')

The forget-gate bias starts at 1 (Jozefowicz et al. 2015).

Example:
    >>> import jax, probseq
    >>> model = probseq.LSTM(vocab_size=27, hidden_size=64)
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

__all__ = ["LSTM"]


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class LSTM(RecurrentNetwork):
    """Long short-term memory network; carry per layer is (h, c)."""

    def cell_init(self, key, in_size, dtype):
        k1, k2 = jax.random.split(key)
        h = self.hidden_size
        b = jnp.zeros((4 * h,), dtype).at[h : 2 * h].set(1.0)
        return {
            "w_ih": dense_init(k1, in_size, 4 * h, dtype),
            "w_hh": recurrent_init(k2, h, 4, dtype),
            "b": b,
        }

    def cell_carry(self, p):
        z = jnp.zeros((self.hidden_size,), p["b"].dtype)
        return (z, z)

    def cell_project(self, p, x):
        return x @ p["w_ih"] + p["b"]

    def cell_recur(self, p, carry, pre):
        h, c = carry
        i, f, g, o = jnp.split(pre + h @ p["w_hh"], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h


SPEC = recurrent_spec("lstm", LSTM)
