r"""Minibatch gradient fitting of the negative log-likelihood, for every model.

:func:`fit_sgd` minimizes the loss per valid token

.. math::  \mathcal{L}(\theta) = -\frac{1}{N_\text{tokens}}
           \sum_{b,t:\ \text{mask}_{bt}} \log p_\theta(x_{bt} \mid x_{b,<t})

over minibatches of rows with any optax optimizer. Neural families and HMMs go
through the same code: an HMM's parameters are unconstrained logits.

How a fit runs:

* **Schedule.** Each epoch shuffles the rows (sequences) with a permutation drawn
  from ``fold_in(key, epoch)`` and cuts them into batches of ``batch_size``; a final
  partial batch is filled with fully masked rows, which contribute nothing. With
  ``bptt_length=L`` each batch is processed in windows of L steps, in order, one
  optimizer step per window (truncated backpropagation through time, TBPTT): the
  state at the end of a window starts the next one behind ``jax.lax.stop_gradient``;
  a row whose sequence has ended has an all-False mask in later windows and keeps
  its state. Windows past the longest row of a batch are not run.
* **Compilation.** One compiled function runs ``steps_per_call`` optimizer steps as
  a ``lax.scan``. It is lowered and compiled on first use, and the executable is
  reused by every epoch: it cannot retrace (shapes never change: batches are padded,
  and the last call of an epoch runs no-op steps behind ``lax.cond``). Validation is
  a second compiled function over full sequences (no truncation). Both are kept
  across calls in a :class:`CompiledSteps` (the last 8; ``compiled=``, default
  :data:`SHARED`): a second ``fit_sgd`` with the same model, the same optimizer
  object (or the default one with the same settings) and the same shapes compiles
  nothing. The progress bar, checkpoints and early stopping act between calls.
* **The step.** Every optimizer step is the one :func:`sgd_update` takes (a pure
  function of an :class:`SGDState` and a batch), continued across TBPTT windows;
  ``fit_sgd`` is the driver around it.
* **Non-finite steps.** A step whose loss, gradient or update holds NaN or inf is
  skipped: parameters and optimizer state stay as they were, the step is counted in
  ``history["skipped_steps"]``. After ``max_nonfinite_steps`` consecutive skipped
  steps the fit stops by raising :class:`NonFiniteLossError`, which carries the last
  good parameters (``.params``) and the result so far (``.result``). (Resuming such a
  fit from its checkpoint restarts from the last good state with the count reset.)
* **Validation and early stopping.** After every epoch the validation
  log-likelihood per token is computed; the parameters of the best epoch are
  returned (not the last); ``patience`` epochs without improvement stop the fit.
* **Checkpoints.** With ``checkpoint_dir``, the parameters, optimizer state, carried
  TBPTT state, best parameters, position (epoch, step), RNG key and history are
  written atomically every ``checkpoint_every`` steps, after each epoch and at the
  end (:mod:`probseq.fit.checkpoint`: .npz + JSON, no pickle). Calling ``fit_sgd``
  again with the same directory, model, data, key and settings resumes where the
  previous fit stopped (even one killed with SIGKILL) and ends with the same
  parameters as an uninterrupted fit; a checkpoint that does not match is refused
  with a ValueError. The default optimizer's ``learning_rate`` and
  ``max_grad_norm``, ``patience`` and ``max_nonfinite_steps`` are checked too; a
  custom optimizer's hyperparameters cannot be: resume with the same optimizer.
  ``num_epochs`` may grow between calls (the fit continues).
* **Logging.** Each epoch's summary is logged at INFO level on the
  ``probseq.fit.sgd`` logger (silent unless logging is configured); ``progress=False``
  prints nothing.

Example:
    >>> import jax, numpy as np, probseq
    >>> from probseq.fit.sgd import fit_sgd
    >>> model = probseq.GRU(vocab_size=4, hidden_size=8)
    >>> params = model.init(jax.random.key(0))
    >>> x = np.tile(np.arange(4), (16, 5))          # 16 sequences 0 1 2 3 0 1 ...
    >>> result = fit_sgd(model, params, x, key=jax.random.key(1), num_epochs=3,
    ...                  batch_size=8, learning_rate=0.05, valid_data=x[:4],
    ...                  progress=False)
    >>> ll = result.history.log_likelihood_per_token
    >>> bool(ll[-1] > ll[0])
    True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm import tqdm

from probseq import sharding, validation
from probseq.core import as_batch, batch_step_log_probs, prepare_source, start_states
from probseq.fit import checkpoint, driver
from probseq.fit.compiled import SHARED, CompiledSteps, _BoundedCache, clear_compiled_cache  # noqa: F401
from probseq.fit.result import FitHistory, FitResult
from probseq.scan import pairwise_sum

__all__ = [
    "fit_sgd",
    "sgd_init",
    "sgd_update",
    "SGDState",
    "NonFiniteLossError",
    "window_log_probs",
    "truncated_step_log_probs",
    "CompiledSteps",
    "clear_compiled_cache",
]

PyTree = Any
_log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """The checkpoint in ``checkpoint_dir`` is of another fit (model, data, key or
    settings differ), so ``fit_sgd`` will not resume from it. Nothing was changed."""


class NonFiniteLossError(FloatingPointError):
    """``fit_sgd`` met ``max_nonfinite_steps`` consecutive NaN/inf steps and stopped.

    Nothing is lost: every skipped step left the parameters unchanged.

    Attributes:
        params: the last good parameters (after the last finite step).
        result: the :class:`FitResult` so far: ``params`` is the best by validation
            when an epoch was validated, else the last good parameters; history has
            the completed epochs; ``info["stopped"] == "nonfinite"``.
    """

    def __init__(self, message: str, *, params, result: FitResult):
        super().__init__(message)
        self.params = params
        self.result = result


# ---------------------------------------------------------------- pure TBPTT kernels
def window_log_probs(
    model, params, carried, reset, x, mask, inputs=None, source=None, *, training=False, key=None
):  # fmt: skip
    """Per-step log-likelihoods of one window of a batch, continuing a carried state.

    The window starts from ``model.initial_state(params)`` where ``reset`` is True
    (the first window of a sequence: the gradient reaches the initial state) and
    from ``jax.lax.stop_gradient(carried)`` otherwise, so no gradient crosses a
    window boundary.

    Args:
        model, params: the model.
        carried: batched state (B, ...) at the end of the previous window.
        reset: scalar bool: start the batch afresh.
        x: (B, L, *event) observations; mask: (B, L) prefix mask (a row may be all
            False: its state is kept); inputs: (B, L, input_dim) or None.
        source: ``(source (B, S, ...), source_mask (B, S))`` of a conditional model:
            a reset row starts from ``model.source_state`` instead.
        training, key: the training loss's view (``model.training_log_probs`` with
            this step's key); False: the model's likelihood.

    Returns:
        (log_probs (B, L) with zeros where masked, final states (B, ...)).
    """
    init = start_states(model, params, mask.shape[0], source)
    h0 = jax.tree.map(
        lambda i, c: jnp.where(
            reset, jnp.broadcast_to(i, c.shape).astype(c.dtype), jax.lax.stop_gradient(c)
        ),
        init,
        carried,
    )
    return batch_step_log_probs(model, params, x, mask, inputs, h0, training=training, key=key)


def truncated_step_log_probs(model, params, x, mask, bptt_length: int, inputs=None):
    """Per-step log-likelihoods computed window by window, as truncated BPTT sees them.

    Values equal :func:`probseq.core.batch_step_log_probs` on the whole sequences
    (the state is carried across windows); gradients do not cross windows (the
    carried state is behind ``stop_gradient``). A pure function of arrays.

    Args:
        x: (B, T, *event); mask: (B, T) prefix mask; inputs: (B, T, input_dim) or None.
        bptt_length: window length L (T need not be a multiple).

    Returns:
        (B, T) log-likelihoods, 0 where masked.

    Example:
        >>> import jax, jax.numpy as jnp, probseq
        >>> model = probseq.LSTM(vocab_size=3, hidden_size=4)
        >>> params = model.init(jax.random.key(0))
        >>> x, m = jnp.zeros((2, 6), int), jnp.ones((2, 6), bool)
        >>> truncated_step_log_probs(model, params, x, m, bptt_length=4).shape
        (2, 6)
    """
    bsz, num_timesteps = mask.shape
    num_windows = -(-num_timesteps // bptt_length)
    pad = num_windows * bptt_length - num_timesteps

    def windows(a):
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        a = a.reshape((bsz, num_windows, bptt_length) + a.shape[2:])
        return jnp.swapaxes(a, 0, 1)

    us = None if inputs is None else windows(inputs)
    carried = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (bsz,) + a.shape), model.initial_state(params)
    )

    def body(state, window):
        w, xw, mw, uw = window
        lps, final = window_log_probs(model, params, state, w == 0, xw, mw, uw)
        return final, lps

    _, lps = jax.lax.scan(body, carried, (jnp.arange(num_windows), windows(x), windows(mask), us))
    return jnp.swapaxes(lps, 0, 1).reshape(bsz, -1)[:, :num_timesteps]


# ------------------------------------------------------------------ compiled pieces
class _Windows(NamedTuple):
    """Training data cut into windows: x (W, N + 1, L, *event), mask (W, N + 1, L),
    inputs (W, N + 1, L, input_dim) or None. Row N is all padding (mask False).
    source: (x (N + 1, S, ...), mask (N + 1, S)) of a conditional model, or None."""

    x: jax.Array
    mask: jax.Array
    inputs: jax.Array | None
    source: Any = None


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _on_mesh(mesh, *trees):
    """Constrain axis 0 of every leaf to be split over ``mesh`` (no-op without one):
    inside a compiled step, each device then computes its share of the minibatch and
    XLA averages the gradients across devices."""
    if mesh is None:
        return trees

    def constrain(a):
        return jax.lax.with_sharding_constraint(a, sharding.batch_sharding(mesh, a.ndim))

    return tuple(None if t is None else jax.tree.map(constrain, t) for t in trees)


def _optimizer_step(
    model, optimizer, params, opt_state, carried, reset, x, mask, inputs, source, key
):
    """One step on the mean negative log-likelihood per valid step of a minibatch:
    (new params, new opt_state, final states, loss, total log-likelihood, finite).

    ``carried``/``reset``: the TBPTT state and where it restarts (True: every row
    starts from ``initial_state``). ``key``: this step's PRNG key for the training
    loss (``model.training_log_probs``). Optimizers that accept extra arguments
    (optax.chain, adam, ...) also get the loss as ``value=`` (for e.g.
    optax.contrib.reduce_on_plateau). ``finite`` is False when the loss, a gradient
    or an update is not finite: the caller keeps its old state then.
    """

    def loss_fn(p):
        lps, final = window_log_probs(
            model, p, carried, reset, x, mask, inputs, source, training=True, key=key
        )
        total = jnp.sum(lps)
        count = jnp.sum(mask)
        return -total / jnp.maximum(count, 1).astype(total.dtype), (total, final)

    (loss, (total, final)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    extra = {"value": loss} if isinstance(optimizer, optax.GradientTransformationExtraArgs) else {}
    updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
    ok = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(updates)
    return optax.apply_updates(params, updates), opt_state, final, loss, total, ok


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "opt_state", "step", "key", "carried", "nonfinite"],
    meta_fields=["model", "optimizer"],
)
@dataclasses.dataclass(frozen=True)
class SGDState:
    """Everything an SGD fit carries from step to step, one pytree (so
    ``jax.jit(sgd_update)`` compiles once per model and optimizer, and the state can be
    sharded, checkpointed or vmapped like any pytree); the model and the optimizer are
    static fields.

    params: the model's parameter pytree.
    opt_state: the optax state of ``optimizer``.
    step: () int32, updates applied so far (non-finite steps are not counted).
    key: the PRNG key the training loss's noise is split from at every step (dropout,
        scheduled sampling), or None (then a model whose loss draws noise refuses).
    carried: the TBPTT state (B, ...) a batch with ``reset=False`` continues, or None
        (every batch starts afresh).
    nonfinite: () int32, consecutive steps whose loss, gradient or update was not
        finite (skipped).
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: Any
    carried: Any
    nonfinite: jax.Array
    model: Any
    optimizer: Any

    def replace(self, **changes) -> SGDState:
        return dataclasses.replace(self, **changes)


