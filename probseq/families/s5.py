r"""S5, the simplified state-space layer of Smith, Warrington and Linderman 2022
("Simplified State Space Layers for Sequence Modeling"): one diagonal complex
linear state-space model shared by all channels (multi-input, multi-output),

.. math::
    s_t = \bar\Lambda \odot s_{t-1} + \bar B u_t, \qquad
    y_t = 2\,\Re(\tilde C s_t) + D \odot u_t, \qquad o_t = \mathrm{GELU}(y_t)

with ``u_t`` the layer's input (projected to ``hidden_size`` when it is not that
wide), a complex state ``s_t`` and the continuous-time system
:math:`\dot s = \Lambda s + \tilde B u` discretised with a learned step
:math:`\Delta_p = e^{\log\Delta_p}` per state:

- zero-order hold (``discretization="zoh"``, the default): :math:`\bar\Lambda =
  e^{\Lambda\Delta}`, :math:`\bar B = (\bar\Lambda - 1)/\Lambda \odot \tilde B`;
- bilinear (``"bilinear"``): :math:`\bar\Lambda = (1 + \Delta\Lambda/2)/(1 - \Delta\Lambda/2)`,
  :math:`\bar B = \Delta/(1 - \Delta\Lambda/2) \odot \tilde B`.

Initialisation (as the authors' code): Lambda holds the eigenvalues of the normal part
of the HiPPO-LegS matrix, :math:`S = A + p p^\top` with
:math:`A_{nk} = -\sqrt{(2n+1)(2k+1)}` (n > k), :math:`A_{nn} = -(n + 1)`,
:math:`p_n = \sqrt{n + 1/2}`: all have real part -1/2, and they come in conjugate
pairs. ``blocks`` copies of the eigenvalues of a block-sized S sit on the diagonal
(a block-diagonal HiPPO); B and C are drawn in the original basis and mapped to the
eigenbasis, :math:`\tilde B = V^{-1} B`, :math:`\tilde C = C V` (V unitary, per
block); :math:`\log\Delta` is uniform on [log dt_min, log dt_max]; D is standard
normal. B is real normal with variance 1/hidden_size, C complex with real and imaginary
parts of variance 1/state_size (untruncated; the authors truncate).

Conjugate-symmetric storage (``conj_sym=True``): of each pair only the eigenvalue with
negative imaginary part is stored (state_size / 2 complex numbers), and the output's
``2 Re`` adds its conjugate twin exactly. With ``conj_sym=False`` every eigenvalue is
stored and the output is ``Re(C s)``.

Stability: the real part of Lambda enters as ``min(Re Lambda, -1e-4)`` (the authors'
``clip_eigs``, which they recommend for autoregressive use), so
:math:`|\bar\Lambda| < 1` for every positive step under either discretisation and a
state driven for any number of steps stays bounded.

The recurrence is linear, so a layer is solved by ``lax.scan`` (``scan="sequential"``)
or by ``lax.associative_scan`` over the pairs :math:`(\bar\Lambda, \bar B u_t)`
(``scan="parallel"``), from any starting state; ``"auto"`` takes the parallel scan on
accelerators and the sequential one on CPU (the rule of :func:`probseq.scan.resolve_scan_mode`;
measurements in benchmarks/RESULTS.md). The output map, the norm, residual path and
MLP of the authors' full layer are not part of this cell.

Example:
    >>> import jax, probseq
    >>> model = probseq.S5(vocab_size=27, hidden_size=64, state_size=64)
    >>> params = model.init(jax.random.key(0))
    >>> params["layers"][0]["lambda_re"].shape  # conjugate-symmetric: 64 / 2 stored
    (32,)
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from probseq import validation
from probseq.families.recurrent import RecurrentNetwork, dense_init, recurrent_spec
from probseq.families.registry import BOOL, POSITIVE_INT, POSITIVE_NUMBER, choice
from probseq.scan import NEURAL, SCAN_MODES, linear_recurrence, resolve_scan_mode

__all__ = ["S5", "hippo_legs_normal_eigh", "DISCRETIZATIONS"]

DISCRETIZATIONS = ("zoh", "bilinear")
#: Largest real part an eigenvalue of Lambda may take (the authors' clip_eigs bound).
MAX_REAL_PART = -1e-4
_DEFAULT_MAX_BLOCK = 16


def _mm(a, b):
    """A projection of the layer at XLA's fast default precision, stated
    (probseq.scan.NEURAL); the recurrence itself is elementwise."""
    return jnp.matmul(a, b, precision=NEURAL)


def hippo_legs_normal_eigh(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and unitary eigenvectors of the normal part of HiPPO-LegS (size n).

    The normal part :math:`S = A + p p^\\top` is :math:`-\\tfrac12 I` plus a real
    skew-symmetric matrix K, so :math:`-iK` is Hermitian: ``numpy.linalg.eigh`` gives its
    real eigenvalues w (ascending) and unitary V, and :math:`S = V (-\\tfrac12 + i w) V^H`.

    Returns:
        (eigenvalues (n,) complex128, V (n, n) complex128), eigenvalues in ascending
        order of their imaginary part (so a conjugate-symmetric half is the first n // 2).
    """
    q = np.sqrt(2.0 * np.arange(n) + 1.0)
    a = -(np.tril(np.outer(q, q)) - np.diag(np.arange(n, dtype=np.float64)))
    p = np.sqrt(np.arange(n) + 0.5)
    s = a + np.outer(p, p)
    skew = s - np.diag(np.diag(s))  # the diagonal of S is exactly -1/2
    w, v = np.linalg.eigh(-1j * skew)
    return np.mean(np.diag(s)) + 1j * w, v


