r"""What every recurrent network shares; a family only supplies its cell.

A recurrent network in probseq is

.. math::  e_t = \mathrm{enc}(x_t) \oplus u_t, \quad
           (c^{(l)}_{t+1}, o^{(l)}_{t+1}) = \mathrm{cell}(c^{(l)}_t, o^{(l-1)}_{t+1}), \quad
           p(x_{t+1} \mid h_{t+1}) = \mathrm{head}(o^{(L)}_{t+1} \oplus u_{t+1})

with ``enc`` an embedding for tokens (or the raw vector for real-valued data),
``o^{(0)} = e`` and the state h = (carries of every layer, top-layer output). Before
any observation the top output is zero, so p(x_1) is the head's bias.

A cell is split into an input-only part, ``cell_project(params, x)`` (hoisted out
of the time loop over the whole sequence: one large matrix product), and
``cell_recur(params, carry, pre) -> (carry, out)``. ``trajectory`` runs the network
layer by layer; cells whose recurrence is linear in the carry (MinGRU, LRU) override
``layer_scan`` with a parallel scan.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from probseq import memory, validation
from probseq.core import SequenceModel, param_dtype
from probseq.families.registry import POSITIVE_INT, FamilySpec, Key
from probseq.heads import CategoricalHead, Head, NormalHead
from probseq.scan import NEURAL, SCAN_MODES, resolve_scan_mode

__all__ = ["RecurrentNetwork", "MinimalRecurrentNetwork", "RecurrentState", "recurrent_spec"]


class RecurrentState(NamedTuple):
    """carries: one carry per layer (a tuple); features: top-layer output (hidden_size,)."""

    carries: tuple
    features: jax.Array


def _check_positive_int(self, name):
    object.__setattr__(self, name, validation.check_int(name, getattr(self, name)))


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class RecurrentNetwork(SequenceModel):
    """Base of RNN, LSTM, GRU, MinGRU and LRU.

    Args:
        vocab_size: number of symbols, for token sequences (a categorical head).
        obs_dim: dimension of real-valued observations (a diagonal Normal head).
        head: any :class:`probseq.heads.Head` instead of the two above (e.g.
            ``MixtureNormalHead(obs_dim=2, num_components=5)``).
        hidden_size: width of every layer.
        num_layers: number of stacked layers.
        embed_size: token embedding width (default: hidden_size).
        input_dim: size of per-step conditioning inputs u_t (0: unconditional).
    """

    vocab_size: int | None = None
    obs_dim: int | None = None
    head: Head | None = None
    hidden_size: int = 128
    num_layers: int = 1
    embed_size: int | None = None
    input_dim: int = 0

    def __post_init__(self):
        given = [n for n in ("vocab_size", "obs_dim", "head") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"{type(self).__name__} needs exactly one of vocab_size= (tokens), obs_dim= "
                f"(real vectors) or head= (any emission head); got {given or 'none'}."
            )
        if self.head is None:
            head = (
                CategoricalHead(self.vocab_size)
                if self.vocab_size is not None
                else NormalHead(self.obs_dim)
            )
            object.__setattr__(self, "head", head)
            object.__setattr__(self, given[0], getattr(head, given[0]))  # a Python int
        elif not isinstance(self.head, Head):
            raise ValueError(f"head must be a probseq.heads.Head, got {type(self.head).__name__}")
        _check_positive_int(self, "hidden_size")
        _check_positive_int(self, "num_layers")
        if self.embed_size is not None:
            _check_positive_int(self, "embed_size")
        input_dim = validation.check_int("input_dim", self.input_dim, minimum=0)
        object.__setattr__(self, "input_dim", input_dim)

    def __repr__(self):
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "head" and (self.vocab_size is not None or self.obs_dim is not None):
                continue
            if value != f.default:
                shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    # --------------------------------------------------------------- cell hooks
    @abc.abstractmethod
    def cell_init(self, key, in_size: int, dtype) -> Any:
        """Parameters of one layer taking ``in_size`` inputs."""

    @abc.abstractmethod
    def cell_carry(self, layer_params) -> Any:
        """The zero carry of one layer."""

    @abc.abstractmethod
    def cell_project(self, layer_params, x) -> Any:
        """Input-only part of a step; ``x`` may carry leading (time) dims."""

    @abc.abstractmethod
    def cell_recur(self, layer_params, carry, pre) -> tuple[Any, jax.Array]:
        """One step from a projected input: returns (new carry, layer output)."""

    def layer_scan(self, layer_params, carry, pre):
        """All carries and outputs of one layer over time (axis 0). Sequential here."""

        def step(c, p):
            c, out = self.cell_recur(layer_params, c, p)
            return c, (c, out)

        return jax.lax.scan(step, carry, pre)[1]

    # ---------------------------------------------------------------- the contract
    @property
    def _embed_size(self) -> int:
        return self.embed_size or self.hidden_size

    @property
    def _input_features(self) -> int:
        base = self._embed_size if self.head.is_token else self.head.event_shape[0]
        return base + self.input_dim

    def init(self, key, *, dtype=None):
        """Random parameters: {"embed"?, "layers": (per layer), "head": readout}, of
        ``dtype`` (None: JAX's default float, float64 under ``jax_enable_x64``)."""
        dtype = param_dtype(dtype)
        if not isinstance(key, jax.core.Tracer):  # eval_shape (the estimate) traces the key
            memory.check_fits(memory.param_bytes(self, dtype), f"{self!r}.init (parameters)")
        k_embed, k_head, *k_layers = jax.random.split(key, 2 + self.num_layers)
        params = {}
        if self.head.is_token:
            params["embed"] = jax.random.normal(
                k_embed, (self.head.vocab_size, self._embed_size), dtype
            )
        sizes = [self._input_features] + [self.hidden_size] * (self.num_layers - 1)
        params["layers"] = tuple(
            self.cell_init(k, n, dtype) for k, n in zip(k_layers, sizes, strict=True)
        )
        params["head"] = self.head.init_readout(k_head, self.hidden_size + self.input_dim, dtype)
        return params

    def initial_state(self, params):
        dtype = params["head"]["bias"].dtype
        return RecurrentState(
            carries=tuple(self.cell_carry(p) for p in params["layers"]),
            features=jnp.zeros((self.hidden_size,), dtype),
        )

    def _encode(self, params, x, u):
        if self.head.is_token:
            # Out-of-range ids (which only a traced call can pass) give NaN, never a
            # clamped or wrapped-around row: jnp.take reads x = -1 as the last one.
            ok = (x >= 0) & (x < self.head.vocab_size)
            e = jnp.take(params["embed"], jnp.where(ok, x, 0), axis=0)
            e = jnp.where(ok[..., None], e, jnp.full((), jnp.nan, e.dtype))
        else:
            e = x.astype(params["head"]["bias"].dtype)
        return e if u is None else jnp.concatenate([e, u.astype(e.dtype)], axis=-1)

    def emission(self, params, state, u=None):
        feats = state.features
        if u is not None:
            feats = jnp.concatenate([feats, u.astype(feats.dtype)], axis=-1)
        return self.head.readout(params["head"], feats)

    def update(self, params, state, x, u=None):
        inp = self._encode(params, x, u)
        carries = []
        for p, c in zip(params["layers"], state.carries, strict=True):
            c, inp = self.cell_recur(p, c, self.cell_project(p, inp))
            carries.append(c)
        return RecurrentState(tuple(carries), inp)

    def trajectory(self, params, state, xs, us=None):
        """Layer by layer over the whole sequence, input projections hoisted."""
        inp = self._encode(params, xs, us)
        carries = []
        for p, c in zip(params["layers"], state.carries, strict=True):
            cs, inp = self.layer_scan(p, c, self.cell_project(p, inp))
            carries.append(cs)
        return RecurrentState(tuple(carries), inp)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class MinimalRecurrentNetwork(RecurrentNetwork):
    """Base of MinGRU and MinLSTM (Feng et al. 2024): gates that read the input only, so a
    layer is one linear recurrence ``h_t = a_t h_{t-1} + b_t`` over (hidden_size,) states,
    solved by the family's ``layer_scan`` sequentially or in parallel as ``scan`` says
    ("sequential", "parallel" or "auto": parallel on accelerators, sequential on CPU)."""

    scan: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        validation.check_choice("scan", self.scan, SCAN_MODES)

    def cell_carry(self, p):
        return jnp.zeros((self.hidden_size,), jax.tree.leaves(p)[0].dtype)

    @property
    def _parallel(self) -> bool:
        """Whether ``layer_scan`` takes the associative scan."""
        return resolve_scan_mode(self.scan) == "parallel"


def dense_init(key, in_size: int, out_size: int, dtype):
    """Input kernel: normal with variance 1/in_size (LeCun)."""
    return jax.random.normal(key, (in_size, out_size), dtype) / jnp.sqrt(
        jnp.asarray(in_size, dtype)
    )


def gate_init(key, in_size: int, hidden_size: int, names: tuple[str, ...], dtype) -> dict:
    """Input-only gates (MinGRU, MinLSTM): for each name n, a kernel ``w_n``
    (in_size, hidden_size) by :func:`dense_init` from its own split of ``key`` and a zero
    bias ``b_n`` (hidden_size,)."""
    params = {}
    for k, n in zip(jax.random.split(key, len(names)), names, strict=True):
        params[f"w_{n}"] = dense_init(k, in_size, hidden_size, dtype)
        params[f"b_{n}"] = jnp.zeros((hidden_size,), dtype)
    return params


def gate_project(params, x, names: tuple[str, ...]) -> tuple[jax.Array, ...]:
    """``x w_n + b_n`` for each gate name n of :func:`gate_init`, at XLA's fast default
    precision, stated (:data:`probseq.scan.NEURAL`); ``x`` may carry leading (time) dims."""
    return tuple(
        jnp.matmul(x, params[f"w_{n}"], precision=NEURAL) + params[f"b_{n}"] for n in names
    )


def recurrent_init(key, hidden_size: int, blocks: int, dtype):
    """Recurrent kernel (hidden, blocks*hidden): one orthogonal block per gate."""
    keys = jax.random.split(key, blocks)
    ortho = jax.nn.initializers.orthogonal()
    return jnp.concatenate([ortho(k, (hidden_size, hidden_size), dtype) for k in keys], axis=1)


#: The [model] keys every recurrent network takes (besides family, head, num_components).
RECURRENT_KEYS = {
    "hidden_size": POSITIVE_INT,
    "num_layers": POSITIVE_INT,
    "embed_size": POSITIVE_INT,
}


def recurrent_spec(name: str, cls: type, **extra_keys: Key) -> FamilySpec:
    """The :class:`~probseq.families.registry.FamilySpec` of a recurrent network class:
    the shared keys plus ``extra_keys``; a categorical head is given as ``vocab_size=``
    and a Normal head as ``obs_dim=`` (so the model equals the one a user writes)."""

    def build(options, head):
        if isinstance(head, CategoricalHead):
            return cls(vocab_size=head.vocab_size, **options)
        if type(head) is NormalHead:
            return cls(obs_dim=head.obs_dim, **options)
        return cls(head=head, **options)

    return FamilySpec(name=name, model=cls, keys={**RECURRENT_KEYS, **extra_keys}, build=build)
