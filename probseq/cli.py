"""The ``probseq`` command: fit, compare, sample and forecast from the shell.

    probseq fit SPEC --data FILE --out DIR [--columns A,B] [--plot FILE.png]
    probseq compare DIR... --data FILE [--part test] [--plot FILE.png]
    probseq sample DIR --length N [--prefix TEXT] [--temperature T]
    probseq sample DIR --source TEXT... [--decode greedy|beam|ancestral] [--beam-width K]
    probseq forecast DIR --data FILE --horizon H [--plot FILE.png]
    probseq states DIR --data FILE [--plot FILE.png]      (HMM runs)
    probseq diagnose DIR --data FILE [--length N] [--plot FILE.png]
    probseq demo

``--data`` takes a text file (text models), a CSV file with a header row (series
models), a file of ``source<TAB>target`` lines (pairs models: sequence to sequence,
classifiers, taggers; :mod:`probseq.data.pairs`), ``builtin:pydoc`` (English text
that ships with Python), ``builtin:sunspots`` / ``builtin:nile`` / ... (series shipped
by statsmodels) or ``builtin:reversal`` (digit strings and their reversals, pairs).
``probseq sample`` of a pairs run decodes the target of each ``--source``.
Bad input ends with one line ``probseq: error: ...`` on stderr and exit status 1
(2 for a command line that argparse refuses); so does every other failure, an
out-of-memory error or an internal error included. Set ``PROBSEQ_DEBUG=1`` in the
environment to get the exception and its traceback instead (for developers and
bug reports).

``probseq fit`` checks ``--out`` before any work (not a file, writable, not empty
unless it holds this very fit). Into a directory that holds the same fit (same
spec, every setting of it, same data) it resumes, or says the fit is done; anything
else stops with one line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

__all__ = ["main"]


class _Usage(ValueError):
    pass


class _ArgumentError(Exception):
    """A command line argparse refuses (exit status 2)."""


def _columns(arg):
    if arg is None:
        return None
    from probseq.data.csv import parse_columns

    names = parse_columns(arg)  # one parser with read_csv: "0" is the column named 0 first
    if not names:
        raise _Usage(f"--columns names no column; got {arg!r} (e.g. --columns flow,temp).")
    return names


def _key(seed: int):
    import jax

    return jax.random.key(seed)


def _save_plot(fig, path, echo) -> None:
    from probseq import plots

    plots.save_figure(fig, path)
    echo(f"wrote {path}")


# ---------------------------------------------------------------------- commands
def _text_columns(kind: str, columns) -> None:
    if kind != "series" and columns is not None:
        raise _Usage(f"--columns picks CSV columns of a series; this is a {kind} model.")


def _read(workflow, kind, location, columns, echo):
    source = workflow.read_source(kind, location, columns)
    if source.notice:
        echo(source.notice)  # a column left out is never silent
    return source


def _scores(run, kind) -> str:
    def shown(part):
        value = run.info.get(f"{part}_bits_per_symbol")
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return f"{part} {value:.3f}" if ok else f"{part} n/a (no step scored)"

    scores = ", ".join(shown(part) for part in ("valid", "test"))
    units = {"text": "bits/char", "series": "bits/step", "pairs": "bits/target symbol"}[kind]
    exact = run.info.get("test_exact_match")
    exact = f"; test exact match (greedy) {exact:.3f}" if isinstance(exact, int | float) else ""
    return f"{scores} {units}{exact}"


def _describe(s) -> str:
    """What a spec fits, for the progress line: "lstm, sgd", "gru -> gru, sgd"."""
    if s.encoder is None:
        return f"{s.model['family']}, {s.method}"
    decoder = s.model.get("family", s.data["target"])
    return f"{s.encoder['family']} encoder -> {decoder}, {s.method}"


def cmd_fit(args, echo) -> None:
    from probseq import io, plots, spec, workflow

    s = spec.load_spec(args.spec)
    mesh = _mesh(args.devices)
    primary = _primary(mesh)  # with several processes, process 0 alone writes and talks
    if not primary:
        echo = _silent
    columns = _columns(args.columns)
    _text_columns(s.kind, columns)
    if columns is None and s.kind == "series":
        columns = s.data.get("columns")
    out, created = io.check_out(args.out) if primary else (args.out, None)
    try:
        source = _read(workflow, s.kind, args.data, columns, echo)
        fingerprint = workflow.fit_fingerprint(s, source)
        state = io.claim(out, fingerprint) if primary else None
    except BaseException:
        io.undo_check_out(out, created)  # leave no empty directory behind a refused fit
        raise
    state = _from_process_0(mesh, state)
    if state == "finished":
        run = io.load(out)
        echo(f"{out} already holds this fit (same spec and data): {run.model!r}; "
             f"{_scores(run, s.kind)}")  # fmt: skip
    else:
        run = _fit_into(s, source, out, fingerprint, state == "resume", args, echo, mesh)
    if args.plot and primary:
        _save_plot(plots.plot_learning_curves(run.history, title=repr(run.model)), args.plot, echo)


#: Read by ``probseq fit --devices``: with JAX_COORDINATOR_ADDRESS (host:port of
#: process 0, read by jax.distributed itself) or JAX_NUM_PROCESSES set, the CLI calls
#: ``jax.distributed.initialize(num_processes=$JAX_NUM_PROCESSES,
#: process_id=$JAX_PROCESS_ID)`` first (under SLURM or Open MPI, jax finds all three).
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _distributed_initialize() -> None:
    import jax

    counts = {}
    for name in DISTRIBUTED_ENV[1:]:
        value = os.environ.get(name)
        if value is not None:
            try:
                counts[name] = int(value)
            except ValueError:
                raise _Usage(f"{name} must be an integer; got {value!r}.") from None
    jax.distributed.initialize(
        num_processes=counts.get("JAX_NUM_PROCESSES"), process_id=counts.get("JAX_PROCESS_ID")
    )


def _primary(mesh) -> bool:
    import jax

    return mesh is None or jax.process_index() == 0


def _silent(*_args, **_kwargs) -> None:
    return None


def _from_process_0(mesh, state):
    """Process 0's claim of the run directory ("new", "resume", "finished"), on every
    process of a multi-process mesh."""
    from probseq import sharding

    if not sharding.is_multiprocess(mesh):
        return state
    from jax.experimental import multihost_utils

    states = ("new", "resume", "finished")
    code = states.index(state) if state is not None else 0
    return states[int(multihost_utils.broadcast_one_to_all(np.int32(code)))]


def _mesh(devices):
    """--devices: None (one device), "all", or a count of this process's devices; the
    fit is the same on any number (sequences split over a mesh, probseq.sharding).
    With the DISTRIBUTED_ENV variables set, "all" spans every process's devices."""
    distributed = any(os.environ.get(name) for name in DISTRIBUTED_ENV[:2])
    if devices is None:
        if distributed:
            raise _Usage(
                "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES are set: a multi-process fit "
                "needs --devices all."
            )
        return None
    from probseq import sharding

    if distributed:
        _distributed_initialize()

    if devices != "all":
        try:
            devices = int(devices)
        except ValueError:
            raise ValueError(
                f"--devices must be 'all' or a positive count; got {devices!r}."
            ) from None
    return sharding.mesh_of(devices)


