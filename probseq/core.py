r"""The autoregressive contract and the operations written once over it.

Every probseq model is a distribution over sequences

.. math::  p(x_{1:T} \mid u_{1:T}) = \prod_t p(x_t \mid h_t, u_t), \qquad
           h_{t+1} = f(h_t, x_t, u_t; \theta)

with a fixed-size state ``h_t`` and optional per-step conditioning inputs ``u_t``.
A family implements four pure functions (``init``, ``initial_state``, ``emission``,
``update``); this module turns them into batched, masked, jit-compiled
log-likelihoods, filtering and ancestral sampling.

A family with a faster exact path may override ``trajectory`` (all states at once:
a parallel scan, or hoisted input projections), ``sequence_log_probs`` (states and
per-step log-likelihoods together, e.g. the HMM's scaled forward pass) or
``batch_sequence_log_probs`` (a whole batch at once, e.g. the HMM's chunked and
parallel-in-time filters). Tests check every override against the generic path.

Example:
    >>> import jax, probseq
    >>> model = probseq.GRU(vocab_size=5, hidden_size=8)
    >>> params = model.init(jax.random.key(0))
    >>> x = jax.numpy.array([[0, 1, 2, 3], [4, 3, 2, 1]])
    >>> probseq.log_prob(model, params, x).shape
    (2,)
"""

from __future__ import annotations

import abc
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from probseq import memory, sharding, validation
from probseq.heads import Head, temper
from probseq.scan import pairwise_sum

__all__ = [
    "SequenceModel",
    "EMOptions",
    "ScoreResult",
    "score",
    "log_prob",
    "step_log_probs",
    "sample",
    "batch_step_log_probs",
    "as_batch",
    "param_dtype",
    "sample_bytes",
    "Source",
    "prepare_source",
    "start_states",
    "source_start_states",
]

PyTree = Any


class EMOptions(NamedTuple):
    """A model's checked EM settings (from :meth:`SequenceModel.em_options`).

    static: hashable settings the compiled step is specialised to (e.g. the E-step).
    constants: arrays every iteration reads (a prior's concentrations, a mean input).
    restart_map: how fit_em batches restarts: "vmap" or "map" (one after the other).
    """

    static: Any = None
    constants: Any = None
    restart_map: str = "vmap"


