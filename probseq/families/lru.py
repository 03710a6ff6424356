r"""Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting recurrent neural networks
for long sequences"), one residual block per layer:

.. math::
    \tilde x_t = \mathrm{LayerNorm}(z_t), \quad
    h_t = \lambda \odot h_{t-1} + \gamma \odot (B \tilde x_t), \quad
    y_t = \Re(C h_t) + D \odot \tilde x_t, \\
    o_t = \mathrm{GLU}(\mathrm{GELU}(y_t)) + z_t, \qquad
    \lambda = \exp(-e^{\nu} + i e^{\theta}), \quad \gamma = \sqrt{1 - |\lambda|^2}

with a complex diagonal state of size ``state_size``. ``|lambda|`` is initialised
uniformly on the ring [r_min, r_max] (uniform in area), the phase in [0, max_phase];
B and C are complex Gaussian (variance 1/(2 H) and 1/N), D standard normal. The
recurrence is linear, so a layer is solved by ``lax.scan`` or by
``lax.associative_scan`` (``scan="parallel"``), from any starting state.
GELU is the exact (erf) form; GLU(v) = (v W_a + b_a) * sigmoid(v W_b + b_b).

Example:
    >>> import jax, probseq
    >>> model = probseq.LRU(vocab_size=27, hidden_size=64, num_layers=2)
    >>> params = model.init(jax.random.key(0))
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from probseq import validation
from probseq.families.recurrent import RecurrentNetwork, dense_init, recurrent_spec
from probseq.families.registry import FRACTION, POSITIVE_INT, POSITIVE_NUMBER, choice
from probseq.scan import NEURAL, SCAN_MODES, linear_recurrence, resolve_scan_mode

__all__ = ["LRU"]

_LAYER_NORM_EPS = 1e-5


def _mm(a, b):
    """A projection of the block: XLA's fast default precision, stated (probseq.scan.NEURAL);
    the recurrence itself is elementwise."""
    return jnp.matmul(a, b, precision=NEURAL)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class LRU(RecurrentNetwork):
    """Deep LRU network.

    Args:
        state_size: size N of the complex recurrent state (default hidden_size).
        r_min, r_max: ring of initial eigenvalue moduli, 0 <= r_min < r_max <= 1.
        max_phase: initial eigenvalue phases are uniform in [0, max_phase].
        scan: "sequential", "parallel" (associative scan) or "auto" (parallel on
            accelerators, sequential on CPU, where it is faster).
        (others: see RecurrentNetwork)
    """

    state_size: int | None = None
    r_min: float = 0.4
    r_max: float = 0.99
    max_phase: float = 2 * math.pi
    scan: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        validation.check_choice("scan", self.scan, SCAN_MODES)
        if not 0.0 <= self.r_min < self.r_max <= 1.0:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got {self.r_min=}, {self.r_max=}")
        if not self.max_phase > 0:
            raise ValueError(f"max_phase must be > 0, got {self.max_phase=}")
        size = validation.check_int("state_size", self.state_size, allow_none=True)
        object.__setattr__(self, "state_size", size)

    @property
    def _state_size(self) -> int:
        return self.state_size or self.hidden_size

    def cell_init(self, key, in_size, dtype):
        h, n = self.hidden_size, self._state_size
        ks = jax.random.split(key, 9)
        u1 = jax.random.uniform(ks[0], (n,), dtype)
        u2 = jax.random.uniform(ks[1], (n,), dtype, minval=1e-4)
        r2 = u1 * (self.r_max**2 - self.r_min**2) + self.r_min**2
        nu_log = jnp.log(-0.5 * jnp.log(jnp.maximum(r2, 1e-8)))
        theta_log = jnp.log(self.max_phase * u2)
        gamma_log = 0.5 * jnp.log1p(-jnp.exp(-2.0 * jnp.exp(nu_log)))
        p = {}
        if in_size != h:
            p["in_proj"] = dense_init(ks[2], in_size, h, dtype)
        p.update(
            norm_scale=jnp.ones((h,), dtype),
            norm_bias=jnp.zeros((h,), dtype),
            nu_log=nu_log,
            theta_log=theta_log,
            gamma_log=gamma_log,
            b_re=jax.random.normal(ks[3], (h, n), dtype) / math.sqrt(2 * h),
            b_im=jax.random.normal(ks[4], (h, n), dtype) / math.sqrt(2 * h),
            c_re=jax.random.normal(ks[5], (n, h), dtype) / math.sqrt(n),
            c_im=jax.random.normal(ks[6], (n, h), dtype) / math.sqrt(n),
            d=jax.random.normal(ks[7], (h,), dtype),
            glu_kernel=dense_init(ks[8], h, 2 * h, dtype),
            glu_bias=jnp.zeros((2 * h,), dtype),
        )
        return p

    def cell_carry(self, p):
        return jnp.zeros((self._state_size,), jnp.result_type(p["d"].dtype, jnp.complex64))

    @staticmethod
    def _eigenvalues(p):
        return jnp.exp(jax.lax.complex(-jnp.exp(p["nu_log"]), jnp.exp(p["theta_log"])))

    def cell_project(self, p, x):
        z = _mm(x, p["in_proj"]) if "in_proj" in p else x
        mean = jnp.mean(z, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(z - mean), axis=-1, keepdims=True)
        xn = (z - mean) * jax.lax.rsqrt(var + _LAYER_NORM_EPS) * p["norm_scale"] + p["norm_bias"]
        gamma = jnp.exp(p["gamma_log"])
        bu = jax.lax.complex(_mm(xn, p["b_re"]), _mm(xn, p["b_im"])) * gamma
        return bu, xn, z

    def _output(self, p, h, xn, z):
        y = _mm(h.real, p["c_re"]) - _mm(h.imag, p["c_im"]) + p["d"] * xn
        v = _mm(jax.nn.gelu(y, approximate=False), p["glu_kernel"]) + p["glu_bias"]
        a, b = jnp.split(v, 2, axis=-1)
        return a * jax.nn.sigmoid(b) + z

    def cell_recur(self, p, h, pre):
        bu, xn, z = pre
        h = self._eigenvalues(p) * h + bu
        return h, self._output(p, h, xn, z)

    def layer_scan(self, p, h, pre):
        bu, xn, z = pre
        parallel = resolve_scan_mode(self.scan) == "parallel"
        hs = linear_recurrence(self._eigenvalues(p), bu, h, parallel=parallel)
        return hs, self._output(p, hs, xn, z)


SPEC = recurrent_spec(
    "lru",
    LRU,
    scan=choice(*SCAN_MODES),
    state_size=POSITIVE_INT,
    r_min=FRACTION,
    r_max=FRACTION,
    max_phase=POSITIVE_NUMBER,
)
