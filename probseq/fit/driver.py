"""The one loop of the iterative fitters: compiled chunks of a pure ``update``.

A fitter is a pair of pure functions over one pytree state (optax's and numpyro's
SVI shape): ``init(...) -> state`` and ``update(state, data) -> (state, metrics)``.
:func:`run` is the driver around the pair. It

* compiles ``steps_per_call`` updates as one ``lax.scan`` (each step behind a
  ``lax.cond``, so a step past ``num_steps`` or after the fitter says it is done
  changes nothing), once per (update, state structure, data shapes): a second fit of
  the same model compiles nothing;
* blocks on each call's outputs before reading the clock, so the recorded seconds are
  the work's, not the dispatch's (compile time is measured apart);
* shows a progress bar, and writes a checkpoint between calls (the whole state, the
  metrics so far and the position; :mod:`probseq.fit.checkpoint`), from which a fit
  killed at any point resumes bit-identically: the state is the fit.

The fitter supplies ``done(state) -> bool`` (converged or halted: later steps are
no-ops and the loop ends) and the metrics; the driver keeps one row per step that ran.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probseq.fit import checkpoint as ckpt
from probseq.fit.compiled import SHARED, CompiledSteps

__all__ = ["run", "RunResult", "resume_state"]


class RunResult(NamedTuple):
    """What :func:`run` returns: the final state, each metric stacked over the steps
    that ran (host NumPy, leading axis = step), the seconds of work per step that ran
    (the call's time split evenly over its steps), the compile time, and the step a
    resumed fit started from (None: a fresh fit)."""

    state: Any
    metrics: dict[str, np.ndarray]
    step_time_s: np.ndarray
    compile_time_s: float
    resumed_from: int | None


def _chunk(update: Callable, done: Callable, steps_per_call: int, name: str, with_xs: bool,
           constrain: Callable | None):  # fmt: skip
    """``steps_per_call`` guarded updates as one scan (compiled by CompiledSteps)."""
    keep = constrain or (lambda s: s)

    def chunk(state, data, xs, num_active):
        def apply(s, x):
            return update(s, data if not with_xs else (data, x))

        first = None if not with_xs else jax.tree.map(lambda a: a[0], xs)
        template = jax.eval_shape(apply, state, first)[1]

        def body(s, step):
            i, x = step
            active = (i < num_active) & ~done(s)

            def skip(s):
                return s, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), template)

            s, metrics = jax.lax.cond(active, lambda s: apply(s, x), skip, s)
            return keep(s), (metrics, active)

        state, outs = jax.lax.scan(body, keep(state), (jnp.arange(steps_per_call), xs))
        return keep(state), outs

    chunk.__name__ = chunk.__qualname__ = name
    return chunk


def _call_xs(xs, position: int, k: int, steps_per_call: int):
    """Steps ``position .. position + k`` of the per-step inputs ``xs`` (host arrays,
    leading axis = step), padded to ``steps_per_call`` by repeating the last (padded
    steps do not run)."""
    if xs is None:
        return None

    def cut(a):
        a = np.asarray(a)[position : position + k]
        return np.concatenate([a, np.repeat(a[-1:], steps_per_call - k, axis=0)])

    return jax.tree.map(cut, xs)


def resume_state(template, checkpoint_dir, fingerprint: dict):
    """(state, metrics rows, position) from ``checkpoint_dir``, or None if it holds no
    checkpoint. ``template``: a fresh state of the same fit (gives the structure,
    shapes and dtypes); ``fingerprint``: what the stored fit must equal (model, data,
    settings), else ValueError naming the first difference."""
    if checkpoint_dir is None:
        return None
    if os.path.isdir(checkpoint_dir):
        ckpt.remove_stale_temporaries(checkpoint_dir)
    found = ckpt.load_checkpoint(checkpoint_dir)
    if found is None:
        return None
    stored = found.metadata.get("fingerprint")
    if stored != fingerprint:
        keys = sorted(set(stored or {}) | set(fingerprint))
        first = next(k for k in keys if (stored or {}).get(k) != fingerprint.get(k))
        raise ValueError(
            f"cannot resume from {found.path}: its {first} differs from this call's "
            f"({(stored or {}).get(first)!r} there, {fingerprint.get(first)!r} now). Resume "
            "with the same model, data and settings, or use another checkpoint_dir (or "
            "delete it) to start afresh."
        )
    state = ckpt.restore_tree(template, found, "state", what="fit state")
    rows = {k: [np.asarray(v) for v in vs] for k, vs in found.metadata["metrics"].items()}
    return state, rows, found.metadata["step_time_s"], int(found.metadata["position"])


def _jsonable(rows: dict) -> dict:
    return {k: [np.asarray(v).tolist() for v in vs] for k, vs in rows.items()}


def run(
    update: Callable,
    done: Callable,
    state,
    data,
    *,
    num_steps: int,
    steps_per_call: int = 8,
    name: str = "_fit_steps",
    progress: bool = False,
    desc: str = "fit",
    postfix: Callable[[dict], dict] | None = None,
    checkpoint_dir=None,
    fingerprint: dict | None = None,
    compiled: CompiledSteps | None = None,
    xs=None,
    position: int = 0,
    place: Callable | None = None,
    constrain: Callable | None = None,
    after_call: Callable | None = None,
    bar=None,
) -> RunResult:
    """Run ``update`` from ``state`` until ``num_steps`` steps ran or ``done(state)``.

    Args:
        update: ``(state, data) -> (state, metrics)``, pure (metrics: a dict of arrays).
        done: ``state -> bool array ()``: no step runs once it is True.
        state: the fitter's initial state (a pytree; static configuration in its
            treedef, e.g. dataclass meta fields).
        data: the arrays every step reads (passed to each call, never baked in).
        num_steps: the most steps in all (a resumed fit counts the steps before).
        steps_per_call: steps per compiled call; the bar and checkpoints act between.
        name: the compiled function's name (it shows in JAX's compile logs).
        progress: show a tqdm bar on stderr.
        desc, postfix: the bar's label, and the bar's postfix from the last row.
        checkpoint_dir: write the state there after every call and resume from it.
        fingerprint: JSON facts a resumed checkpoint must equal (needed with
            ``checkpoint_dir``).
        compiled: where the compiled chunk is kept across fits (default: SHARED).
        xs: per-step inputs (a pytree of host arrays whose leading axis is the step,
            ``num_steps`` long; e.g. SGD's schedule of rows): step ``i`` calls
            ``update(state, (data, xs[i]))`` instead of ``update(state, data)``.
        position: the step to start from (a caller that resumes its own way; with
            ``checkpoint_dir`` the checkpoint's position is used).
        place: host -> device layout of each call's ``xs`` and step count (a mesh's
            replication; default: as is).
        constrain: ``state -> state`` applied after every step (e.g. a sharding
            constraint, so the state keeps one layout and the chunk never recompiles).
        after_call: ``(state, metrics, ran, seconds) -> None`` called on the host after
            each call with that call's outputs (``ran``: which of its steps ran).
        bar: a tqdm bar owned by the caller (advanced by the steps that ran).
    """
    rows: dict[str, list] = {}
    times: list[float] = []
    resumed_from = None
    if checkpoint_dir is not None:
        found = resume_state(state, checkpoint_dir, fingerprint)
        if found is not None:
            state, rows, times, position = found
            resumed_from = position
    key = ("driver", update, done, steps_per_call, name, xs is not None, constrain)
    chunk = (compiled or SHARED).get(
        key, lambda: _chunk(update, done, steps_per_call, name, xs is not None, constrain)
    )
    place = place or (lambda tree: tree)
    own_bar = bar is None and progress
    if own_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=position, desc=desc, unit="iter")
    finished = bool(done(state))
    try:
        while position < num_steps and not finished:
            k_max = min(steps_per_call, num_steps - position)
            step_xs = _call_xs(xs, position, k_max, steps_per_call)
            active = jnp.asarray(k_max, jnp.int32)
            step_xs, active = place((step_xs, active))
            tic, compiling = time.perf_counter(), chunk.compile_time_s
            state, (metrics, ran) = chunk(state, data, step_xs, active)
            jax.block_until_ready((state, metrics))  # the clock reads the work's end
            seconds = time.perf_counter() - tic - (chunk.compile_time_s - compiling)
            ran = np.asarray(ran)
            k = int(ran.sum())
            if after_call is not None:
                after_call(state, jax.device_get(metrics), ran, seconds)
            else:
                for metric, value in metrics.items():
                    rows.setdefault(metric, []).extend(np.asarray(value)[ran])
            times.extend([seconds / max(k, 1)] * k)
            position += k
            finished = bool(done(state))
            if bar is not None:
                bar.update(k)
                if postfix is not None and k:
                    bar.set_postfix({n: v for n, v in postfix(rows).items()})
            if checkpoint_dir is not None and jax.process_index() == 0:
                meta = {"fingerprint": fingerprint, "position": position,
                        "metrics": _jsonable(rows), "step_time_s": times}  # fmt: skip
                ckpt.save_checkpoint(checkpoint_dir, {"state": state}, meta)
    finally:
        if own_bar:
            bar.close()
    stacked = {k: np.stack(v) if v else np.zeros((0,)) for k, v in rows.items()}
    times = np.asarray(times, np.float64)
    return RunResult(state, stacked, times, chunk.compile_time_s, resumed_from)
