"""The SGD fitter's state and step: :class:`SGDState` (one pytree: parameters,
optimizer state, step count, PRNG key, TBPTT carry, non-finite counter),
:func:`sgd_init` and :func:`sgd_update` (THE step fit_sgd takes on the driver, TBPTT
included), the default optimizer and the compiled validation pass."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from probseq import sharding, validation
from probseq.core import batch_step_log_probs, start_states
from probseq.fit.compiled import SHARED
from probseq.fit.tbptt import window_log_probs
from probseq.scan import pairwise_sum


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


#: fit_sgd's loss noise is split from ``fold_in(key, LOSS_STREAM)``; the shuffles use
#: ``fold_in(key, epoch)`` (epochs never reach this number).
LOSS_STREAM = 0x7FFFFFFF


def _loss_key(key):
    """The first key of the training loss's noise, typed (a raw uint32 key is wrapped)."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return jax.random.fold_in(key, LOSS_STREAM)


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
