"""fit_sgd's host-side record between compiled calls: the progress a checkpoint stores
(epochs, history, best parameters, patience), starting or resuming a fit, and the
errors it raises."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from probseq.fit import checkpoint
from probseq.fit.result import FitHistory, FitResult
from probseq.fit.sgd_step import SGDState, _init_state, _strong


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


_log = logging.getLogger("probseq.fit.sgd")  # fit_sgd's epoch lines, by its public name


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


def _key_data(key) -> list[int]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).ravel().tolist()


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
