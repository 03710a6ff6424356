r"""GRU (Cho et al. 2014, PyTorch convention: the reset gate multiplies the
recurrent projection including its bias):

.. math::
    r = \sigma(x W_r + b_r + h U_r + c_r), \quad z = \sigma(x W_z + b_z + h U_z + c_z),\\
    n = \tanh(x W_n + b_n + r \odot (h U_n + c_n)), \quad h' = (1 - z) \odot n + z \odot h

Example:
    >>> import jax, probseq
    >>> model = probseq.GRU(obs_dim=3, hidden_size=32)
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

__all__ = ["GRU"]


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class GRU(RecurrentNetwork):
    """Gated recurrent unit network (gate order r, z, n)."""

    def cell_init(self, key, in_size, dtype):
        k1, k2 = jax.random.split(key)
        h = self.hidden_size
        return {
            "w_ih": dense_init(k1, in_size, 3 * h, dtype),
            "b_ih": jnp.zeros((3 * h,), dtype),
            "w_hh": recurrent_init(k2, h, 3, dtype),
            "b_hh": jnp.zeros((3 * h,), dtype),
        }

    def cell_carry(self, p):
        return jnp.zeros((self.hidden_size,), p["b_ih"].dtype)

    def cell_project(self, p, x):
        return x @ p["w_ih"] + p["b_ih"]

    def cell_recur(self, p, h, pre):
        xr, xz, xn = jnp.split(pre, 3, axis=-1)
        hr, hz, hn = jnp.split(h @ p["w_hh"] + p["b_hh"], 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h = (1.0 - z) * n + z * h
        return h, h


SPEC = recurrent_spec("gru", GRU)
