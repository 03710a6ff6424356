r"""The other input/output patterns of recurrent networks, as conditional models.

Each is a small model in the contract whose first state comes from a per-sequence
source (``source=`` in every generic function), built from the same pieces as
:class:`probseq.Seq2Seq` (encoders, the bridge, heads):

* :class:`OneToMany` -- a vector seeds a sequence (e.g. captioning):
  :math:`p(y_{1:T} \mid f) = \prod_t p(y_t \mid h_t)`, :math:`h_1 = \mathrm{bridge}(f)`,
  then the decoder family's own recursion.
* :class:`SequenceClassifier` -- many-to-one, :math:`p(\ell \mid x_{1:S})`: the head
  (categorical, Normal, ...) reads the encoder's final (summary) or mean-pooled state.
  The target is a length-1 sequence: ``log_prob(model, params, labels[:, None],
  source=x)``; several targets per source are conditionally independent given it.
* :class:`SequenceTagger` -- aligned many-to-many, :math:`p(y_t \mid x_{1:t})` with a
  one-way encoder (causal), :math:`p(y_t \mid x_{1:S})` with a bidirectional one; the
  targets must have the source's lengths. The state is (encoder states, t).

Example:
    >>> clf = probseq.SequenceClassifier(probseq.GRU(vocab_size=4, hidden_size=8),
    ...                                  num_classes=3)
    >>> params = clf.init(jax.random.key(0))
    >>> lp = probseq.log_prob(clf, params, labels[:, None], source=x)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probseq import validation
from probseq.core import SequenceModel, Source, param_dtype
from probseq.families.recurrent import RecurrentNetwork
from probseq.heads import CategoricalHead, Head, NormalHead

from .encoder import Encoder, as_encoder
from .seq2seq import apply_bridge, init_bridge, sequence_source

__all__ = ["OneToMany", "SequenceClassifier", "SequenceTagger", "TaggerState"]


def _make_head(head, num_classes, obs_dim, owner) -> Head:
    given = [
        n for n, v in (("num_classes", num_classes), ("obs_dim", obs_dim), ("head", head))
        if v is not None
    ]  # fmt: skip
    if len(given) != 1:
        raise ValueError(
            f"{owner} needs exactly one of num_classes= (categorical), obs_dim= (Normal) or "
            f"head= (any emission head); got {given or 'none'}."
        )
    if head is not None:
        if not isinstance(head, Head):
            raise ValueError(f"head must be a probseq.heads.Head, got {type(head).__name__}")
        return head
    return CategoricalHead(num_classes) if num_classes is not None else NormalHead(obs_dim)


def _encoder_and_readout_init(model, key, dtype) -> dict:
    """Parameters of a classifier or tagger: its encoder's and a readout of the encoder's
    features by its head."""
    dtype = param_dtype(dtype)
    k_enc, k_head = jax.random.split(key)
    return {
        "encoder": model.encoder.init(k_enc, dtype=dtype),
        "head": model.head.init_readout(k_head, model.encoder.output_size, dtype),
    }


def _raise_needs_source(model):
    raise ValueError(
        f"{model!r} starts from its source: pass source= (the first state is "
        "model.source_state(params, source, source_mask))."
    )


# ------------------------------------------------------------------- one-to-many
@dataclasses.dataclass(frozen=True)
class OneToMany(SequenceModel):
    """A decoder family whose first state is ``bridge(feature)`` for a feature vector.

    Args:
        decoder: any recurrent family (its ``input_dim`` per-step inputs allowed).
        feature_dim: size of the conditioning vector (the ``source``: (F,) or (B, F)).
    """

    decoder: RecurrentNetwork
    feature_dim: int

    takes_source = True

    def __post_init__(self):
        if not isinstance(self.decoder, RecurrentNetwork):
            raise ValueError(
                f"decoder must be a recurrent family; got {type(self.decoder).__name__}."
            )
        object.__setattr__(
            self, "feature_dim", validation.check_int("feature_dim", self.feature_dim)
        )

    @property
    def head(self):
        return self.decoder.head

    @property
    def input_dim(self):
        return self.decoder.input_dim

    def init(self, key, *, dtype=None):
        dtype = param_dtype(dtype)
        k_dec, k_bridge = jax.random.split(key)
        pd = self.decoder.init(k_dec, dtype=dtype)
        template = jax.eval_shape(self.decoder.initial_state, pd)
        return {"decoder": pd, "bridge": init_bridge(k_bridge, template, self.feature_dim, dtype)}

    def prepare_source(self, source, source_mask, target_mask) -> Source:
        if source_mask is not None:
            raise ValueError("a feature-vector source has no steps: pass source_mask=None.")
        f = np.asarray(source)
        if f.ndim not in (1, 2) or f.shape[-1] != self.feature_dim:
            raise ValueError(
                f"source must be feature vectors of shape ({self.feature_dim},) or "
                f"(B, {self.feature_dim}); got shape {f.shape}."
            )
        if not np.issubdtype(f.dtype, np.number) or not np.isfinite(f).all():
            raise ValueError("source must hold finite real numbers.")
        batched = f.ndim == 2
        f = f if batched else f[None]
        return Source(jnp.asarray(f), jnp.ones((f.shape[0], 1), bool), batched)

    def source_state(self, params, source, source_mask):
        pd = params["decoder"]
        feature = source.astype(jax.tree.leaves(pd)[0].dtype)
        return apply_bridge(params["bridge"], self.decoder.initial_state(pd), feature)

    def initial_state(self, params):
        _raise_needs_source(self)

    def emission(self, params, state, u=None):
        return self.decoder.emission(params["decoder"], state, u)

    def update(self, params, state, x, u=None):
        return self.decoder.update(params["decoder"], state, x, u)

    def sequence_log_probs(self, params, state, xs, us=None):
        """The decoder's own path (hoisted projections or parallel scan)."""
        return self.decoder.sequence_log_probs(params["decoder"], state, xs, us)


