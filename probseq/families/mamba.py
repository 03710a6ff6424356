r"""Mamba, the selective state-space block of Gu and Dao 2023 ("Linear-time Sequence
Modeling with Selective State Spaces"), one block per layer. With u_t the layer's
input, E = expand * hidden_size channels and a state of N per channel:

.. math::
    (x_t, z_t) = u_t W_{in}, \qquad
    c_t = \mathrm{SiLU}\Big(b_{conv} + \sum_{k=0}^{K-1} w_k \odot x_{t-K+1+k}\Big), \\
    (\delta_t, B_t, C_t) = c_t W_x, \qquad
    \Delta_t = \mathrm{softplus}(\delta_t W_\Delta + b_\Delta), \qquad A = -e^{A_{log}}, \\
    h_t = e^{\Delta_t \otimes A} \odot h_{t-1} + (\Delta_t \odot c_t) \otimes B_t, \qquad
    y_t = h_t C_t + D \odot c_t, \qquad
    o_t = (y_t \odot \mathrm{SiLU}(z_t))\, W_{out}

with a causal depthwise convolution of width K = ``conv_width`` (4), a low-rank
(``dt_rank``) step Delta per channel, and B_t, C_t (N,) shared by the channels; h_t is
(E, N). Everything but h is input-dependent only through c_t, so a layer is one linear
recurrence over (E, N): ``lax.scan`` (``scan="sequential"``) or ``lax.associative_scan``
over the pairs :math:`(e^{\Delta_t A}, \Delta_t c_t B_t)` (``"parallel"``); "auto"
takes the parallel scan on accelerators and the sequential one on CPU
(:func:`probseq.scan.resolve_scan_mode`).

The carried state of a layer is :class:`MambaCarry`: the ``conv_width - 1`` most recent
inputs x of the convolution (oldest first) and h. So a step-by-step ``update``
(sampling), a window of truncated BPTT that starts from a carried state, and the whole
sequence at once all compute the same function; before any input the window is zeros
(the reference's left padding).

Initialisation (the authors' ``mamba_simple.py``): A_log = log(1..N) in every channel
(S4D-real); D = 1; the Delta projection's weights uniform in
:math:`\pm r^{-1/2}` and its bias the inverse softplus of a step log-uniform on
[dt_min, dt_max] (floored at 1e-4), so softplus(b) starts there; convolution weights and
bias uniform in :math:`\pm K^{-1/2}` (PyTorch's Conv1d default); W_in, W_x and W_out
normal with variance 1 / fan-in (the house's dense init; the reference's are PyTorch's
uniform Linear default), no biases. The norm and residual path of the authors' full
block are not part of this cell.

The parallel scan holds (T, E, N) pairs per sequence and layer, and several temporaries
of that size (``chunk_size`` runs it over chunks, one after another, which bounds them
to (chunk_size, E, N)); the states after every step are (T, E, N) on either path (the
contract returns every state).

Example:
    >>> import jax, probseq
    >>> model = probseq.Mamba(vocab_size=27, hidden_size=64, state_size=16)
    >>> params = model.init(jax.random.key(0))
    >>> params["layers"][0]["A_log"].shape  # (E, N), E = 2 * 64
    (128, 16)
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from probseq import validation
from probseq.families.recurrent import RecurrentNetwork, dense_init, recurrent_spec
from probseq.families.registry import POSITIVE_INT, POSITIVE_NUMBER, Key, choice
from probseq.scan import NEURAL, SCAN_MODES, linear_recurrence, resolve_scan_mode

__all__ = ["Mamba", "MambaCarry"]

#: Smallest initial step (the reference's dt_init_floor).
DT_INIT_FLOOR = 1e-4


class MambaCarry(NamedTuple):
    """One Mamba layer's carried state: conv (conv_width - 1, E), the last inputs of
    the convolution, oldest first; ssm (E, N), the selective state h."""

    conv: jax.Array
    ssm: jax.Array


def _mm(a, b):
    """A projection of the block at XLA's fast default precision, stated
    (probseq.scan.NEURAL)."""
    return jnp.matmul(a, b, precision=NEURAL)


def _chunked_parallel(delta, dbx, bmat, a, h0, chunk_size):
    """All states of the selective recurrence by associative scans over chunks of
    ``chunk_size`` steps (None: one chunk), run one after another, each from the last
    state of the one before. The pairs and the scan's temporaries are then (chunk, E, N)
    at a time instead of (T, E, N); padding steps (a = 1, b = 0) keep the state."""
    t = delta.shape[0]

    def pairs(d, dx, b):
        return jnp.exp(d[..., None] * a), dx[..., None] * b[..., None, :]

    if chunk_size is None or chunk_size >= t:
        return linear_recurrence(*pairs(delta, dbx, bmat), h0, parallel=True)
    num = -(-t // chunk_size)
    pad = num * chunk_size - t

    def split(v):
        v = jnp.concatenate([v, jnp.zeros((pad,) + v.shape[1:], v.dtype)], axis=0)
        return v.reshape((num, chunk_size) + v.shape[1:])

    def chunk(h, inp):
        hs = linear_recurrence(*pairs(*inp), h, parallel=True)
        return hs[-1], hs

    # zero Delta and zero input on padded steps: exp(0 * A) = 1 and Delta c B = 0
    hs = jax.lax.scan(chunk, h0, (split(delta), split(dbx), split(bmat)))[1]
    return hs.reshape((num * chunk_size,) + hs.shape[2:])[:t]


def _inverse_softplus(y):
    """x with softplus(x) = y, for y > 0: y + log(1 - exp(-y))."""
    return y + jnp.log(-jnp.expm1(-y))


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class Mamba(RecurrentNetwork):
    """Deep Mamba network (one selective SSM block per layer).

    Args:
        state_size: N, the state per channel (16).
        expand: E = expand * hidden_size inner channels (2).
        conv_width: K, the width of the causal depthwise convolution (4; at least 2,
            so that the carried window is never empty).
        dt_rank: rank of the Delta projection (None: ceil(hidden_size / 16)).
        dt_min, dt_max: range of the log-uniform initial steps softplus(b_Delta).
        scan: "sequential", "parallel" (associative scan) or "auto" (parallel on
            accelerators, sequential on CPU).
        chunk_size: the parallel scan runs over chunks of this many steps, one chunk
            after another (None: the whole sequence at once); bounds the scan's
            temporaries to (chunk_size, E, N) per sequence.
        (others: see RecurrentNetwork)

    Raises:
        ValueError: a size that is not a positive int, conv_width < 2, an unknown scan
            mode, or not 0 < dt_min <= dt_max.
    """

    state_size: int = 16
    expand: int = 2
    conv_width: int = 4
    dt_rank: int | None = None
    dt_min: float = 0.001
    dt_max: float = 0.1
    scan: str = "auto"
    chunk_size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        validation.check_choice("scan", self.scan, SCAN_MODES)
        chunk = validation.check_int("chunk_size", self.chunk_size, allow_none=True)
        object.__setattr__(self, "chunk_size", chunk)
        for name in ("state_size", "expand"):
            object.__setattr__(self, name, validation.check_int(name, getattr(self, name)))
        width = validation.check_int("conv_width", self.conv_width, minimum=2)
        object.__setattr__(self, "conv_width", width)
        rank = validation.check_int("dt_rank", self.dt_rank, allow_none=True)
        object.__setattr__(self, "dt_rank", rank)
        for name in ("dt_min", "dt_max"):
            object.__setattr__(
                self, name, validation.check_positive_float(name, getattr(self, name))
            )
        if self.dt_min > self.dt_max:
            raise ValueError(f"need dt_min <= dt_max, got {self.dt_min=}, {self.dt_max=}")

    @property
    def _inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def _dt_rank(self) -> int:
        return self.dt_rank or math.ceil(self.hidden_size / 16)

    def cell_init(self, key, in_size, dtype):
        e, n, k, r = self._inner, self.state_size, self.conv_width, self._dt_rank
        ks = jax.random.split(key, 7)
        bound = 1.0 / math.sqrt(k)
        log_dt = jax.random.uniform(
            ks[0], (e,), dtype, minval=math.log(self.dt_min), maxval=math.log(self.dt_max)
        )
        dt = jnp.maximum(jnp.exp(log_dt), DT_INIT_FLOOR)
        return {
            "in_proj": dense_init(ks[1], in_size, 2 * e, dtype),
            "conv_weight": jax.random.uniform(ks[2], (k, e), dtype, -bound, bound),
            "conv_bias": jax.random.uniform(ks[3], (e,), dtype, -bound, bound),
            "x_proj": dense_init(ks[4], e, r + 2 * n, dtype),
            "dt_weight": jax.random.uniform(ks[5], (r, e), dtype, -(r**-0.5), r**-0.5),
            "dt_bias": _inverse_softplus(dt),
            "A_log": jnp.log(jnp.broadcast_to(jnp.arange(1, n + 1, dtype=dtype), (e, n))),
            "D": jnp.ones((e,), dtype),
            "out_proj": dense_init(ks[6], e, self.hidden_size, dtype),
        }

    def cell_carry(self, p):
        e, n = p["A_log"].shape
        dtype = p["A_log"].dtype
        return MambaCarry(
            conv=jnp.zeros((self.conv_width - 1, e), dtype), ssm=jnp.zeros((e, n), dtype)
        )

    def cell_project(self, p, u):
        """(x, z): the convolution's input and the gate's, for any leading dims."""
        return tuple(jnp.split(_mm(u, p["in_proj"]), 2, axis=-1))

    def _selective(self, p, c):
        """(Delta, B, C) of convolved inputs c (..., E)."""
        r, n = self._dt_rank, self.state_size
        dbc = _mm(c, p["x_proj"])
        delta = jax.nn.softplus(_mm(dbc[..., :r], p["dt_weight"]) + p["dt_bias"])
        return delta, dbc[..., r : r + n], dbc[..., r + n :]

    def _output(self, p, h, c, z, cmat):
        """o from states h (..., E, N), convolved inputs c, gate inputs z and C (..., N)."""
        y = jnp.einsum("...en,...n->...e", h, cmat, precision=NEURAL) + p["D"] * c
        return _mm(y * jax.nn.silu(z), p["out_proj"])

    def cell_recur(self, p, carry, pre):
        x, z = pre
        window = jnp.concatenate([carry.conv, x[None]], axis=0)  # (K, E), oldest first
        c = jax.nn.silu(jnp.sum(window * p["conv_weight"], axis=0) + p["conv_bias"])
        delta, bmat, cmat = self._selective(p, c)
        a = -jnp.exp(p["A_log"])
        h = jnp.exp(delta[:, None] * a) * carry.ssm + (delta * c)[:, None] * bmat[None, :]
        return MambaCarry(window[1:], h), self._output(p, h, c, z, cmat)

    def layer_scan(self, p, carry, pre):
        x, z = pre
        t, k = x.shape[0], self.conv_width
        padded = jnp.concatenate([carry.conv, x], axis=0)  # (K - 1 + T, E)
        conv = sum(p["conv_weight"][i] * padded[i : i + t] for i in range(k))
        c = jax.nn.silu(conv + p["conv_bias"])
        delta, bmat, cmat = self._selective(p, c)
        a = -jnp.exp(p["A_log"])
        dbx = delta * c
        if resolve_scan_mode(self.scan) == "parallel":
            hs = _chunked_parallel(delta, dbx, bmat, a, carry.ssm, self.chunk_size)
        else:  # the (T, E, N) pairs are formed one step at a time

            def step(h, inp):
                d_t, dbx_t, b_t = inp
                h = jnp.exp(d_t[:, None] * a) * h + dbx_t[:, None] * b_t[None, :]
                return h, h

            hs = jax.lax.scan(step, carry.ssm, (delta, dbx, bmat))[1]
        # The window after step t is inputs t-K+2..t: rows t+1..t+K-1 of the padded ones.
        windows = jnp.stack([padded[1 + i : 1 + i + t] for i in range(k - 1)], axis=1)
        return MambaCarry(windows, hs), self._output(p, hs, c, z, cmat)


SPEC = recurrent_spec(
    "mamba",
    Mamba,
    scan=choice(*SCAN_MODES),
    state_size=POSITIVE_INT,
    expand=POSITIVE_INT,
    conv_width=Key((int,), lambda v: v >= 2, "an integer >= 2"),
    dt_rank=POSITIVE_INT,
    dt_min=POSITIVE_NUMBER,
    dt_max=POSITIVE_NUMBER,
    chunk_size=POSITIVE_INT,
)