class Window(NamedTuple):
    """One optimizer step's minibatch for :func:`sgd_update`: x (B, T, ...), mask (B, T),
    inputs (B, T, m) or None, a conditional model's ``source`` ``(source (B, S, ...),
    source_mask (B, S))`` or None, and ``reset``: True starts every row afresh; False
    continues the state's carried TBPTT state (the next window of the same rows)."""

    x: Any
    mask: Any
    inputs: Any = None
    source: Any = None
    reset: Any = True


def sgd_init(model, params, optimizer=None, *, key=None, carry_rows: int | None = None) -> SGDState:
    """The state of a user-written SGD loop (optax's ``init`` / numpyro's
    ``SVI.init`` shape): ``state = sgd_init(model, params, optimizer)``, then
    ``state, metrics = sgd_update(state, batch)`` as often as wanted.

    Args:
        model: any probseq model.
        params: its parameters.
        optimizer: any optax ``GradientTransformation``; None: fit_sgd's default
            (Adam 1e-3 after clipping the global gradient norm at 1); a step with a
            non-finite loss or gradient is skipped either way.
        key: PRNG key of the training loss's noise (split at every step); needed by a
            model whose loss draws noise (dropout), unused by the others.
        carry_rows: keep a TBPTT state of this many rows (the batch size), so that
            ``sgd_update(state, Window(..., reset=False))`` continues the previous
            window; None: every batch starts afresh.

    Example:
        >>> model = probseq.GRU(vocab_size=5, hidden_size=8)
        >>> state = probseq.sgd_init(model, model.init(jax.random.key(0)), optax.adam(1e-2))
        >>> x = jnp.zeros((4, 10), int); mask = jnp.ones((4, 10), bool)
        >>> state, metrics = jax.jit(probseq.sgd_update)(state, (x, mask))
    """
    validation.check_params(model, params)
    if key is not None:
        validation.check_key(key)
    if carry_rows is not None:
        _check_int("carry_rows", carry_rows)
    optimizer = _resolve_optimizer(optimizer, None, None)
    return _init_state(model, params, optimizer, key, carry_rows)