def _fit_into(s, source, out, fingerprint, resuming, args, echo, mesh=None):
    from probseq import io, workflow
    from probseq.fit.sgd import CheckpointMismatchError

    verb = "resuming" if resuming else "fitting"
    echo(f"{verb} {s.source} ({_describe(s)}) on {source.origin}")
    checkpoints = os.path.join(out, "checkpoints")
    try:
        run = workflow.fit_spec(
            s, source, progress=not args.quiet, checkpoint_dir=checkpoints, mesh=mesh
        )
    except CheckpointMismatchError as e:
        raise ValueError(
            f"{out} holds an unfinished or finished fit of another model, data or "
            f"settings ({checkpoints}); fit into another --out, or delete {checkpoints} "
            f"to start afresh. ({e})"
        ) from None
    if _primary(mesh):  # one writer of the run directory
        io.save_run(run, out, fingerprint=fingerprint)
    echo(f"saved {out}: {run.model!r}; {_scores(run, s.kind)} ({run.info['fit_seconds']:.1f} s)")
    return run


def _row_names(dirs) -> list[str]:
    """One unique row name per argument: the shortest path suffix that tells a run
    directory from every other (``runs/lstm`` beside ``cmp/lstm``); the same
    directory given twice gets ``#2``, ``#3``. So a table has a row per argument."""
    parts = [os.path.normpath(os.path.abspath(os.fspath(d))).split(os.sep) for d in dirs]
    names = []
    for p in parts:
        others = [q for q in parts if q != p]
        k = 1
        while k < len(p) and any(q[-k:] == p[-k:] for q in others):
            k += 1
        names.append("/".join(x for x in p[-k:] if x) or os.sep)
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique


def _run_and_data(run_dir, data, columns_arg, echo, *, run=None):
    """The step every command that reads data for a run shares: load the run, parse
    ``--columns`` (default: the run's own), read the data and match its columns to
    the run's by name (reordered with a notice; another set is refused)."""
    from probseq import io, workflow

    run = io.load(run_dir) if run is None else run
    columns = _columns(columns_arg)
    _text_columns(run.kind, columns)
    if columns is None and run.kind == "series" and not data.startswith("builtin:"):
        columns = list(run.columns)
    source = _read(workflow, run.kind, data, columns, echo)
    source, notice = workflow.match_columns(run, source)
    if notice:
        echo(notice)
    return run, source


def cmd_compare(args, echo) -> None:
    from probseq import io, plots, workflow
    from probseq.compare import compare

    names = _row_names(args.runs)
    runs = {n: io.load(d) for n, d in zip(names, args.runs, strict=True)}
    first_name, first = next(iter(runs.items()))
    for name, run in runs.items():
        if run.kind != first.kind:
            raise _Usage(f"{name} models {run.kind} data but {first_name} models {first.kind}.")
        if run.kind == "pairs" and run.pair_encoding.target != first.pair_encoding.target:
            raise _Usage(
                f"{name} reads targets as {run.pair_encoding.target!r} but {first_name} as "
                f"{first.pair_encoding.target!r}; compare runs of the same target kind."
            )
        if run.kind == "series" and list(run.columns) != list(first.columns):
            raise _Usage(
                f"{name} models the column(s) {', '.join(run.columns)} but {first_name} "
                f"models {', '.join(first.columns)}; compare runs of the same columns."
            )
    _, source = _run_and_data(None, args.data, args.columns, echo, run=first)
    # What each run was trained on decides which steps may be scored (held out by all).
    plan = workflow.held_out_plan(runs, source, args.part, in_sample=args.in_sample)
    for notice in plan.notices:
        echo(notice)
    # Each run sees the data in its own encoding (vocabulary, standardisation), cut
    # the same way (the first run's sequence length); densities are mapped back to
    # the data's units.
    views = {
        n: workflow.prepare_steps(r, source, plan.start, plan.stop, layout=first.spec)
        for n, r in runs.items()
    }
    models = {n: (r.model, r.params) for n, r in runs.items()}
    table = compare(
        models,
        views,
        log_det_jacobians={n: r.log_det_jacobian() for n, r in runs.items()},
        progress=not args.quiet,
    )
    if len(table) != len(args.runs):  # one row per argument, always
        raise RuntimeError(f"{len(args.runs)} runs gave {len(table)} rows.")
    echo(plan.header)
    echo(str(table))
    if args.plot:
        _save_plot(plots.plot_comparison(table), args.plot, echo)