class SequenceModel(abc.ABC):
    """The contract every family meets. Instances hold static configuration only
    (they are frozen dataclasses: hashable, usable as jit static arguments);
    parameters travel separately as a pytree.

    Subclasses define ``head`` (a :class:`probseq.heads.Head`), ``input_dim``
    (size of u_t; 0 for unconditional models) and the four methods below.
    """

    head: Head
    input_dim: int = 0
    #: True for conditional models p(x_{1:T} | source) (Seq2Seq, classifiers, taggers):
    #: their first state comes from :meth:`source_state`, and every generic function
    #: (score, log_prob, sample, fit_sgd, compare, ...) takes ``source=``.
    takes_source = False

    def prepare_source(self, source, source_mask, target_mask) -> Source:
        """Validate a source at the API boundary (eagerly, before jit) against the
        target's (B, T) mask; return it rectangular. Conditional models override."""
        raise ValueError(f"{self!r} is not conditioned on a source; got source=.")

    def source_state(self, params: PyTree, source: jax.Array, source_mask: jax.Array) -> PyTree:
        """h_1 given one sequence's source (S, ...) and its (S,) mask. Conditional
        models override; it runs inside the differentiated loss, so gradients reach
        whatever encodes the source."""
        raise ValueError(f"{self!r} is not conditioned on a source.")

    @abc.abstractmethod
    def init(self, key: jax.Array, *, dtype=None) -> PyTree:
        """Random parameters, a pytree of arrays, of floating ``dtype`` (None: JAX's
        default float, i.e. float64 under ``jax_enable_x64``; see :func:`param_dtype`)."""

    @abc.abstractmethod
    def initial_state(self, params: PyTree) -> PyTree:
        """h_1, the state before any observation."""

    @abc.abstractmethod
    def emission(
        self, params: PyTree, state: PyTree, u: jax.Array | None = None
    ) -> dist.Distribution:
        """p(x_t | h_t, u_t) as a numpyro distribution."""

    @abc.abstractmethod
    def update(
        self, params: PyTree, state: PyTree, x: jax.Array, u: jax.Array | None = None
    ) -> PyTree:
        """Consume x_t (and u_t); return h_{t+1}."""

    # ---------------------------------------------------------- optional capabilities
    # Declared here, never found with hasattr: a family that has one overrides the
    # methods and the flag that says so; generic code reads the flag.

    #: EM (expectation-maximisation): the model has expected sufficient statistics and
    #: an M-step, so :func:`probseq.fit_em` (the one EM driver) fits it.
    supports_em = False

    def em_options(self, params, batch, **settings) -> EMOptions:
        """Check fit_em's model-specific settings (``prior``, ``estep``, ``initial``,
        ``num_restarts``, ``mesh``; refuse by name those that do not apply) for
        ``batch`` (a validated :class:`probseq.validation.Batch`)."""
        raise ValueError(
            f"{self!r} has no EM (expected statistics and M-step); fit it with probseq.fit_sgd."
        )

    def em_start(self, params, batch, options: EMOptions) -> tuple[PyTree, dict]:
        """Parameters EM starts from (default: ``params``), and metrics of that start:
        a dict of () arrays (the same keys :meth:`m_step` reports)."""
        return params, {}

    def expected_statistics(self, params, batch, options: EMOptions) -> tuple[Any, jax.Array]:
        """The E-step: (statistics, log p(x | params)) of ``batch = (x, mask, inputs)``."""
        raise NotImplementedError(f"{self!r} has no EM E-step.")

    def m_step(self, params, stats, batch, options: EMOptions) -> tuple[PyTree, dict]:
        """The M-step: (new params, metrics: a dict of () arrays)."""
        raise NotImplementedError(f"{self!r} has no EM M-step.")

    def em_info(self, options: EMOptions, start_metrics: dict, metrics: dict) -> dict:
        """What fit_em adds to its ``info`` for this model, from the start's metrics
        and each iteration's (arrays over the iterations the best restart ran)."""
        return {}

    def em_log_prior(self, params, options: EMOptions) -> jax.Array:
        """log p(params) that MAP-EM adds to the objective (default 0: maximum likelihood)."""
        return jnp.zeros((), jax.tree.leaves(params)[0].dtype)

    #: A closed-form predictive: :meth:`predict` gives the exact mean and covariance of
    #: the next steps (probseq.forecast's bands use it; else they come from samples).
    supports_predict = False

    def predict(self, params, state, horizon: int, future_inputs=None):
        """(means (horizon, D), covariances (horizon, D, D)) of x_{t+1..t+horizon}
        given the state after x_t, in closed form (``supports_predict`` models)."""
        raise NotImplementedError(f"{self!r} has no closed-form predictive.")

    #: A closed-form least-squares fit: :meth:`least_squares` (probseq.fit_ls).
    supports_least_squares = False

    def least_squares(self, x, mask, inputs=None) -> dict:
        """Raw parameters maximising the conditional likelihood of float64 NumPy data
        ``x`` (B, T, D) under ``mask`` (``supports_least_squares`` models)."""
        raise NotImplementedError(f"{self!r} has no closed-form least-squares fit.")

    #: Steps at the start of every sequence the model conditions on instead of
    #: scoring (an AR(d)'s d); comparisons count only scored steps.
    num_conditioned_steps = 0

    def attention_weights(self, state):
        """The attention weights over the source behind ``state`` (an attentive
        decoder's), or None for a model without attention (the default)."""
        return None

    # ------------------------------------------------------------ overridable paths
    def trajectory(self, params, state, xs, us=None) -> PyTree:
        """States h_2..h_{T+1} after each of the T steps, stacked on axis 0.

        Generic: a ``lax.scan`` of ``update``. Override with a faster exact path.
        """

        def step(h, xu):
            x, u = xu
            h = self.update(params, h, x, u)
            return h, h

        return jax.lax.scan(step, state, (xs, us))[1]

    def batch_sequence_log_probs(self, params, states, xs, us=None) -> tuple[jax.Array, PyTree]:
        """:meth:`sequence_log_probs` of a batch: log-likelihoods (B, T) and the states
        after each step (B, T, ...). ``states``: (B, ...) starting states, or None for
        ``initial_state(params)`` in every row; ``xs`` (B, T, ...); ``us`` (B, T, m) or
        None. Padding is handled by the caller (rows hold valid values there).

        Generic: ``sequence_log_probs`` vmapped over the batch. Override where a path
        works on the whole batch at once (the HMM chooses its filter by batch size and
        memory)."""

        def one(h, x, u):
            h = self.initial_state(params) if h is None else h
            return self.sequence_log_probs(params, h, x, u)

        return jax.vmap(one)(states, xs, us)

    def training_log_probs(
        self, params, states, xs, us=None, *, key: jax.Array | None
    ) -> tuple[jax.Array, PyTree]:
        """:meth:`batch_sequence_log_probs` as the training loss sees it: the same
        shapes, plus a PRNG ``key`` for stochastic training objectives (dropout,
        scheduled sampling). fit_sgd and :func:`probseq.sgd_update` call it with a fresh
        key at every optimizer step (split from the key in the fitting state; None when
        the user's ``sgd_init`` was given no key: a model whose loss draws noise must
        then raise, naming what to pass). Evaluation (log_prob, score, compare, sample)
        never calls it.

        Default: deterministic, ``batch_sequence_log_probs`` (the key is not used)."""
        del key
        return self.batch_sequence_log_probs(params, states, xs, us)

    def sequence_log_probs(self, params, state, xs, us=None) -> tuple[jax.Array, PyTree]:
        """Per-step log p(x_t | x_<t) (T,) and the states after each step.

        Generic: the trajectory, then every emission at once (vectorised over time,
        which batches the readout into one matrix product).
        """
        after = self.trajectory(params, state, xs, us)
        before = jax.tree.map(
            lambda h0, hs: jnp.concatenate([h0[None], hs[:-1]], axis=0), state, after
        )
        if us is None:
            lps = jax.vmap(lambda h, x: self.emission(params, h).log_prob(x))(before, xs)
        else:
            lps = jax.vmap(lambda h, x, u: self.emission(params, h, u).log_prob(x))(before, xs, us)
        return lps, after


