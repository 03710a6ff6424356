r"""MinLSTM, the minimal LSTM of Feng et al. 2024 ("Were RNNs all we needed?"): gates
that do not look at the previous state, normalised so that they sum to one, and a
positive candidate state, so that a layer is a linear recurrence solvable in log space,

.. math::
    f_t = \sigma(x_t W_f + b_f), \quad i_t = \sigma(x_t W_i + b_i), \quad
    f'_t = \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t}, \\
    \tilde h_t = g(x_t W_h + b_h), \quad h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t,
    \qquad g(v) = \begin{cases} v + \tfrac12 & v \ge 0 \\ \sigma(v) & v < 0 \end{cases}

(the paper's log-space form: ``g`` keeps the candidate positive). The logarithms are
computed directly, ``log f' = -softplus(d)``, ``log i' = -softplus(-d)`` with
``d = softplus(-k_f) - softplus(-k_i)``, and ``log g(v)``, so the parallel path
(``scan="parallel"``) is an associative scan in log space
(:func:`probseq.scan.log_linear_recurrence`) and the sequential path the plain update;
both start from any state. Layers are stacked: layer l+1 reads layer l's states.

Example:
    >>> import jax, probseq
    >>> model = probseq.MinLSTM(vocab_size=27, hidden_size=64, num_layers=2, scan="parallel")
    >>> params = model.init(jax.random.key(0))
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from probseq.families.recurrent import (
    MinimalRecurrentNetwork,
    gate_init,
    gate_project,
    recurrent_spec,
)
from probseq.families.registry import choice
from probseq.scan import SCAN_MODES, log_linear_recurrence

__all__ = ["MinLSTM"]

_GATES = ("f", "i", "h")  # forget, input, candidate


def log_g(v: jax.Array) -> jax.Array:
    """log g(v): log(v + 1/2) for v >= 0, log sigmoid(v) = -softplus(-v) below."""
    return jnp.where(v >= 0, jnp.log(jax.nn.relu(v) + 0.5), -jax.nn.softplus(-v))


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class MinLSTM(MinimalRecurrentNetwork):
    """Minimal LSTM network.

    Args:
        scan: "sequential", "parallel" (associative scan in log space) or "auto"
            (parallel on accelerators, sequential on CPU, where it is faster).
        (others: see RecurrentNetwork)
    """

    def cell_init(self, key, in_size, dtype):
        return gate_init(key, in_size, self.hidden_size, _GATES, dtype)

    def cell_project(self, p, x):
        """(log f'_t, log i'_t + log g(h~_t)): the recurrence's log coefficients."""
        k_f, k_i, k_h = gate_project(p, x, _GATES)
        d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
        return -jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(k_h)

    def cell_recur(self, p, h, pre):
        log_a, log_b = pre
        h = jnp.exp(log_a) * h + jnp.exp(log_b)
        return h, h

    def layer_scan(self, p, h, pre):
        log_a, log_b = pre
        hs = log_linear_recurrence(log_a, log_b, h, parallel=self._parallel)
        return hs, hs


SPEC = recurrent_spec("minlstm", MinLSTM, scan=choice(*SCAN_MODES))