def cmd_sample(args, echo) -> None:
    from probseq import io
    from probseq.core import sample

    run = io.load(args.run)
    if run.kind == "pairs":
        return _sample_pairs(run, args, echo)
    for flag, value in (("--source", args.source), ("--decode", args.decode),
                        ("--beam-width", args.beam_width)):  # fmt: skip
        if value is not None:
            raise _Usage(f"{flag} decodes pairs runs (sequence to sequence); {args.run} "
                         f"models {run.kind}.")  # fmt: skip
    args.length = 200 if args.length is None else args.length
    prefix = None
    if args.prefix is not None:
        if run.kind != "text":
            raise _Usage("--prefix takes text; for a series use `probseq forecast`.")
        if not args.prefix:
            raise _Usage("--prefix is empty; leave it out to sample from the start.")
        prefix = run.encode(args.prefix)
    xs = sample(
        run.model,
        run.params,
        _key(args.seed),
        args.length,
        num_samples=args.num_samples,
        prefix=prefix,
        temperature=args.temperature,
    )
    xs = np.asarray(xs)
    for i in range(args.num_samples):
        if run.kind == "text":
            echo(f"--- sample {i + 1}")
            echo((args.prefix or "") + run.decode(xs[i]))
        else:
            values = run.decode(xs[i])
            echo(f"--- sample {i + 1} ({', '.join(run.columns)})")
            for row in values:
                echo(",".join(f"{v:.6g}" for v in np.atleast_1d(row)))


def _sample_pairs(run, args, echo) -> None:
    """``probseq sample`` of a pairs run: decode the target of each ``--source``."""
    from probseq import decoding

    if not args.source:
        raise _Usage(f"{args.run} models source/target pairs: give --source TEXT (repeatable).")
    if args.prefix is not None:
        raise _Usage("--prefix continues text runs; a pairs run decodes from --source.")
    enc, method = run.pair_encoding, args.decode or "greedy"
    if method != "beam" and args.beam_width is not None:
        raise _Usage("--beam-width needs --decode beam.")
    if method != "ancestral" and (args.temperature != 1.0 or args.num_samples != 1):
        raise _Usage("--temperature and --num-samples apply to --decode ancestral.")
    if enc.target != "sequence" and args.length is not None:
        raise _Usage(f"--length: a {enc.target!r} target has a fixed length (1 for a label, "
                     "the source's for tags).")  # fmt: skip
    sources = [enc.encode_source(text, f"--source {text!r}") for text in args.source]
    # A tagger emits one tag per source step: decode each source at its own length.
    groups = (
        [[i] for i in range(len(sources))] if enc.target == "tags" else [list(range(len(sources)))]
    )
    key = _key(args.seed)
    width = args.beam_width or 4
    for group in groups:
        if enc.target == "sequence":
            length = args.length or 200
        else:
            length = 1 if enc.target == "label" else len(sources[group[0]])
        batch = [sources[i] for i in group]
        if method == "beam":
            if width > run.model.head.vocab_size:
                raise _Usage(f"--beam-width {width} exceeds the {run.model.head.vocab_size} "
                             "target symbols.")  # fmt: skip
            out = decoding.beam_search(run.model, run.params, length, beam_width=width,
                                       source=batch, eos=enc.eos)  # fmt: skip
            found = [list(zip(out.sequences[b], out.log_probs[b], strict=True))
                     for b in range(len(batch))]  # fmt: skip
        elif method == "greedy":
            out = decoding.greedy(run.model, run.params, length, source=batch, eos=enc.eos)
            found = [[(out.sequences[b], out.log_probs[b])] for b in range(len(batch))]
        else:
            found = [[] for _ in batch]
            for _ in range(args.num_samples):
                key, sub = _split(key)
                out = decoding.ancestral(run.model, run.params, sub, length, source=batch,
                                         eos=enc.eos, temperature=args.temperature)  # fmt: skip
                for b in range(len(batch)):
                    found[b].append((out.sequences[b], out.log_probs[b]))
        for i, candidates in zip(group, found, strict=True):
            echo(f"source {args.source[i]}")
            for rank, (ids, log_p) in enumerate(candidates, start=1):
                ids = np.asarray(ids)
                text = enc.decode_target(ids)
                if enc.eos is not None and enc.eos not in ids:
                    text += f"  (no end token within {len(ids)} symbols)"
                echo(f"  {method} {rank}: {text}\tlog p = {float(log_p):.4f}")