class Source(NamedTuple):
    """A validated source batch: x (B, S, ...), mask (B, S) bool, and whether the user
    passed one unbatched source."""

    x: jax.Array
    mask: jax.Array
    batched: bool


def prepare_source(model: SequenceModel, source, source_mask, batch) -> Source | None:
    """Check that ``source`` is given exactly when ``model`` takes one and matches the
    target ``batch`` (a :class:`probseq.validation.Batch`); None for unconditional
    models."""
    if not model.takes_source:
        if source is not None or source_mask is not None:
            raise ValueError(
                f"{model!r} is not conditioned on a source; got source=. Only conditional "
                "models (probseq.Seq2Seq, SequenceClassifier, ...) take one."
            )
        return None
    if source is None:
        raise ValueError(
            f"{model!r} is a conditional distribution p(x | source): pass source= (one "
            "source per target sequence)."
        )
    src = model.prepare_source(source, source_mask, None if batch is None else batch.mask)
    if batch is None:
        return src
    if src.batched != batch.batched or src.x.shape[0] != batch.x.shape[0]:
        raise ValueError(
            f"source and targets must pair up one to one: got {src.x.shape[0]} source(s) "
            f"({'batched' if src.batched else 'one unbatched'}) for {batch.x.shape[0]} "
            f"target sequence(s) ({'batched' if batch.batched else 'one unbatched'})."
        )
    return src


def start_states(model: SequenceModel, params, batch_size: int, source=None) -> PyTree:
    """The (B, ...) states each row starts from: ``model.source_state`` of each row's
    source ``(x (B, S, ...), mask (B, S))``, or ``initial_state(params)`` broadcast."""
    if source is not None:
        return jax.vmap(model.source_state, (None, 0, 0))(params, *source[:2])
    return jax.tree.map(
        lambda a: jnp.broadcast_to(a, (batch_size,) + a.shape), model.initial_state(params)
    )


_source_states = jax.jit(start_states, static_argnums=(0, 2))


def source_start_states(model: SequenceModel, params, source, source_mask) -> tuple[PyTree, bool]:
    """The start states of sampling or decoding from a conditional model's sources.

    Validates ``source`` (one, a batch (B, S, ...) with an optional mask, or a list) with
    :func:`prepare_source` and encodes each with ``model.source_state`` (jitted).

    Returns:
        (states (B, ...), whether the caller passed a batch of sources).
    """
    src = prepare_source(model, source, source_mask, None)
    return _source_states(model, params, src.x.shape[0], (src.x, src.mask)), src.batched