def _init_state(model, params, optimizer, key, carry_rows, source=None) -> SGDState:
    params = _strong(params)
    carried = None
    if carry_rows is not None:
        carried = _strong(start_states(model, params, carry_rows, source))
    zero = jnp.zeros((), jnp.int32)
    return SGDState(params, _strong(optimizer.init(params)), zero, key, carried, zero, model,
                    optimizer)  # fmt: skip


def sgd_update(state: SGDState, batch) -> tuple[SGDState, dict]:
    """One optimizer step on a minibatch: pure, jit-able, shardable - the step fit_sgd
    takes (it runs this function, TBPTT included).

    The loss is the mean negative log-likelihood per valid step, as the model's
    :meth:`~probseq.core.SequenceModel.training_log_probs` computes it with a key
    split from ``state.key``. A step whose loss, gradients or updates are not finite
    changes no parameter (``metrics["finite"]`` is False, ``state.nonfinite`` counts
    it).

    Args:
        state: from :func:`sgd_init` or a previous call.
        batch: a :class:`Window`, or ``(x, mask)`` / ``(x, mask, inputs)`` padded
            arrays (B, T, ...), (B, T), (B, T, input_dim) (e.g. from
            ``probseq.data.from_arrays``; a conditional model's adds its source:
            ``(x, mask, inputs, source, source_mask)``): whole sequences, each row
            starting afresh. Not validated here (it runs traced): validate once with
            ``probseq.log_prob``.

    Returns:
        (new state, metrics): ``loss`` (mean negative log-likelihood per step),
        ``log_likelihood`` (total over the batch), ``num_steps`` (valid steps),
        ``finite`` (whether the update was applied).
    """
    if not isinstance(batch, Window):
        x, mask, inputs, *source = (tuple(batch) + (None,))[: max(3, len(batch))]
        batch = Window(x, mask, inputs, tuple(source) or None, True)
    mask = jnp.asarray(batch.mask, bool)
    carried, reset = state.carried, batch.reset
    if carried is None:
        if reset is not True:
            raise ValueError(
                "sgd_update(state, Window(..., reset=False)) continues a carried TBPTT "
                "state, but this state has none: make it with sgd_init(..., carry_rows=B)."
            )
        carried = start_states(state.model, state.params, mask.shape[0], batch.source)
    key, step_key = (None, None) if state.key is None else jax.random.split(state.key)
    params, opt_state, final, loss, total, ok = _optimizer_step(
        state.model, state.optimizer, state.params, state.opt_state, carried, reset,
        batch.x, mask, batch.inputs, batch.source, step_key,
    )  # fmt: skip
    new = state.replace(
        params=_select(ok, params, state.params),
        opt_state=_select(ok, opt_state, state.opt_state),
        step=state.step + ok.astype(jnp.int32),
        key=key,
        carried=None if state.carried is None else _select(_all_finite(final), final, carried),
        nonfinite=jnp.where(ok, 0, state.nonfinite + 1).astype(jnp.int32),
    )
    metrics = {
        "loss": loss,
        "log_likelihood": total,
        "num_steps": jnp.sum(mask, dtype=jnp.int32),
        "finite": ok,
    }
    return new, metrics


@functools.cache
def _train_step(max_nonfinite_steps: int, mesh=None):
    """fit_sgd's step on the driver, as (update, done, constrain): ``update(state,
    (windows, (rows, w)))`` gathers window ``w`` of the batch ``rows`` and runs
    :func:`sgd_update` on it (a batch with no valid step changes nothing); ``done``:
    ``max_nonfinite_steps`` consecutive non-finite steps; ``constrain``: the state kept
    whole on every device of ``mesh``. Cached, so the driver finds its compiled chunk
    again."""
    acc_dtype = jnp.result_type(float)  # float64 under jax_enable_x64

    def update(state: SGDState, data_and_step):
        data, (row_ids, w) = data_and_step
        x, mask = data.x[w, row_ids], data.mask[w, row_ids]
        inputs = None if data.inputs is None else data.inputs[w, row_ids]
        source = None if data.source is None else tuple(a[row_ids] for a in data.source)
        x, mask, inputs, source = _on_mesh(mesh, x, mask, inputs, source)
        count = jnp.sum(mask, dtype=jnp.int32)

        def run(c: SGDState):
            new, metrics = sgd_update(c, Window(x, mask, inputs, source, w == 0))
            ok = metrics["finite"]
            total = jnp.where(ok, metrics["log_likelihood"], 0).astype(acc_dtype)
            return new, (total, ok, ~ok)

        def skip(c: SGDState):
            return c, (jnp.zeros((), acc_dtype), jnp.array(False), jnp.array(False))

        state, (total, ok, bad) = jax.lax.cond(count > 0, run, skip, state)
        return state, {"log_likelihood": total, "num_tokens": jnp.where(ok, count, 0),
                       "applied": ok, "skipped": bad}  # fmt: skip

    def done(state: SGDState):
        return state.nonfinite >= max_nonfinite_steps

    # the state keeps one layout on a mesh (replicated), so every call of the compiled
    # chunk gets the shardings it was compiled for
    constrain = None if mesh is None else functools.partial(_replicated, mesh)
    return update, done, constrain