def _split(key):
    import jax

    return tuple(jax.random.split(key))


def cmd_forecast(args, echo) -> None:
    from probseq import plots, workflow
    from probseq.forecast import forecast

    run, source = _run_and_data(args.run, args.data, args.columns, echo)
    history = workflow.encode(run, source)
    fc = forecast(run.model, run.params, _key(args.seed), history, args.horizon, args.num_samples)
    echo(f"forecast from {source.origin}: {len(history)} steps of history, horizon {args.horizon}")
    if run.kind == "text":
        top = np.argsort(fc.next_step_probs)[::-1][:5]
        shown = ", ".join(f"{run.vocabulary.chars[i]!r} {fc.next_step_probs[i]:.3f}" for i in top)
        echo(f"next character: {shown}")
        for i in range(min(args.num_samples, 5)):
            echo(f"--- continuation {i + 1}")
            echo(run.decode(fc.samples[i]))
        return
    mean = run.decode(fc.mean)
    bands = run.decode(fc.quantiles)
    levels = fc.quantile_levels
    for d, col in enumerate(run.columns):
        echo(f"{col}: step, mean, " + ", ".join(f"q{q:g}" for q in levels))
        for h in range(args.horizon):
            cells = [f"{mean[h, d]:.6g}"] + [f"{bands[q, h, d]:.6g}" for q in range(len(levels))]
            echo(f"{h + 1}, " + ", ".join(cells))
    if args.plot:
        from probseq.forecast import Forecast

        shown = Forecast(
            samples=run.decode(fc.samples),
            mean=mean,
            quantiles=bands,
            quantile_levels=levels,
            next_step_probs=None,
            history_log_prob=fc.history_log_prob,
            final_state=None,
        )
        fig = plots.plot_forecast(source.values, shown)
        _save_plot(fig, args.plot, echo)


def cmd_states(args, echo) -> None:
    from probseq import io, plots, workflow
    from probseq.families import HMM

    run = io.load(args.run)
    if not isinstance(run.model, HMM):
        raise _Usage(f"{args.run} holds {run.model!r}; `probseq states` needs an HMM run.")
    run, source = _run_and_data(None, args.data, args.columns, echo, run=run)
    x = workflow.encode(run, source)[: args.length]
    probs = np.asarray(run.model.smoother(run.params, x))
    path = np.asarray(run.model.most_likely_states(run.params, x))
    echo(f"{len(x)} steps of {source.origin} under {run.model!r}")
    echo("state, mean smoothed probability, share of the Viterbi path")
    for k in np.argsort(-probs.mean(axis=0)):
        echo(f"{k}, {probs[:, k].mean():.4f}, {np.mean(path == k):.4f}")
    if args.plot:
        shown = run.decode(x) if run.kind == "series" else x
        _save_plot(plots.plot_state_posteriors(probs, observations=shown), args.plot, echo)