# -------------------------------------------------------------------- many-to-one
@dataclasses.dataclass(frozen=True)
class SequenceClassifier(SequenceModel):
    """p(label | x_1..x_S): a head on the encoder's pooled state.

    Args:
        encoder: a :class:`probseq.Encoder` or a bare recurrent family.
        num_classes / obs_dim / head: the label's distribution (categorical over
            ``num_classes``, a diagonal Normal over ``obs_dim`` reals, or any head).
        pooling: ``"final"`` (the encoder's summary: the last valid state, with the
            backward run's first for a bidirectional one) or ``"mean"`` (the mean of
            the valid states).
    """

    encoder: Encoder | RecurrentNetwork
    num_classes: int | None = None
    obs_dim: int | None = None
    head: Head | None = None
    pooling: str = "final"

    takes_source = True

    def __post_init__(self):
        object.__setattr__(self, "encoder", as_encoder(self.encoder))
        head = _make_head(self.head, self.num_classes, self.obs_dim, "SequenceClassifier")
        object.__setattr__(self, "head", head)
        if self.pooling not in ("final", "mean"):
            raise ValueError(f"pooling must be 'final' or 'mean'; got pooling={self.pooling!r}.")

    def init(self, key, *, dtype=None):
        return _encoder_and_readout_init(self, key, dtype)

    def prepare_source(self, source, source_mask, target_mask) -> Source:
        return sequence_source(self.encoder, source, source_mask)

    def source_state(self, params, source, source_mask):
        enc = self.encoder.apply(params["encoder"], source, source_mask)
        if self.pooling == "final":
            return enc.summary
        return jnp.sum(enc.states, axis=0) / jnp.sum(source_mask).astype(enc.states.dtype)

    def initial_state(self, params):
        _raise_needs_source(self)

    def emission(self, params, state, u=None):
        return self.head.readout(params["head"], state)

    def update(self, params, state, x, u=None):
        return state  # labels are conditionally independent given the source


# --------------------------------------------------------------- many-to-many
class TaggerState(NamedTuple):
    """memory: (S, D) encoder states; step: () int32, the index of the next target."""

    memory: jax.Array
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class SequenceTagger(SequenceModel):
    """Aligned p(y_t | x): one target per source step, read off the encoder's state.

    Causal (p(y_t | x_1..x_t)) with a one-way encoder; with a bidirectional
    :class:`probseq.Encoder` each y_t sees the whole source. Targets must have the
    source's lengths (checked); sample with ``num_timesteps`` = the source length.

    Args:
        encoder: a :class:`probseq.Encoder` or a bare recurrent family.
        num_classes / obs_dim / head: the per-step target's distribution.
    """

    encoder: Encoder | RecurrentNetwork
    num_classes: int | None = None
    obs_dim: int | None = None
    head: Head | None = None

    takes_source = True

    def __post_init__(self):
        object.__setattr__(self, "encoder", as_encoder(self.encoder))
        head = _make_head(self.head, self.num_classes, self.obs_dim, "SequenceTagger")
        object.__setattr__(self, "head", head)

    def init(self, key, *, dtype=None):
        return _encoder_and_readout_init(self, key, dtype)

    def prepare_source(self, source, source_mask, target_mask) -> Source:
        src = sequence_source(self.encoder, source, source_mask)
        if target_mask is not None:
            got = np.asarray(target_mask).sum(-1)
            want = np.asarray(src.mask).sum(-1)
            if got.shape != want.shape or (got != want).any():
                row = int(np.flatnonzero(got != want)[0]) if got.shape == want.shape else 0
                raise ValueError(
                    "an aligned tagger needs one target per source step: target lengths "
                    f"{got.tolist()} vs source lengths {want.tolist()} (first mismatch: "
                    f"sequence {row})."
                )
        return src

    def source_state(self, params, source, source_mask):
        enc = self.encoder.apply(params["encoder"], source, source_mask)
        return TaggerState(enc.states, jnp.zeros((), jnp.int32))

    def initial_state(self, params):
        _raise_needs_source(self)

    def emission(self, params, state, u=None):
        return self.head.readout(params["head"], state.memory[state.step])

    def update(self, params, state, x, u=None):
        return state._replace(step=state.step + 1)

    def sequence_log_probs(self, params, state, xs, us=None):
        """Every step's emission at once from the stored states (no scan); equal to
        the generic path (tested)."""
        num = xs.shape[0]
        memory = state.memory
        if memory.shape[0] < num:  # targets padded wider than the source
            memory = jnp.pad(memory, [(0, num - memory.shape[0]), (0, 0)])
        feats = jax.lax.dynamic_slice_in_dim(memory, state.step, num, axis=0)
        lps = jax.vmap(lambda f, x: self.head.readout(params["head"], f).log_prob(x))(feats, xs)
        steps = state.step + 1 + jnp.arange(num, dtype=jnp.int32)
        return lps, TaggerState(jnp.broadcast_to(state.memory, (num,) + state.memory.shape), steps)