def _default_blocks(state_size: int, conj_sym: bool) -> int | None:
    """Blocks as large as possible up to 16 eigenvalues (even with conj_sym)."""
    sizes = [b for b in range(1, min(state_size, _DEFAULT_MAX_BLOCK) + 1)
             if state_size % b == 0 and (b % 2 == 0 or not conj_sym)]  # fmt: skip
    return state_size // max(sizes) if sizes else None


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class S5(RecurrentNetwork):
    """Deep S5 network (one S5 state-space layer and a GELU per layer).

    Args:
        state_size: size P of the complex state (default hidden_size, rounded up to
            even with ``conj_sym``); with ``conj_sym`` P / 2 are stored.
        blocks: number J of HiPPO-LegS blocks on the diagonal of the initial Lambda
            (each of size P / J; even with ``conj_sym``). None: blocks as large as
            possible up to 16 eigenvalues.
        discretization: "zoh" (zero-order hold) or "bilinear".
        conj_sym: store one eigenvalue of each conjugate pair (output 2 Re(C s)).
        dt_min, dt_max: the range of the log-uniform initial step sizes.
        scan: "sequential", "parallel" (associative scan) or "auto" (parallel on
            accelerators, sequential on CPU).
        (others: see RecurrentNetwork)

    Raises:
        ValueError: a size that is not a positive int, P not divisible into J blocks
            (of even size with conj_sym), an unknown discretisation or scan mode, or
            not 0 < dt_min <= dt_max.
    """

    state_size: int | None = None
    blocks: int | None = None
    discretization: str = "zoh"
    conj_sym: bool = True
    dt_min: float = 0.001
    dt_max: float = 0.1
    scan: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        validation.check_choice("scan", self.scan, SCAN_MODES)
        validation.check_choice("discretization", self.discretization, DISCRETIZATIONS)
        validation.check_choice("conj_sym", self.conj_sym, (True, False))
        size = validation.check_int("state_size", self.state_size, allow_none=True)
        object.__setattr__(self, "state_size", size)
        p = self._full_state_size
        blocks = validation.check_int("blocks", self.blocks, allow_none=True)
        if blocks is None:
            if _default_blocks(p, self.conj_sym) is None:
                raise ValueError(
                    f"S5 with conj_sym=True needs an even state_size, got state_size={p}; "
                    "pass an even state_size or conj_sym=False."
                )
        elif p % blocks or (self.conj_sym and (p // blocks) % 2):
            even = " of even size (conj_sym=True)" if self.conj_sym else ""
            raise ValueError(
                f"state_size={p} does not split into {blocks=} blocks{even}; choose blocks "
                f"that divide state_size{even and ' into even parts'}."
            )
        object.__setattr__(self, "blocks", blocks)
        for name in ("dt_min", "dt_max"):
            object.__setattr__(
                self, name, validation.check_positive_float(name, getattr(self, name))
            )
        if self.dt_min > self.dt_max:
            raise ValueError(f"need dt_min <= dt_max, got {self.dt_min=}, {self.dt_max=}")

    @property
    def _full_state_size(self) -> int:
        if self.state_size is not None:
            return self.state_size
        return self.hidden_size + (self.hidden_size % 2 if self.conj_sym else 0)

    @property
    def _num_blocks(self) -> int:
        return self.blocks or _default_blocks(self._full_state_size, self.conj_sym)

    @property
    def _stored_state_size(self) -> int:
        p = self._full_state_size
        return p // 2 if self.conj_sym else p

    def initial_eigenvalues(self) -> tuple[np.ndarray, np.ndarray]:
        """Lambda and the eigenvector blocks the initialisation uses (float64/complex128).

        Returns:
            (Lambda (stored state size,), V (block size, stored block size)): the block's
            eigenvalues repeated ``blocks`` times, and the eigenvectors of one block (the
            same V sits on every diagonal block).
        """
        n = self._full_state_size // self._num_blocks
        lam, v = hippo_legs_normal_eigh(n)
        if self.conj_sym:
            lam, v = lam[: n // 2], v[:, : n // 2]
        return np.tile(lam, self._num_blocks), v

    def cell_init(self, key, in_size, dtype):
        h, p_full, j = self.hidden_size, self._full_state_size, self._num_blocks
        lam, v = self.initial_eigenvalues()
        ks = jax.random.split(key, 6)
        cdtype = jnp.result_type(dtype, jnp.complex64)
        # B (P, H) real and C (H, P) complex in the original basis, by block; in row form
        # u @ B~^T = u @ B^T conj(V) and s @ C~^T = s @ V^T C^T.
        b = jax.random.normal(ks[0], (h, j, p_full // j), dtype) / math.sqrt(h)
        c = jax.lax.complex(
            jax.random.normal(ks[1], (j, p_full // j, h), dtype),
            jax.random.normal(ks[2], (j, p_full // j, h), dtype),
        ) / jnp.asarray(math.sqrt(p_full), dtype)
        vc = jnp.asarray(v, cdtype)
        b_t = jnp.einsum("hjn,nk->hjk", b.astype(cdtype), vc.conj()).reshape(h, -1)
        c_t = jnp.einsum("nk,jnh->jkh", vc, c).reshape(-1, h)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        log_dt = jax.random.uniform(ks[3], (lam.shape[0],), dtype, minval=lo, maxval=hi)
        p = {}
        if in_size != h:
            p["in_proj"] = dense_init(ks[4], in_size, h, dtype)
        p.update(
            lambda_re=jnp.asarray(lam.real, dtype),
            lambda_im=jnp.asarray(lam.imag, dtype),
            log_step=log_dt,
            b_re=b_t.real,
            b_im=b_t.imag,
            c_re=c_t.real,
            c_im=c_t.imag,
            d=jax.random.normal(ks[5], (h,), dtype),
        )
        return p

    def cell_carry(self, p):
        return jnp.zeros((p["lambda_re"].shape[0],), jnp.result_type(p["d"].dtype, jnp.complex64))

    def discretize(self, p) -> tuple[jax.Array, jax.Array]:
        """(Lambda_bar (P,), the per-state factor of B_bar (P,)) of one layer's params:
        B_bar = factor * B~ column by column."""
        lam = jax.lax.complex(jnp.minimum(p["lambda_re"], MAX_REAL_PART), p["lambda_im"])
        dt = jnp.exp(p["log_step"])
        if self.discretization == "zoh":
            lam_bar = jnp.exp(lam * dt)
            return lam_bar, (lam_bar - 1.0) / lam
        half = 0.5 * dt * lam
        inv = 1.0 / (1.0 - half)
        return (1.0 + half) * inv, dt * inv

    def cell_project(self, p, x):
        u = _mm(x, p["in_proj"]) if "in_proj" in p else x
        _, scale = self.discretize(p)
        bu = jax.lax.complex(_mm(u, p["b_re"]), _mm(u, p["b_im"])) * scale
        return bu, u

    def _output(self, p, s, u):
        y = _mm(s.real, p["c_re"]) - _mm(s.imag, p["c_im"])
        if self.conj_sym:
            y = 2.0 * y
        return jax.nn.gelu(y + p["d"] * u, approximate=False)

    def cell_recur(self, p, s, pre):
        bu, u = pre
        lam_bar, _ = self.discretize(p)
        s = lam_bar * s + bu
        return s, self._output(p, s, u)

    def layer_scan(self, p, s, pre):
        bu, u = pre
        lam_bar, _ = self.discretize(p)
        parallel = resolve_scan_mode(self.scan) == "parallel"
        ss = linear_recurrence(lam_bar, bu, s, parallel=parallel)
        return ss, self._output(p, ss, u)


SPEC = recurrent_spec(
    "s5",
    S5,
    scan=choice(*SCAN_MODES),
    state_size=POSITIVE_INT,
    blocks=POSITIVE_INT,
    discretization=choice(*DISCRETIZATIONS),
    conj_sym=BOOL,
    dt_min=POSITIVE_NUMBER,
    dt_max=POSITIVE_NUMBER,
)