def cmd_diagnose(args, echo) -> None:
    from probseq import diagnostics, plots, workflow

    run, source = _run_and_data(args.run, args.data, args.columns, echo)
    x = workflow.encode(run, source)[: args.length]
    d = diagnostics.gradient_diagnostics(run.model, run.params, x)
    n = d.singular_values.shape[1]
    echo(f"gradient diagnostics over the first {len(x)} steps of {source.origin} under "
         f"{run.model!r} (state of {n} numbers)")  # fmt: skip
    echo("t, ||ds_T/ds_t||, largest singular value of ds_t+1/ds_t, ||dL/ds_t||, "
         "step gradient norm")  # fmt: skip
    shown = np.unique(np.linspace(0, len(x) - 1, min(len(x), 11)).round().astype(int))
    for t in shown:
        echo(f"{t}, {d.jacobian_norms[t]:.4g}, {d.singular_values[t, 0]:.4g}, "
             f"{d.loss_gradient_norms[t]:.4g}, {d.step_gradient_norms[t]:.4g}")  # fmt: skip
    if args.plot:
        _save_plot(plots.plot_gradient_diagnostics(d, title=repr(run.model)), args.plot, echo)


def cmd_demo(args, echo) -> None:
    from probseq import demo, io

    if args.out is not None:
        out, _ = io.check_out(args.out)
        for name in demo.DEMO_SPECS:
            target = os.path.join(out, name)
            if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
                raise _Usage(f"--out {out}: {target} exists and is not empty; the demo saves "
                             "its runs only into new directories, give another --out.")  # fmt: skip

    demo.run_demo(
        quick=args.quick, out=args.out, plot=args.plot, progress=not args.quiet, echo=echo
    )


# ------------------------------------------------------------------------ parser
def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits of a seed: larger ones would collide


def _seed(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, {MAX_SEED}], got {text}")
    return v


def _temperature(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse with one error line (``probseq: error: ...``) raised, not printed."""

    def error(self, message):
        raise _ArgumentError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="probseq",
        description="Fit, compare, sample and forecast probabilistic sequence models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="fit a model spec (models/*.toml) to data")
    p.add_argument("spec", help="a model spec, e.g. models/lstm_text.toml")
    p.add_argument("--data", required=True, help="text/CSV file or builtin:NAME")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--columns", help="CSV columns, comma-separated names or indices")
    p.add_argument("--plot", help="write the learning curves to this image file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--devices",
        help="split the sequences over 'all' of this process's devices, or the first N "
        "(the same fit as on one; e.g. GPUs, or CPU devices with "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N); with JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES and JAX_PROCESS_ID set, 'all' spans every process's devices",
    )
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("compare", help="held-out likelihood table of fitted runs")
    p.add_argument("runs", nargs="+", metavar="DIR", help="run directories")
    p.add_argument("--data", required=True, help="text/CSV file or builtin:NAME")
    p.add_argument("--columns", help="CSV columns (default: the runs' own)")
    p.add_argument(
        "--part",
        default=None,
        choices=("all", "train", "valid", "test"),
        help="the part to score (default: test on data a run was fitted on - the steps "
        "held out by every run; all on other data); train/all of a run's own data is "
        "refused without --in-sample",
    )
    p.add_argument(
        "--in-sample",
        action="store_true",
        help="allow scoring a run's training data (the table is labelled in-sample)",
    )
    p.add_argument("--plot", help="write the comparison bar chart to this image file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "sample", help="draw sequences from a fitted run; decode targets of a pairs run"
    )
    p.add_argument("run", metavar="DIR")
    p.add_argument(
        "--length",
        type=_positive_int,
        help="steps to draw (default 200); the most target symbols to decode (pairs)",
    )
    p.add_argument("--prefix", help="text to continue (text runs)")
    p.add_argument(
        "--source",
        action="append",
        help="a source to decode the target of (pairs runs; repeat for several)",
    )
    p.add_argument(
        "--decode",
        choices=("greedy", "beam", "ancestral"),
        help="pairs runs: most probable symbol per step (default), beam search, or sampling",
    )
    p.add_argument("--beam-width", type=_positive_int, help="beams kept by --decode beam (4)")
    p.add_argument("--temperature", type=_temperature, default=1.0)
    p.add_argument("--num-samples", type=_positive_int, default=1)
    p.add_argument("--seed", type=_seed, default=0, help=f"0 to {MAX_SEED}")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("forecast", help="condition on data, then sample what follows")
    p.add_argument("run", metavar="DIR")
    p.add_argument("--data", required=True, help="the history: text/CSV file or builtin:NAME")
    p.add_argument("--columns", help="CSV columns (default: the run's own)")
    p.add_argument("--horizon", type=_positive_int, required=True)
    p.add_argument("--num-samples", type=_positive_int, default=200)
    p.add_argument("--seed", type=_seed, default=0, help=f"0 to {MAX_SEED}")
    p.add_argument("--plot", help="write the forecast fan chart to this image file")
    p.set_defaults(func=cmd_forecast)

    p = sub.add_parser("states", help="HMM state posteriors over data (smoothed, Viterbi)")
    p.add_argument("run", metavar="DIR", help="a run directory of an HMM")
    p.add_argument("--data", required=True, help="text/CSV file or builtin:NAME")
    p.add_argument("--columns", help="CSV columns (default: the run's own)")
    p.add_argument("--length", type=_positive_int, default=500, help="first N steps")
    p.add_argument("--plot", help="write the smoothed state posteriors to this image file")
    p.set_defaults(func=cmd_states)

    p = sub.add_parser("diagnose", help="gradient diagnostics of a run over data (BPTT)")
    p.add_argument("run", metavar="DIR", help="a run directory")
    p.add_argument("--data", required=True, help="text/CSV file or builtin:NAME")
    p.add_argument("--columns", help="CSV columns (default: the run's own)")
    p.add_argument("--length", type=_positive_int, default=200, help="first N steps")
    p.add_argument("--plot", help="write the diagnostics' three panels to this image file")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("demo", help="HMM vs LSTM vs LRU on built-in English text")
    p.add_argument("--quick", action="store_true", help="a much smaller run (seconds)")
    p.add_argument("--out", help="also save the three runs under this directory")
    p.add_argument("--plot", help="write the comparison bar chart to this image file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line(text: str, limit: int = 600) -> str:
    """``text`` as one printable line: control characters escaped, lines joined."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    joined = " ".join(lines)
    out = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in joined)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