class ScoreResult(NamedTuple):
    """What filtering a batch gives back.

    log_prob: per-sequence total log-likelihood, () or (B,).
    step_log_probs: log p(x_t | x_<t) per step, (T,) or (B, T); 0 where masked.
    final_state: the state after the last valid step of each sequence (a pytree with
        leading batch dim when the input was batched); pass it as ``initial_state``
        to continue the sequence.
    """

    log_prob: jax.Array
    step_log_probs: jax.Array
    final_state: PyTree


def param_dtype(dtype=None) -> jnp.dtype:
    """The floating dtype parameters are made in: ``dtype``, or when None JAX's default
    float at call time (float32; float64 under ``jax_enable_x64``, as in numpyro and
    dynamax). Resolved per call, never at import, so turning x64 on later is honoured."""
    resolved = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    if not jnp.issubdtype(resolved, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype (float32, float64, ...); got {dtype=}")
    return resolved


# ----------------------------------------------------------------- pure batch kernels
def batch_step_log_probs(
    model, params, x, mask, inputs=None, initial_state=None, source=None, *, training=False,
    key=None,
):  # fmt: skip
    """Per-step log-likelihoods of a padded batch and each row's final state.

    The pure (un-jitted) kernel under :func:`score`, for code that builds its own
    compiled step (fitting, evaluation): no validation, arrays already rectangular.

    Args:
        x: (B, T, *event) observations (padding must hold valid values, e.g. 0).
        mask: (B, T) boolean prefix mask.
        inputs: (B, T, input_dim) or None.
        initial_state: batched state pytree (B, ...) or None for the model's own.
        source: ``(source (B, S, ...), source_mask (B, S))`` for a conditional model:
            each row starts from ``model.source_state`` (unless ``initial_state``).
        training, key: the training loss's view (``model.training_log_probs`` with
            ``key``: dropout and other training noise on); False: the model's
            likelihood, deterministic.

    Returns:
        (log_probs (B, T) with zeros where masked, final states (B, ...)).
    """
    if initial_state is None and source is not None:
        initial_state = start_states(model, params, x.shape[0], source)

    if training:
        lps, after = model.training_log_probs(params, initial_state, x, inputs, key=key)
    else:
        lps, after = model.batch_sequence_log_probs(params, initial_state, x, inputs)
    lps = jnp.where(mask, lps, jnp.zeros((), lps.dtype))

    def final_state(after_b, mb, hb):
        h0 = model.initial_state(params) if hb is None else hb
        n = jnp.sum(mb)
        last = jnp.maximum(n - 1, 0)
        return jax.tree.map(lambda hs, h: jnp.where(n > 0, hs[last], h), after_b, h0)

    final = jax.vmap(final_state)(after, mask, initial_state)
    # Values a traced call could not check make the row NaN, never a plausible number.
    bad = jax.vmap(lambda xb, mb: invalid_row(model, xb, mb))(x, mask)
    return jax.tree.map(lambda a: _poison(a, bad.reshape(bad.shape + (1,) * (a.ndim - 1))),
                        (lps, final))  # fmt: skip


def invalid_row(model, x, mask) -> jax.Array:
    """True when one row (x (T, *event), mask (T,)) holds what eager validation would
    refuse and a traced call cannot: a token id outside [0, vocab_size) on a valid step,
    or a mask that is not a prefix (a valid step after a masked one)."""
    hole = jnp.any(mask[1:] & ~mask[:-1])
    if not model.head.is_token:
        return hole
    vocab = model.head.vocab_size
    return hole | jnp.any(mask & ((x < 0) | (x >= vocab)))


def _poison(a, bad):
    if not jnp.issubdtype(a.dtype, jnp.inexact):
        return a
    return jnp.where(bad, jnp.full((), jnp.nan, a.dtype), a)


def poison_invalid_rows(model, out, x, mask):
    """``out`` (B, ...) with NaN in the rows of the batch (x (B, T, ...), mask (B, T))
    that :func:`invalid_row` flags; integer arrays are returned unchanged."""
    bad = jax.vmap(lambda xb, mb: invalid_row(model, xb, mb))(x, mask)
    return _poison(out, bad.reshape(bad.shape + (1,) * (jnp.ndim(out) - 1)))


@functools.partial(jax.jit, static_argnums=0)
def _score_kernel(model, params, x, mask, inputs, initial_state, source=None):
    lps, final = batch_step_log_probs(model, params, x, mask, inputs, initial_state, source)
    return pairwise_sum(lps, axis=-1), lps, final


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _sample_kernel(model, params, keys, states, num_timesteps, temperature, inputs):
    # numpyro draws in JAX's default float (float64 under x64) whatever the parameters'
    # dtype: real draws take the parameters' dtype, as as_batch gives observed data;
    # integer draws (tokens, counts) keep theirs.
    obs_dtype = jax.tree.leaves(params)[0].dtype

    def chain(key, h, us):
        def step(h, ku):
            k, u = ku
            d = model.emission(params, h, u)
            tempered = temper(d, temperature)
            x = tempered if isinstance(tempered, jax.Array) else tempered.sample(k)
            if jnp.issubdtype(x.dtype, jnp.floating):
                x = x.astype(obs_dtype)
            h_next = model.update(params, h, x, u)
            return jax.tree.map(lambda new, old: new.astype(old.dtype), h_next, h), x

        return jax.lax.scan(step, h, (jax.random.split(key, num_timesteps), us))[1]

    return jax.vmap(chain)(keys, states, inputs)


# ------------------------------------------------------------------- public API
def as_batch(model: SequenceModel, params, x, mask=None, inputs=None, *, name="x"):
    """Validate params and data at the API boundary; return a rectangular
    :class:`probseq.validation.Batch` (x (B, T, ...), mask (B, T), inputs, batched)
    with real-valued observations cast to the parameters' dtype."""
    validation.check_params(model, params)
    batch = validation.prepare_batch(model, x, mask, inputs, name=name)
    if model.head.is_token:
        return batch
    return batch._replace(x=batch.x.astype(jax.tree.leaves(params)[0].dtype))


def _prepare_state(model, params, initial_state, batch: validation.Batch):
    if initial_state is None:
        return None
    if model.takes_source:
        raise ValueError(f"{model!r} starts from its source: pass source=, not initial_state=.")
    bsz = batch.x.shape[0]
    template = jax.eval_shape(model.initial_state, params)
    leaf, want = jax.tree.leaves(initial_state)[0], jax.tree.leaves(template)[0]
    if batch.batched and jnp.ndim(leaf) == len(want.shape) + 1:
        validation.check_state(model, params, initial_state, (bsz,))
        return initial_state
    # One unbatched state: every sequence of the batch starts from it.
    validation.check_state(model, params, initial_state, ())
    return jax.tree.map(
        lambda a: jnp.broadcast_to(jnp.asarray(a), (bsz,) + jnp.shape(a)), initial_state
    )


def score(
    model: SequenceModel,
    params,
    x,
    mask=None,
    *,
    inputs=None,
    initial_state=None,
    mesh=None,
    source=None,
    source_mask=None,
) -> ScoreResult:
    """Filter sequences through ``model``: totals, per-step terms and final states.

    Args:
        model: any probseq model.
        params: its parameter pytree.
        x: one sequence (T,) / (T, D), a batch (B, T) / (B, T, D), or a list of
            unequal-length sequences (padded here).
        mask: optional (B, T) boolean, True on valid steps; each row is a prefix
            (ragged sequences padded at the end).
        inputs: per-step conditioning u_t, (T, input_dim) or (B, T, input_dim), for
            models built with ``input_dim > 0``.
        initial_state: continue from this state (e.g. a previous ``final_state``)
            instead of ``model.initial_state(params)``.
        mesh: a ``jax.sharding.Mesh``: split the batch over its devices (parameters
            replicated); the same results as one device (:mod:`probseq.sharding`).
        source, source_mask: for a conditional model (``model.takes_source``, e.g.
            :class:`probseq.Seq2Seq`), the source of each target sequence: one source
            for one sequence, a batch (B, S, ...) with an optional (B, S) mask, or a
            list of unequal-length sources.

    Returns:
        A :class:`ScoreResult`.

    What a traced call checks: called eagerly, the arrays are validated (shapes, token
    ids in [0, vocab_size), finite values, prefix masks) and bad input raises a
    ValueError. Under ``jax.jit`` / ``grad`` / ``vmap`` only shapes and dtypes can be
    checked; a row with a token id outside [0, vocab_size) on a valid step, or whose
    mask is not a prefix, then gets NaN log-likelihoods and a NaN final state (never a
    clamped, plausible number). NaN or inf in real-valued data give NaN arithmetically.
    """
    mesh = sharding.check_mesh(mesh)
    batch = as_batch(model, params, x, mask, inputs)
    h0 = _prepare_state(model, params, initial_state, batch)
    src = prepare_source(model, source, source_mask, batch)
    src = None if src is None else (src.x, src.mask)
    if mesh is None:
        total, lps, final = _score_kernel(model, params, batch.x, batch.mask, batch.inputs, h0, src)
    else:
        n = batch.x.shape[0]
        xs, ms, us, hs, ss = sharding.shard_batch(mesh, batch.x, batch.mask, batch.inputs, h0, src)
        out = _score_kernel(model, sharding.replicate(mesh, params), xs, ms, us, hs, ss)
        if sharding.is_multiprocess(mesh):  # this process's sequences, as it passed them
            total, lps, final = jax.tree.map(jnp.asarray, sharding.local_rows(mesh, out, n))
        else:
            total, lps, final = jax.tree.map(lambda a: a[:n], out)
    if not batch.batched:
        return ScoreResult(total[0], lps[0], jax.tree.map(lambda a: a[0], final))
    return ScoreResult(total, lps, final)


def log_prob(
    model: SequenceModel,
    params,
    x,
    mask=None,
    *,
    inputs=None,
    initial_state=None,
    mesh=None,
    source=None,
    source_mask=None,
):
    """Total log-likelihood log p(x_{1:T}) of each sequence: () or (B,).

    Accepts the same inputs as :func:`score`, with the same checks (eager: ValueError;
    traced: a NaN total for a row with an out-of-range token or a holed mask). Example::

        lp = probseq.log_prob(model, params, x)          # x: (B, T) tokens
        lp = probseq.log_prob(model, params, [x1, x2])   # ragged, padded for you
    """
    return score(
        model, params, x, mask, inputs=inputs, initial_state=initial_state, mesh=mesh,
        source=source, source_mask=source_mask,
    ).log_prob  # fmt: skip


def step_log_probs(
    model: SequenceModel,
    params,
    x,
    mask=None,
    *,
    inputs=None,
    initial_state=None,
    mesh=None,
    source=None,
    source_mask=None,
):
    """log p(x_t | x_<t) for every step: (T,) or (B, T), 0 where masked."""
    return score(
        model, params, x, mask, inputs=inputs, initial_state=initial_state, mesh=mesh,
        source=source, source_mask=source_mask,
    ).step_log_probs  # fmt: skip


def sample(
    model: SequenceModel,
    params,
    key: jax.Array,
    num_timesteps: int,
    *,
    num_samples: int | None = None,
    prefix=None,
    temperature: float = 1.0,
    inputs=None,
    initial_state=None,
    source=None,
    source_mask=None,
):
    """Ancestral sampling: draw x_t ~ p(x_t | h_t), then h_{t+1} = update(h_t, x_t).

    Args:
        model, params: the model.
        key: a PRNG key (``jax.random.key(seed)``).
        num_timesteps: number of new steps to draw.
        num_samples: independent draws per starting point (None: a single draw,
            no sample axis).
        prefix: a sequence (T0,) or batch (B, T0) (list of ragged ones allowed) to
            condition on; sampling continues after its last valid step.
        temperature: 1 samples the model; < 1 sharpens, > 1 flattens; 0 is greedy.
        inputs: future conditioning inputs (num_timesteps, input_dim) or
            (B, num_timesteps, input_dim) for conditional models.
        initial_state: start from this state instead (not with ``prefix``).
        source, source_mask: for a conditional model, the source(s) to sample
            targets for (one, a batch (B, S, ...) with a mask, or a list); a batch
            gives one starting point per source, like a batched ``prefix``.

    Returns:
        The ``num_timesteps`` new steps that follow the prefix, shaped
        ``(num_samples,)? + (B,)? + (num_timesteps,) + event_shape``.
    """
    validation.check_params(model, params)
    validation.check_key(key)
    num_timesteps = validation.check_int("num_timesteps", num_timesteps)
    num_samples = validation.check_int("num_samples", num_samples, allow_none=True)
    if (
        not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature=}")
    if prefix is not None and initial_state is not None:
        raise ValueError("give either prefix= or initial_state=, not both.")
    if initial_state is not None and (source is not None or model.takes_source):
        raise ValueError(f"{model!r} starts from its source: pass source=, not initial_state=.")

    if prefix is not None:
        res = score(model, params, prefix, source=source, source_mask=source_mask)
        check_possible(res, "prefix")
        batched = res.log_prob.ndim == 1
        states = res.final_state if batched else jax.tree.map(lambda a: a[None], res.final_state)
    elif source is not None or model.takes_source:
        states, batched = source_start_states(model, params, source, source_mask)
    elif initial_state is not None:
        template = jax.eval_shape(model.initial_state, params)
        extra = jnp.ndim(jax.tree.leaves(initial_state)[0]) - jnp.ndim(jax.tree.leaves(template)[0])
        batched = extra == 1
        lead = (jax.tree.leaves(initial_state)[0].shape[0],) if batched else ()
        validation.check_state(model, params, initial_state, lead)
        states = (
            initial_state
            if batched
            else jax.tree.map(lambda a: jnp.asarray(a)[None], initial_state)
        )
    else:
        batched = False
        states = jax.tree.map(lambda a: a[None], model.initial_state(params))
    num_starts = jax.tree.leaves(states)[0].shape[0]
    draws = 1 if num_samples is None else num_samples
    memory.check_fits(
        sample_bytes(
            model,
            params,
            draws * num_starts,
            num_timesteps,
            state_bytes=memory.nbytes_of(states) // num_starts,
        ),  # fmt: skip
        f"sample(num_timesteps={num_timesteps}, num_samples={num_samples}) from "
        f"{num_starts} starting point(s)",
    )
    us = _prepare_future_inputs(model, inputs, num_timesteps, num_starts, batched)

    states = jax.tree.map(
        lambda a: jnp.broadcast_to(a[None], (draws,) + a.shape).reshape((-1,) + a.shape[1:]), states
    )
    if us is not None:
        us = jnp.broadcast_to(us[None], (draws,) + us.shape).reshape((-1,) + us.shape[1:])
    keys = jax.random.split(key, draws * num_starts)
    xs = _sample_kernel(model, params, keys, states, num_timesteps, float(temperature), us)
    lead = ((num_samples,) if num_samples is not None else ()) + ((num_starts,) if batched else ())
    return xs.reshape(lead + xs.shape[1:])


def sample_bytes(
    model: SequenceModel, params, num_chains: int, num_timesteps: int, *, state_bytes=None
) -> int:
    """Estimated peak bytes of drawing ``num_timesteps`` steps for ``num_chains`` chains:
    parameters, one state per chain (``state_bytes``; None: the size of
    ``initial_state(params)``), a PRNG key (8 bytes) per step and the draws, held
    twice (the scan's stacked output and the returned array)."""
    state = state_bytes
    if state is None:
        state = memory.nbytes_of(jax.eval_shape(model.initial_state, params))
    if model.head.is_token:
        step = 4  # int32 ids
    else:
        itemsize = jax.tree.leaves(params)[0].dtype.itemsize
        step = math.prod(model.head.event_shape) * itemsize
    return memory.nbytes_of(params) + num_chains * (state + num_timesteps * (8 + 2 * step))


def check_possible(res: ScoreResult, name: str) -> None:
    """Refuse to continue a sequence the model gives probability 0 (or a NaN score):
    its state after that step is undefined (an HMM's forward message is all zeros), so
    nothing sampled or forecast from it would mean anything."""
    lp = np.atleast_1d(np.asarray(res.log_prob))
    bad = ~np.isfinite(lp)
    if not bad.any():
        return
    row = int(np.flatnonzero(bad)[0])
    steps = np.atleast_2d(np.asarray(res.step_log_probs))[row]
    first = np.flatnonzero(~np.isfinite(steps))
    where = f" at step {int(first[0])}" if first.size else ""
    seq = f"sequence {row} of the {name}" if lp.size > 1 else f"the {name}"
    raise ValueError(
        f"{seq} is impossible under the model (log-likelihood {lp[row]}{where}), so "
        "nothing can be sampled or forecast after it; an HMM fitted without a prior gives "
        "probability 0 to symbols unseen in training: fit with a Dirichlet prior "
        "(e.g. prior={'emission': 1.1}) or drop such symbols."
    )


def _prepare_future_inputs(model, inputs, num_timesteps, num_starts, batched):
    expected = ((num_starts,) if batched else ()) + (num_timesteps, model.input_dim)
    if not validation.check_inputs(
        model, inputs, expected, what="future inputs", note="for sampling"
    ):
        return None
    u = jnp.asarray(inputs, dtype=jnp.result_type(float))
    return u if batched else u[None]
