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

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from probseq import sharding, validation
from probseq.core import as_batch, prepare_source
from probseq.families.registry import BOOL, POSITIVE_INT, POSITIVE_NUMBER
from probseq.fit import driver
from probseq.fit.compiled import SHARED, CompiledSteps, _BoundedCache, clear_compiled_cache  # noqa: F401
from probseq.fit.registry import FitterSpec, register
from probseq.fit.result import FitResult
from probseq.fit.sgd_run import (  # noqa: F401
    CheckpointMismatchError,
    NonFiniteLossError,
    _current_columns,
    _digest,
    _fingerprint,
    _key_data,
    _nonfinite_error,
    _start,
)
from probseq.fit.sgd_step import (  # noqa: F401
    SGDState,
    Window,
    _check_int,
    _evaluate_of,
    _loss_key,
    _resolve_optimizer,
    _train_step,
    sgd_init,
    sgd_update,
)
from probseq.fit.tbptt import (  # noqa: F401
    _epoch_schedule,
    _pad_rows,
    _plan,
    _valid_chunks,
    truncated_step_log_probs,
    window_log_probs,
)

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


def _fit_from_spec(spec, model, params, train, valid, *, progress, checkpoint_dir, mesh):
    """A spec's ``[fit] method = "sgd"``: its keys as fit_sgd's keywords; the shuffles'
    key from the spec's seed; validation data for early stopping; pairs' sources."""
    settings = {k: v for k, v in spec.fit.items() if k != "method"}
    kwargs = {}
    if valid is not None:
        kwargs = {"valid_data": valid.x, "valid_mask": valid.mask}
    if spec.kind == "pairs":  # a probseq.data.PairSplit: targets and their sources
        kwargs.update(source=train.source, source_mask=train.source_mask)
        if valid is not None:
            kwargs.update(valid_source=valid.source, valid_source_mask=valid.source_mask)
    return fit_sgd(
        model, params, train.x, mask=train.mask,
        key=jax.random.fold_in(jax.random.key(spec.seed), 2),
        progress=progress, checkpoint_dir=checkpoint_dir, mesh=mesh, **kwargs, **settings,
    )  # fmt: skip


SPEC = register(
    FitterSpec(
        name="sgd",
        function="fit_sgd",
        keys={
            "num_epochs": POSITIVE_INT,
            "batch_size": POSITIVE_INT,
            "learning_rate": POSITIVE_NUMBER,
            "max_grad_norm": POSITIVE_NUMBER,
            "bptt_length": POSITIVE_INT,
            "patience": POSITIVE_INT,
            "shuffle": BOOL,
            "steps_per_call": POSITIVE_INT,
        },
        defaults={"num_epochs": 1, "batch_size": 32},
        fit=_fit_from_spec,
    )
)
