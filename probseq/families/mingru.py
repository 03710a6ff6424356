r"""MinGRU, the minimal gated unit of Feng et al. 2024 ("Were RNNs all we needed?"):
gates that do not look at the previous state, so the recurrence is linear in h,

.. math::
    z_t = \sigma(x_t W_z + b_z), \quad \tilde h_t = x_t W_h + b_h, \quad
    h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

and a whole layer is one linear recurrence ``h_t = a_t h_{t-1} + b_t``, solved with
``lax.scan`` or in parallel with ``lax.associative_scan`` (``scan="parallel"``), from
any starting state. The recurrence is solved in linear space (exact for both paths),
so the paper's positivity trick g(.) for log-space scans is not needed. Layers are
stacked: layer l+1 reads layer l's states.

Example:
    >>> import jax, probseq
    >>> model = probseq.MinGRU(vocab_size=27, hidden_size=64, num_layers=2, scan="parallel")
    >>> params = model.init(jax.random.key(0))
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from probseq import validation
from probseq.families.recurrent import RecurrentNetwork, dense_init, recurrent_spec
from probseq.families.registry import choice
from probseq.scan import NEURAL, SCAN_MODES, linear_recurrence, resolve_scan_mode

__all__ = ["MinGRU"]


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class MinGRU(RecurrentNetwork):
    """Minimal GRU network.

    Args:
        scan: "sequential", "parallel" (associative scan) or "auto" (parallel on
            accelerators, sequential on CPU, where it is faster).
        (others: see RecurrentNetwork)
    """

    scan: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        validation.check_choice("scan", self.scan, SCAN_MODES)

    def cell_init(self, key, in_size, dtype):
        k1, k2 = jax.random.split(key)
        h = self.hidden_size
        return {
            "w_z": dense_init(k1, in_size, h, dtype),
            "b_z": jnp.zeros((h,), dtype),
            "w_h": dense_init(k2, in_size, h, dtype),
            "b_h": jnp.zeros((h,), dtype),
        }

    def cell_carry(self, p):
        return jnp.zeros((self.hidden_size,), p["b_z"].dtype)

    def cell_project(self, p, x):
        # Projections at XLA's fast default precision, stated (probseq.scan.NEURAL); the
        # scan over time is elementwise.
        z = jax.nn.sigmoid(jnp.matmul(x, p["w_z"], precision=NEURAL) + p["b_z"])
        return 1.0 - z, z * (jnp.matmul(x, p["w_h"], precision=NEURAL) + p["b_h"])

    def cell_recur(self, p, h, pre):
        a, b = pre
        h = a * h + b
        return h, h

    def layer_scan(self, p, h, pre):
        a, b = pre
        hs = linear_recurrence(a, b, h, parallel=resolve_scan_mode(self.scan) == "parallel")
        return hs, hs


SPEC = recurrent_spec("mingru", MinGRU, scan=choice(*SCAN_MODES))
