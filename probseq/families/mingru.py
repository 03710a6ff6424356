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

from probseq.families.recurrent import (
    MinimalRecurrentNetwork,
    gate_init,
    gate_project,
    recurrent_spec,
)
from probseq.families.registry import choice
from probseq.scan import SCAN_MODES, linear_recurrence

__all__ = ["MinGRU"]

_GATES = ("z", "h")  # update gate, candidate


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class MinGRU(MinimalRecurrentNetwork):
    """Minimal GRU network.

    Args:
        scan: "sequential", "parallel" (associative scan) or "auto" (parallel on
            accelerators, sequential on CPU, where it is faster).
        (others: see RecurrentNetwork)
    """

    def cell_init(self, key, in_size, dtype):
        return gate_init(key, in_size, self.hidden_size, _GATES, dtype)

    def cell_project(self, p, x):
        # Projections at XLA's fast default precision (gate_project); the scan over time
        # is elementwise.
        k_z, h_tilde = gate_project(p, x, _GATES)
        z = jax.nn.sigmoid(k_z)
        return 1.0 - z, z * h_tilde

    def cell_recur(self, p, h, pre):
        a, b = pre
        h = a * h + b
        return h, h

    def layer_scan(self, p, h, pre):
        a, b = pre
        hs = linear_recurrence(a, b, h, parallel=self._parallel)
        return hs, hs


SPEC = recurrent_spec("mingru", MinGRU, scan=choice(*SCAN_MODES))