def _replicated(mesh, tree):
    """``tree`` constrained to be whole on every device of ``mesh`` (None: as is)."""
    if mesh is None:
        return tree
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, whole), tree)


def _make_evaluate(model, mesh=None):
    def _evaluate(params, x, mask, inputs, source=None):
        def chunk(batch):
            x, mask, inputs, source = _on_mesh(mesh, *batch)
            lps, _ = batch_step_log_probs(model, params, x, mask, inputs, None, source)
            return jnp.sum(pairwise_sum(lps, axis=-1))

        return jax.lax.map(chunk, (x, mask, inputs, source))

    return _evaluate


def _evaluate_of(compiled, model, mesh):
    return compiled.get(("evaluate", model, mesh), lambda: _make_evaluate(model, mesh))


# ----------------------------------------------------------------------- host side
_check_int = validation.check_int
_check_positive_number = validation.check_positive_float


def _strong(tree):
    """Concrete arrays with fixed (non-weak) dtypes, so compiled calls always match."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.result_type(a)), tree)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


#: fit_sgd's loss noise is split from ``fold_in(key, LOSS_STREAM)``; the shuffles use
#: ``fold_in(key, epoch)`` (epochs never reach this number).
LOSS_STREAM = 0x7FFFFFFF


def _loss_key(key):
    """The first key of the training loss's noise, typed (a raw uint32 key is wrapped)."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return jax.random.fold_in(key, LOSS_STREAM)


def _key_data(key) -> list[int]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


def _windowed(a: np.ndarray, length: int, num_windows: int) -> np.ndarray:
    """(N, T, ...) -> (W, N + 1, L, ...), zero-padded in time, plus one padding row."""
    n, t = a.shape[:2]
    out = np.zeros((n + 1, num_windows * length) + a.shape[2:], a.dtype)
    out[:n, :t] = a
    out = out.reshape((n + 1, num_windows, length) + a.shape[2:])
    return np.swapaxes(out, 0, 1)