# What bad input (files, specs, arguments, sizes) can raise; anything else is a bug.
_EXPECTED = (ValueError, OSError, ModuleNotFoundError, OverflowError, RecursionError)


def describe_error(e: BaseException) -> str:
    """The one line ``probseq: error: ...`` says for ``e``."""
    message = _one_line(str(e)) or type(e).__name__
    if _out_of_memory(e):
        return (
            f"out of memory ({type(e).__name__}): the model, data or requested size "
            f"needs more memory than this machine has; use smaller sizes. ({message})"
        )
    if isinstance(e, RecursionError):
        return f"input nested too deeply to read ({message})."
    if isinstance(e, _EXPECTED):
        return message
    return (
        f"internal error ({type(e).__name__}: {message}); set PROBSEQ_DEBUG=1 to see "
        "the traceback, and please report it."
    )


def main(argv=None) -> int:
    """Entry point of the ``probseq`` console script; returns the exit status.

    Every failure ends with one line ``probseq: error: ...`` on stderr: exit status
    2 for a command line that argparse refuses, 1 for anything else (bad input, a
    run directory that cannot be used, out of memory, and an internal error, which
    says so). With the environment variable ``PROBSEQ_DEBUG=1`` the exception is
    raised instead, with its traceback.
    """
    parser = build_parser()
    debug = os.environ.get("PROBSEQ_DEBUG", "") not in ("", "0")
    try:
        args = parser.parse_args(argv)
    except _ArgumentError as e:
        print(f"probseq: error: {_one_line(str(e))}", file=sys.stderr, flush=True)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0

    def echo(line=""):
        print(line, flush=True)

    try:
        args.func(args, echo)
    except KeyboardInterrupt:
        print("probseq: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"probseq: error: {describe_error(e)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