def _epoch_schedule(key, epoch, lengths, batch_size, window_len, shuffle):
    """(rows (S, B), windows (S,)): which rows and window each step of an epoch uses."""
    n = len(lengths)
    if shuffle:
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    else:
        order = np.arange(n)
    num_batches = -(-n // batch_size)
    padded = np.full(num_batches * batch_size, n, np.int32)  # row n: all padding
    padded[:n] = order
    batches = padded.reshape(num_batches, batch_size)
    longest = np.append(lengths, 0)[batches].max(axis=1)
    num_windows = -(-longest // window_len)
    rows = np.repeat(batches, num_windows, axis=0)
    windows = np.concatenate([np.arange(k, dtype=np.int32) for k in num_windows])
    return rows, windows


def _valid_chunks(batch, batch_size, source=None):
    """Validation data as (chunks, B, T, ...) with padding rows fully masked (and the
    source of a conditional model likewise; a padding row repeats source row 0)."""
    x, mask = np.asarray(batch.x), np.asarray(batch.mask)
    n = len(x)
    b = min(batch_size, n)
    chunks = -(-n // b)

    def pad(a):
        out = np.zeros((chunks * b,) + a.shape[1:], a.dtype)
        out[:n] = a
        return jnp.asarray(out.reshape((chunks, b) + a.shape[1:]))

    inputs = None if batch.inputs is None else pad(np.asarray(batch.inputs))
    if source is not None:
        source = tuple(
            jnp.asarray(_pad_rows(np.asarray(a), chunks * b).reshape((chunks, b) + a.shape[1:]))
            for a in source[:2]
        )
    return pad(x), pad(mask), inputs, source, int(mask.sum())


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` (N, ...) with rows appended up to n, copies of row 0: a source a padding
    row can encode (an all-False source mask would have nothing to attend to)."""
    return np.concatenate([a, np.repeat(a[:1], n - len(a), axis=0)]) if n > len(a) else a


def _resolve_optimizer(optimizer, learning_rate, max_grad_norm, compiled=None):
    """The user's optimizer, or the default built here (never at import time)."""
    if optimizer is None:
        learning_rate = 1e-3 if learning_rate is None else learning_rate
        max_grad_norm = 1.0 if max_grad_norm is None else max_grad_norm
        if not callable(learning_rate):  # an optax schedule is fine too
            _check_positive_number("learning_rate", learning_rate)
        _check_positive_number("max_grad_norm", max_grad_norm)
        return (compiled or SHARED).default_optimizer(learning_rate, max_grad_norm)
    if learning_rate is not None or max_grad_norm is not None:
        raise ValueError(
            "learning_rate= and max_grad_norm= configure the default optimizer; with "
            "optimizer= given, put them in it, e.g. optax.chain("
            "optax.clip_by_global_norm(1.0), optax.adam(1e-3))."
        )
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise ValueError(
            "optimizer must be an optax GradientTransformation (with init and update), "
            f"got {type(optimizer).__name__}."
        )
    return optimizer


def _new_run(has_valid: bool) -> dict:
    """The JSON-serializable progress of a fit (what a checkpoint's metadata holds)."""
    columns = ["iteration", "log_likelihood", "num_tokens"]
    columns += ["valid_log_likelihood", "valid_num_tokens"] if has_valid else []
    columns += ["num_steps", "skipped_steps", "tokens_per_s", "time_s"]
    return {
        "epoch": 0,  # epochs completed
        "step_in_epoch": 0,  # steps of the current epoch's schedule done
        "num_steps": 0,  # optimizer steps applied
        "num_skipped": 0,  # non-finite steps skipped
        "consecutive_nonfinite": 0,
        "epoch_acc": _new_epoch_acc(),
        "best_epoch": None,
        "best_valid_log_lik": None,
        "initial_valid_log_lik": None,
        "epochs_since_best": 0,
        "status": "running",
        "history": {name: [] for name in columns},
    }


def _new_epoch_acc() -> dict:
    return {"log_lik": 0.0, "tokens": 0, "skipped": 0, "time_s": 0.0}


def _fingerprint(model, train, valid, batch_size, bptt_length, shuffle, key) -> dict:
    """What must be equal for a checkpoint to be resumed by this call."""

    def describe(batch):
        if batch is None:
            return None
        return {
            "shape": list(np.shape(batch.x)),
            "sha256": _digest(batch.x, batch.mask, batch.inputs),
        }

    return {
        "model": repr(model),
        "data": describe(train),
        "valid_data": describe(valid),
        "batch_size": batch_size,
        "bptt_length": bptt_length,
        "shuffle": shuffle,
        "key": _key_data(key),
    }


def _history(columns: dict) -> FitHistory:
    """The FitHistory of a run's history columns (lists, as a checkpoint stores them)."""
    return FitHistory.from_totals("fit_sgd", **columns)


def _current_columns(columns: dict, valid_tokens: int | None) -> dict:
    """A checkpoint's history columns under this version's names (a checkpoint
    written before FitHistory stored fit_sgd's old per-token columns; ``valid_tokens``,
    the tokens of this fit's validation data, gives their validation totals)."""
    if "log_likelihood" in columns:
        return columns
    h = FitHistory.from_dict(columns, valid_num_tokens=valid_tokens)
    return {n: h[n].tolist() for n in _new_run(valid_tokens is not None)["history"]}


def fit_sgd(
    model,
    params,
    data,
    *,
    key,
    num_epochs: int,
    batch_size: int,
    optimizer=None,
    learning_rate: float | None = None,
    max_grad_norm: float | None = None,
    mask=None,
    inputs=None,
    valid_data=None,
    valid_mask=None,
    valid_inputs=None,
    source=None,
    source_mask=None,
    valid_source=None,
    valid_source_mask=None,
    bptt_length: int | None = None,
    shuffle: bool = True,
    patience: int | None = None,
    max_nonfinite_steps: int = 10,
    steps_per_call: int = 16,
    progress: bool = True,
    checkpoint_dir=None,
    checkpoint_every: int = 500,
    mesh=None,
    compiled: CompiledSteps | None = None,
) -> FitResult:
    """Fit ``model`` by minibatch gradient descent on the negative log-likelihood.

    See the module docstring for the schedule, TBPTT, non-finite steps and
    checkpoints.

    Args:
        model: any probseq model (neural family or HMM).
        params: its starting parameters (``model.init(key)``).
        data: training sequences in any form :func:`probseq.log_prob` accepts: an
            array (B, T) / (B, T, D) with an optional prefix ``mask``, one sequence,
            or a list of unequal-length sequences.
        key: PRNG key for the shuffles (epoch e uses ``fold_in(key, e)``).
        num_epochs: passes over the training data.
        batch_size: sequences per step (at most the number of sequences is used).
        optimizer: any optax ``GradientTransformation``. Default, built on first use
            and reused by later calls with the same settings:
            ``optax.chain(optax.clip_by_global_norm(max_grad_norm),
            optax.adam(learning_rate))``.
        learning_rate: Adam's step size for the default optimizer (default 1e-3).
        max_grad_norm: global-norm clipping for the default optimizer (default 1.0).
        mask, inputs: training mask and conditioning inputs, as for ``log_prob``.
        valid_data, valid_mask, valid_inputs: held-out sequences, scored in full
            after every epoch; enable best-parameter selection and ``patience``.
        source, source_mask, valid_source, valid_source_mask: for a conditional
            model (:class:`probseq.Seq2Seq`, ...), each sequence's source, as for
            ``log_prob``; the encoder is trained through ``model.source_state``.
        bptt_length: truncated BPTT window length (None: whole sequences).
        shuffle: shuffle the rows every epoch (False: data order).
        patience: stop after this many epochs without a better validation score.
        max_nonfinite_steps: consecutive NaN/inf steps before NonFiniteLossError.
        steps_per_call: optimizer steps per compiled call; the progress bar and
            checkpoints act between calls.
        progress: show a tqdm progress bar (on stderr); False prints nothing.
        checkpoint_dir: directory for the checkpoint; resumes from it if present.
        checkpoint_every: write a checkpoint after about this many steps (also
            after every epoch and at the end).
        mesh: a ``jax.sharding.Mesh``: every minibatch (``batch_size`` is the global
            size) is split over its devices, parameters and optimizer state are
            replicated, and gradients are averaged across devices by XLA; the same
            fit as on one device (:mod:`probseq.sharding`). With a mesh over several
            processes, each passes its share of ``data`` / ``valid_data``.
        compiled: where the compiled steps are kept across calls
            (:class:`CompiledSteps`; default :data:`SHARED`).

    Returns:
        :class:`FitResult` with ``params`` the best by validation (the last without
        validation data), ``history`` a :class:`FitHistory` with one entry per epoch
        — ``iteration`` (the epoch, from 1), ``log_likelihood`` (summed over the
        epoch's steps) and ``log_likelihood_per_token`` (over its ``num_tokens``),
        ``valid_log_likelihood`` / ``valid_log_likelihood_per_token`` (after the
        epoch; NaN without validation data), ``num_steps`` (cumulative),
        ``skipped_steps``, ``tokens_per_s``, ``time_s`` — and ``info``
        with ``stopped`` ("completed" or "early_stopping"), ``best_epoch``,
        ``best_valid_log_lik``, ``initial_valid_log_lik``, ``num_steps``,
        ``num_skipped_steps``, ``batch_size``, ``steps_per_call``,
        ``compile_time_s``, ``resumed_from_step``, ``checkpoint``,
        ``last_params`` and ``opt_state`` (to continue training).

    Raises:
        ValueError: invalid arguments or data (before any compilation), or a
            checkpoint in ``checkpoint_dir`` that does not match this fit
            (:class:`CheckpointMismatchError`, a ValueError).
        NonFiniteLossError: ``max_nonfinite_steps`` consecutive non-finite steps;
            carries ``.params`` (last good) and ``.result``.

    Example:
        >>> import jax, probseq
        >>> from probseq.fit.sgd import fit_sgd
        >>> hmm = probseq.CategoricalHMM(num_states=2, vocab_size=3)
        >>> x = probseq.sample(hmm, hmm.init(jax.random.key(0)), jax.random.key(1), 50,
        ...                    num_samples=32)
        >>> result = fit_sgd(hmm, hmm.init(jax.random.key(2)), x, key=jax.random.key(3),
        ...                  num_epochs=2, batch_size=8, learning_rate=0.05,
        ...                  progress=False)
        >>> result.history.fitter, result.history.iteration.tolist()
        ('fit_sgd', [1, 2])
    """
    # ---- static settings, then data: all checks before any compilation
    _check_settings(
        dict(num_epochs=num_epochs, batch_size=batch_size, steps_per_call=steps_per_call,
             max_nonfinite_steps=max_nonfinite_steps, checkpoint_every=checkpoint_every),
        dict(bptt_length=bptt_length, patience=patience),
        dict(shuffle=shuffle, progress=progress),
    )  # fmt: skip
    mesh = sharding.check_mesh(mesh)
    validation.check_key(key)
    if not isinstance(compiled, CompiledSteps | None):
        raise ValueError(f"compiled must be a CompiledSteps or None; got {compiled!r}.")
    compiled = compiled or SHARED
    custom_optimizer = optimizer is not None
    optimizer = _resolve_optimizer(optimizer, learning_rate, max_grad_norm, compiled)
    if patience is not None and valid_data is None:
        raise ValueError("patience= needs valid_data= to measure improvement on.")
    if valid_data is None and (valid_mask is not None or valid_inputs is not None):
        raise ValueError("valid_mask= / valid_inputs= were given without valid_data=.")
    if valid_data is None and (valid_source is not None or valid_source_mask is not None):
        raise ValueError("valid_source= / valid_source_mask= were given without valid_data=.")
    train = _batch(model, params, mesh, data, mask, inputs, "data")
    valid = None
    if valid_data is not None:
        valid = _batch(model, params, mesh, valid_data, valid_mask, valid_inputs, "valid_data")
    train_source = prepare_source(model, source, source_mask, train)
    valid_source = None if valid is None else prepare_source(
        model, valid_source, valid_source_mask, valid
    )  # fmt: skip
    if train_source is not None and sharding.is_multiprocess(mesh):
        raise ValueError("fit_sgd(source=...) on a multi-process mesh is not supported.")

    # ---- layout, state (fresh or from a checkpoint), compiled steps (on first use)
    saving = None if checkpoint_dir is None else checkpoint_every
    plan = _plan(train, key, batch_size, bptt_length, shuffle, steps_per_call, saving)
    if train_source is not None:  # a conditional model's sources, by row (N + 1: padding)
        rows = tuple(jnp.asarray(_pad_rows(np.asarray(a), len(a) + 1)) for a in train_source[:2])
        plan = plan._replace(windows=plan.windows._replace(source=rows))
    fingerprint = None
    if checkpoint_dir is not None:  # what a checkpoint must match to be resumed
        settings = {  # the default optimizer's and the stopping settings
            "optimizer": "custom" if custom_optimizer else "default",
            "learning_rate": None if custom_optimizer else learning_rate,
            "max_grad_norm": None if custom_optimizer else max_grad_norm,
            "patience": patience,
            "max_nonfinite_steps": max_nonfinite_steps,
        }
        window = plan.window_len if bptt_length else None
        fingerprint = _fingerprint(model, train, valid, plan.batch_size, window, shuffle, key)
        fingerprint["settings"] = settings
        for name, src in (("data", train_source), ("valid_data", valid_source)):
            if src is not None:
                fingerprint[name]["source_sha256"] = _digest(src.x, src.mask)
    fit = _start(model, params, optimizer, plan, valid is not None, checkpoint_dir,
                 fingerprint, checkpoint_every, sharding.is_multiprocess(mesh),
                 _loss_key(key), max_nonfinite_steps)  # fmt: skip
    update, done, constrain = _train_step(max_nonfinite_steps, mesh)
    evaluate = _evaluate_of(compiled, model, mesh)
    place = (lambda tree: tree) if mesh is None else functools.partial(sharding.replicate, mesh)
    fit.state, windows = place((fit.state, plan.windows))
    if valid is not None:
        *valid_chunks, valid_tokens = _valid_chunks(valid, batch_size, valid_source)
        valid_chunks = place(tuple(valid_chunks))

    def valid_total(p):  # (total log-likelihood, tokens) of the validation data
        return float(np.asarray(evaluate(p, *valid_chunks), np.float64).sum()), valid_tokens

    def summary(stopped):
        extra = {
            "batch_size": plan.batch_size,
            "steps_per_call": plan.steps_per_call,
            "compile_time_s": fit.compile_time_s + evaluate.compile_time_s,
        }
        return fit.result(stopped, extra)

    fit.run["history"] = _current_columns(
        fit.run["history"], None if valid is None else valid_tokens
    )
    if valid is not None and fit.run["initial_valid_log_lik"] is None:
        total, tokens = valid_total(fit.state.params)
        fit.run["initial_valid_log_lik"] = total / tokens

    # ---- the loop: epochs of compiled chunks; validation, history, checkpoints between
    bar = tqdm(
        total=num_epochs * plan.first_epoch_steps,
        unit="step",
        disable=not (progress and jax.process_index() == 0),
    )
    bar.update(min(fit.run["num_steps"] + fit.run["num_skipped"], bar.total))
    fit.bar = bar
    stopped = "completed"
    try:
        while fit.run["epoch"] < num_epochs:
            if patience is not None and fit.run["epochs_since_best"] >= patience:
                stopped = "early_stopping"
                break
            rows, steps = _epoch_schedule(
                key, fit.run["epoch"], plan.lengths, plan.batch_size, plan.window_len, shuffle
            )
            bar.total = (
                bar.n - fit.run["step_in_epoch"] + (num_epochs - fit.run["epoch"]) * len(steps)
            )
            bar.set_description(f"epoch {fit.run['epoch'] + 1}/{num_epochs}")
            out = driver.run(
                update, done, fit.state, windows, num_steps=len(steps),
                steps_per_call=plan.steps_per_call, name="_train_chunk", compiled=compiled,
                xs=(rows, steps), position=fit.run["step_in_epoch"], place=place,
                constrain=constrain, after_call=fit.record_call, bar=bar,
            )  # fmt: skip
            fit.compile_time_s += out.compile_time_s
            if bool(done(fit.state)):
                fit.save("nonfinite")
                raise _nonfinite_error(fit, summary("nonfinite"))
            valid_ll = None if valid is None else valid_total(fit.state.params)
            fit.end_epoch(valid_ll, num_epochs, bar)
            fit.save("running")
        fit.save(stopped)
    finally:
        bar.close()
    return summary(stopped)


def _check_settings(positive: dict, optional: dict, flags: dict) -> None:
    """Positive ints, positive ints or None, and bools, by name."""
    for name, value in positive.items():
        _check_int(name, value)
    for name, value in optional.items():
        _check_int(name, value, allow_none=True)
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {name}={flag!r}")


def _batch(model, params, mesh, data, mask, inputs, name):
    """Validated, padded data; with a multi-process mesh, every process's share of it."""
    batch = as_batch(model, params, data, mask, inputs, name=name)
    if not sharding.is_multiprocess(mesh):
        return batch
    mask, x, inputs = sharding.gather_batch(mesh, batch.mask, batch.x, batch.inputs)
    return batch._replace(x=x, mask=mask, inputs=inputs)


class _Plan(NamedTuple):
    """How the training data is cut: windows (W, N + 1, L, ...) on the device, the row
    lengths (N,), the batch size and window length used, and the optimizer steps per
    compiled call (balanced over the first epoch)."""

    windows: _Windows
    lengths: np.ndarray
    batch_size: int
    window_len: int
    steps_per_call: int
    first_epoch_steps: int


def _plan(train, key, batch_size, bptt_length, shuffle, steps_per_call, checkpoint_every):
    x, mask = np.asarray(train.x), np.asarray(train.mask)
    num_rows, num_timesteps = mask.shape
    lengths = mask.sum(axis=1)
    window_len = num_timesteps if bptt_length is None else min(int(bptt_length), num_timesteps)
    num_windows = -(-num_timesteps // window_len)
    bsz = int(min(batch_size, num_rows))
    cut = [
        None if a is None else jnp.asarray(_windowed(np.asarray(a), window_len, num_windows))
        for a in (x, mask, train.inputs)
    ]
    first = len(_epoch_schedule(key, 0, lengths, bsz, window_len, shuffle)[1])
    max_k = steps_per_call if checkpoint_every is None else min(steps_per_call, checkpoint_every)
    k_steps = -(-first // -(-first // max_k))  # balanced calls per epoch
    return _Plan(_Windows(*cut), lengths, bsz, window_len, k_steps, first)


def _chunk_schedule(plan: _Plan, rows, windows, start):
    """Rows (K, B) and windows (K,) of the next compiled call; steps past the epoch's
    end use the padding row (all masked: no-ops)."""
    k = min(plan.steps_per_call, len(windows) - start)
    chunk_rows = np.full((plan.steps_per_call, plan.batch_size), len(plan.lengths), np.int32)
    chunk_windows = np.zeros((plan.steps_per_call,), np.int32)
    chunk_rows[:k], chunk_windows[:k] = rows[start : start + k], windows[start : start + k]
    return chunk_rows, chunk_windows


def _start(
    model,
    params,
    optimizer,
    plan,
    has_valid,
    checkpoint_dir,
    fingerprint,
    checkpoint_every,
    multiprocess,
    loss_key,
    max_nonfinite_steps,
) -> _Fit:
    """A fresh fit, or the one in ``checkpoint_dir`` (checked against ``fingerprint``)."""
    source = plan.windows.source
    first = None if source is None else tuple(a[: plan.batch_size] for a in source)
    state = _init_state(model, params, optimizer, loss_key, plan.batch_size, first)
    best_params, run, resumed_from, ckpt = state.params, _new_run(has_valid), None, None
    if checkpoint_dir is not None:
        if jax.process_index() == 0 and os.path.isdir(checkpoint_dir):
            checkpoint.remove_stale_temporaries(checkpoint_dir)
        ckpt = checkpoint.load_checkpoint(checkpoint_dir)
        if multiprocess:  # every process read the same file before any is written
            multihost_utils.sync_global_devices("probseq.fit_sgd: checkpoint read")
    if ckpt is not None:
        _check_fingerprint(ckpt, fingerprint)
        restore = functools.partial(checkpoint.restore_tree, checkpoint=ckpt)
        params = _strong(restore(state.params, name="params"))
        key = state.key
        if "key" in ckpt.trees:  # (checkpoints before the key was in the state: the start's)
            stored = restore(jax.random.key_data(key), name="key", what="PRNG key")
            key = jax.random.wrap_key_data(jnp.asarray(stored), impl=jax.random.key_impl(key))
        run = ckpt.metadata["run"]
        if run["status"] == "nonfinite":
            run["consecutive_nonfinite"] = 0
        state = state.replace(
            params=params,
            opt_state=_strong(restore(state.opt_state, name="opt_state", what="optimizer state")),
            carried=_strong(restore(state.carried, name="carried", what="TBPTT state")),
            key=key,
        )
        best_params = _strong(restore(params, name="best_params", what="best params"))
        resumed_from = run["num_steps"] + run["num_skipped"]
    state = state.replace(
        step=jnp.asarray(run["num_steps"], jnp.int32),
        nonfinite=jnp.asarray(run["consecutive_nonfinite"], jnp.int32),
    )
    last_saved = (run["num_steps"] + run["num_skipped"]) // checkpoint_every
    return _Fit(
        state,
        best_params,
        run,
        checkpoint_dir,
        fingerprint,
        checkpoint_every,
        last_saved,
        resumed_from,
        max_nonfinite_steps,
    )


@dataclasses.dataclass
class _Fit:
    """The mutable part of a fit between compiled calls: the state, the best
    parameters and ``run``, the JSON record of progress a checkpoint stores."""

    state: SGDState
    best_params: Any
    run: dict
    checkpoint_dir: Any
    fingerprint: dict | None
    checkpoint_every: int
    last_saved: int  # checkpoints written after (steps done) // checkpoint_every
    resumed_from: int | None
    max_nonfinite_steps: int
    bar: Any = None
    compile_time_s: float = 0.0

    def save(self, status: str) -> None:
        """Write the checkpoint (process 0 only), if the fit has a checkpoint_dir."""
        self.run["status"] = status
        if self.checkpoint_dir is None or jax.process_index() != 0:
            return
        trees = {
            "params": self.state.params,
            "opt_state": self.state.opt_state,
            "carried": self.state.carried,
            "best_params": self.best_params,
            "key": jax.random.key_data(self.state.key),
        }
        metadata = {"fingerprint": self.fingerprint, "run": self.run}
        checkpoint.save_checkpoint(self.checkpoint_dir, trees, metadata)

    def record_call(self, state: SGDState, metrics: dict, ran, seconds: float) -> None:
        """Account one compiled call's steps (the driver's ``after_call``); checkpoint
        every ``checkpoint_every`` steps, unless max_nonfinite_steps was reached."""
        self.state = state
        run, acc = self.run, self.run["epoch_acc"]
        k = int(ran.sum())
        acc["time_s"] += seconds
        acc["log_lik"] += float(np.sum(metrics["log_likelihood"][ran], dtype=np.float64))
        acc["tokens"] += int(metrics["num_tokens"][ran].sum())
        acc["skipped"] += int(metrics["skipped"][ran].sum())
        run["num_steps"] += int(metrics["applied"][ran].sum())
        run["num_skipped"] += int(metrics["skipped"][ran].sum())
        run["step_in_epoch"] += k
        run["consecutive_nonfinite"] = int(state.nonfinite)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{-acc['log_lik'] / max(acc['tokens'], 1):.4f}",
                tok_s=f"{acc['tokens'] / max(acc['time_s'], 1e-9):.3g}",
            )
        done = run["num_steps"] + run["num_skipped"]
        halted = run["consecutive_nonfinite"] >= self.max_nonfinite_steps
        if not halted and done // self.checkpoint_every > self.last_saved:
            self.last_saved = done // self.checkpoint_every
            self.save("running")

    def end_epoch(self, valid: tuple[float, int] | None, num_epochs: int, bar) -> None:
        """History, best parameters and patience at the end of an epoch; ``valid`` is
        the validation data's (total log-likelihood, tokens)."""
        run, acc, hist = self.run, self.run["epoch_acc"], self.run["history"]
        epoch = run["epoch"]
        train_ll = acc["log_lik"] / max(acc["tokens"], 1)
        hist["iteration"].append(epoch + 1)
        hist["log_likelihood"].append(acc["log_lik"])
        hist["num_tokens"].append(acc["tokens"])
        hist["num_steps"].append(run["num_steps"])
        hist["skipped_steps"].append(acc["skipped"])
        hist["tokens_per_s"].append(acc["tokens"] / max(acc["time_s"], 1e-9))
        hist["time_s"].append(acc["time_s"])
        postfix = {"loss": f"{-train_ll:.4f}"}
        valid_log_lik = None if valid is None else valid[0] / valid[1]
        if valid is not None:
            hist["valid_log_likelihood"].append(valid[0])
            hist["valid_num_tokens"].append(valid[1])
            best = run["best_valid_log_lik"]
            if best is None or valid_log_lik > best:
                run["best_valid_log_lik"], run["best_epoch"] = valid_log_lik, epoch + 1
                run["epochs_since_best"] = 0
                self.best_params = self.state.params
            else:
                run["epochs_since_best"] += 1
            postfix["valid"] = f"{-valid_log_lik:.4f}"
        bar.set_postfix(postfix)
        _log.info(
            "epoch %d/%d: train %.5g, valid %s nats/token; %d steps (%d skipped), %.3g tokens/s",
            epoch + 1,
            num_epochs,
            -train_ll,
            f"{-valid_log_lik:.5g}" if valid_log_lik is not None else "-",
            run["num_steps"],
            run["num_skipped"],
            hist["tokens_per_s"][-1],
        )
        run["epoch"], run["step_in_epoch"], run["epoch_acc"] = epoch + 1, 0, _new_epoch_acc()

    def result(self, stopped: str, extra: dict) -> FitResult:
        run, params = self.run, self.state.params
        info = {
            "stopped": stopped,
            "num_epochs_run": len(run["history"]["iteration"]),
            "best_epoch": run["best_epoch"],
            "best_valid_log_lik": run["best_valid_log_lik"],
            "initial_valid_log_lik": run["initial_valid_log_lik"],
            "num_steps": run["num_steps"],
            "num_skipped_steps": run["num_skipped"],
            **extra,
            "resumed_from_step": self.resumed_from,
            "checkpoint": None
            if self.checkpoint_dir is None
            else os.path.join(self.checkpoint_dir, checkpoint.CHECKPOINT_FILE),
            "last_params": params,
            "opt_state": self.state.opt_state,
        }
        final = params if run["best_epoch"] is None else self.best_params
        return FitResult(final, _history(run["history"]), info)


def _nonfinite_error(fit: _Fit, result: FitResult) -> NonFiniteLossError:
    run = fit.run
    return NonFiniteLossError(
        f"{run['consecutive_nonfinite']} consecutive training steps had a NaN or inf "
        f"loss, gradient or update (in epoch {run['epoch'] + 1}, after "
        f"{run['num_steps']} good steps); they were skipped and fitting stopped. The last "
        "good parameters are in this exception's .params (and .result). Try a smaller "
        "learning_rate, gradient clipping (max_grad_norm) or check the model's "
        "initialization.",
        params=fit.state.params,
        result=result,
    )


def _check_fingerprint(ckpt: checkpoint.Checkpoint, fingerprint: dict) -> None:
    stored = ckpt.metadata.get("fingerprint", {})
    labels = {
        "model": "model",
        "data": "training data",
        "valid_data": "validation data",
        "batch_size": "batch_size",
        "bptt_length": "bptt_length",
        "shuffle": "shuffle",
        "key": "key",
        "settings": "optimizer or stopping setting",
    }
    for name, label in labels.items():
        if stored.get(name) != fingerprint[name]:
            got, want = stored.get(name), fingerprint[name]
            if name in ("data", "valid_data"):
                got, want = _short(got), _short(want)
            raise CheckpointMismatchError(
                f"cannot resume from {ckpt.path}: its {label} differs from this call's "
                f"({json.dumps(got)} there, {json.dumps(want)} now). Resume with the same "
                "model, data, key and settings, or use another checkpoint_dir (or delete "
                "it) to start afresh."
            )


def _short(d):
    if not isinstance(d, dict):
        return d
    return {"shape": d.get("shape"), "sha256": str(d.get("sha256"))[:12]}
