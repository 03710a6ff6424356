"""probseq on an accelerator against its anchors, in one process and one command (issue 10).

    python benchmarks/gpu.py [--quick] [--json gpu_results.json] [--only hmm precision scan lstm]

Sections (``--only`` picks some; all by default):

* ``hmm``: categorical HMMs, float32, on four workloads: medium K32 V64 B64 T1000,
  batch K64 V64 B1024 T1000, largeK K256 V128 B8 T2000, long K8 V16 B1 T1e6. Rows:
  probseq ``log_prob`` with ``scan="auto"`` (the path it chose is printed, from
  ``model.filter_path(B, T, dtype)``) and with each of ``"sequential"``, ``"chunked"``,
  ``"parallel"``; one probseq EM iteration; dynamax's sequential filter ``hmm_filter``,
  parallel filter ``parallel_hmm_filter`` and smoother ``hmm_smoother``.
* ``precision``: the medium workload in float32 against float64 (``jax.enable_x64``,
  parameters built in float64): the relative error of ``log_prob`` (target 2e-7) and
  the largest difference of the parameters after 10 EM iterations (target 1e-6).
* ``scan``: LRU and MinGRU ``log_prob`` of a batch (B16 T4096 H256, 2 layers) with the
  sequential and the parallel scan.
* ``lstm``: char-LSTM training throughput, tokens/s (pydoc text, E64 B64 T128, H=256 and
  H=1024, Adam lr 1e-3 after clipping by global norm 1, float32): probseq ``fit_sgd``,
  flax linen ``nn.RNN(nn.OptimizedLSTMCell)``, PyTorch ``nn.LSTM`` (cuDNN when CUDA is
  there) and a hand-written ``lax.scan`` LSTM with its input projection hoisted out of the
  time loop.

How each row is timed (seconds per call; the first call, compile included, is reported
apart as ``first_s``; the value is the median of up to ``--repeats`` warm calls):

* probseq ``log_prob``: the public call as users make it, ``probseq.log_prob(model,
  params, x)`` with ``x`` a NumPy array (so the validation at the API boundary and the
  copy of ``x`` to the device are in the time).
* probseq EM iteration: the extra time of ``extra`` more iterations, ``(t(1 + extra) -
  t(1)) / extra`` for ``fit_em(..., tol=0)`` (as benchmarks/em.py), with the medians of
  alternating t(1) and t(1 + extra) calls; the compiled step is cached across calls.
* dynamax: its inference functions as their users call them, at their best: one
  ``jax.jit`` of ``vmap`` over the batch, every array (``initial_probs``, the transition
  matrix, ``log B`` and the data) passed as an argument, never captured, and the
  gather ``jnp.log(B)[:, x].T`` of the emission log-likelihoods inside that jit.
  The filters return only ``marginal_loglik`` (what ``log_prob`` gives, so XLA can drop
  the rest); the smoother returns its whole posterior (what an E-step needs). dynamax
  sets ``jax_default_matmul_precision="float32"`` when imported; this script restores the
  global setting at once and runs the dynamax rows under dynamax's own setting (a
  ``jax.default_matmul_precision`` context), so that dynamax's users' numbers are
  reproduced and nothing else in the process is affected.
* training rows: tokens/s = B * T * steps / seconds for ``steps`` optimizer steps, warm
  (probseq: a second ``fit_sgd`` call, which reuses the first call's compiled step; flax,
  the JAX scan and PyTorch: a jitted / eager step in a Python loop after a first pass).

Ratios are anchor time / probseq time (> 1: probseq is faster) for the same work: the
dynamax filters against probseq's ``log_prob`` (auto), the dynamax smoother against one
probseq EM iteration, the training anchors against ``fit_sgd`` (= probseq tokens/s /
anchor tokens/s), and in ``scan`` the sequential scan against the parallel one.

Guards: every row has a time cap (``--cap``, 20 s): a row whose first call exceeds it
is "over cap" (that call's time is kept as ``first_s``); otherwise one warm call follows
and more while the row's time stays within the cap, so a row takes at most about twice
the cap. The whole run has a budget (``--budget``, 225 s) shared by the sections in
order (``SECTION_SHARES``, leftovers roll forward): a row that would start after its
section's share is spent is "over cap" too. An out-of-memory error (XLA
``RESOURCE_EXHAUSTED``, ``torch.cuda.OutOfMemoryError``) makes its row "out of memory";
a missing optional package (dynamax, flax, torch) makes its rows "not installed".
Neither stops the script; nor does any other error (its row's reason is "error: ...").
JAX keeps its default allocator (it reserves 75% of the GPU's memory), so PyTorch runs
in the rest.

Running on the GPU machine (it has jax, flax, torch, optax and numpyro, not dynamax and
no network). dynamax 1.0.3 travels as wheels: here, in the repository root (pip needs
the network), run ``bash benchmarks/gpu_wheels.sh``, which does::

    echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 \\
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \\
        dynamax==1.0.3 tfp-nightly==0.26.0.dev20261027 decorator==5.3.1 \\
        dm-tree==0.1.10 gast==0.7.0

then call the device tool's ``run`` with ``carry=[".whl"]`` and the command::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --json $OUT/gpu_results.json

(timeout_s 300). dynamax imports ``fastprogress.fastprogress.progress_bar``, which is
not there either: when ``import fastprogress`` fails, this script writes a stand-in
package to a temporary directory and puts it on ``sys.path`` before importing dynamax
(its ``progress_bar(it, *args, **kwargs)`` returns ``it``; no row uses it).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import probseq
from probseq import data

HMM_WORKLOADS = {
    "medium": dict(k=32, v=64, b=64, t=1000),
    "batch": dict(k=64, v=64, b=1024, t=1000),
    "largeK": dict(k=256, v=128, b=8, t=2000),
    "long": dict(k=8, v=16, b=1, t=1_000_000),
}
#: --quick: one tiny shape for all four (compiled once, so the CPU test stays short).
QUICK_HMM_WORKLOADS = {name: dict(k=4, v=8, b=4, t=128) for name in HMM_WORKLOADS}
#: The rows of each HMM workload, in the order they run (cheap ones first).
HMM_ENGINES = (
    "probseq log_prob auto",
    "probseq log_prob parallel",
    "probseq log_prob chunked",
    "probseq log_prob sequential",
    "probseq EM iteration",
    "dynamax parallel_hmm_filter",
    "dynamax hmm_filter",
    "dynamax hmm_smoother",
)
PRECISION_ROWS = (
    "log_prob float32 vs float64, max relative error",
    "EM 10 iterations, transition matrix max abs difference",
    "EM 10 iterations, all parameters max abs difference",
)
PRECISION_TARGETS = {PRECISION_ROWS[0]: 2e-7, PRECISION_ROWS[1]: 1e-6, PRECISION_ROWS[2]: 1e-6}
SCAN_ENGINES = ("LRU sequential", "LRU parallel", "MinGRU sequential", "MinGRU parallel")
LSTM_WORKLOADS = ("H256", "H1024")
LSTM_ENGINES = (
    "probseq fit_sgd",
    "jax lax.scan hoisted",
    "flax OptimizedLSTMCell",
    "torch nn.LSTM",
)
SECTIONS = ("hmm", "precision", "scan", "lstm")
#: Each section's share of --budget; a row starts only before its section's cumulative
#: share is spent (leftover time rolls forward to later sections).
SECTION_SHARES = {"hmm": 0.6, "precision": 0.07, "scan": 0.08, "lstm": 0.25}
LR, CLIP = 1e-3, 1.0

NOT_INSTALLED, OUT_OF_MEMORY, OVER_CAP = "not installed", "out of memory", "over cap"


class NotInstalled(Exception):
    """An optional package of a row is missing."""


# ----------------------------------------------------------------- row machinery
def failure_reason(exc: BaseException) -> str:
    """The ``reason`` of a row whose work raised ``exc``: "out of memory" for XLA's
    RESOURCE_EXHAUSTED and torch's OutOfMemoryError, "not installed" for a missing
    package, else "error: <type>: <message>"."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, NotInstalled | ImportError):
        return f"{NOT_INSTALLED} ({str(exc).splitlines()[0][:100]})"
    if (
        type(exc).__name__ == "OutOfMemoryError"
        or "RESOURCE_EXHAUSTED" in text
        or "out of memory" in text.lower()
    ):
        return f"{OUT_OF_MEMORY} ({text.splitlines()[0][:160]})"
    return f"error: {text.splitlines()[0][:200]}"


def _block(out):
    """Wait for ``out`` (JAX arrays, a torch tensor or anything else)."""
    if hasattr(out, "item") and type(out).__module__.startswith("torch"):
        out.item()
    else:
        jax.block_until_ready(out)
    return out


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    _block(fn())
    return time.perf_counter() - t0


def time_calls(fn: Callable[[], object], cap: float, repeats: int) -> dict:
    """Time ``fn``: a first call (compile included), then warm calls, at most ``repeats``.

    A first call over ``cap`` seconds ends the row as "over cap"; otherwise one warm call
    always follows (the first includes the compile, so it says little about the next),
    and more follow while the row's elapsed time plus the last call's stays within
    ``cap``. A row so takes at most about twice ``cap``.

    Returns the row's fields: ``time_s`` (median warm seconds, None if none ran),
    ``first_s``, ``n_timed`` and ``reason`` (None, or "over cap ...")."""
    first = _seconds(fn)
    row = {"first_s": first, "time_s": None, "n_timed": 0, "reason": None}
    if first > cap:
        row["reason"] = f"{OVER_CAP} (first call {first:.1f} s > cap {cap:g} s)"
        return row
    times = [_seconds(fn)]
    elapsed = first + times[0]
    while len(times) < repeats and elapsed + times[-1] <= cap:
        times.append(_seconds(fn))
        elapsed += times[-1]
    row.update(time_s=statistics.median(times), n_timed=len(times))
    return row


def time_increment(run: Callable[[int], object], extra: int, cap: float, repeats: int) -> dict:
    """Seconds of one more iteration: (median t(1 + extra) - median t(1)) / extra, over
    alternating calls of ``run(1)`` and ``run(1 + extra)`` (at most ``repeats`` pairs;
    the caps as in :func:`time_calls`: one pair always follows a first call within
    ``cap``); ``first_s`` is the first ``run(1)`` (compile included), ``call_s`` the
    fixed cost per call (validation, setup)."""
    first = _seconds(lambda: run(1))
    row = {"first_s": first, "time_s": None, "n_timed": 0, "reason": None, "extra": extra}
    if first > cap:
        row["reason"] = f"{OVER_CAP} (first call {first:.1f} s > cap {cap:g} s)"
        return row
    ones, mores, elapsed = [], [], first
    while not ones or (len(ones) < repeats and elapsed + ones[-1] + mores[-1] <= cap):
        ones.append(_seconds(lambda: run(1)))
        mores.append(_seconds(lambda: run(1 + extra)))
        elapsed += ones[-1] + mores[-1]
    one, more = statistics.median(ones), statistics.median(mores)
    per_iter = max(more - one, 0.0) / extra
    row.update(time_s=per_iter, n_timed=len(ones), call_s=max(one - per_iter, 0.0))
    return row


class Runner:
    """Runs rows under the caps and the budget, collects them, never raises."""

    def __init__(self, cap: float, budget: float, repeats: int):
        self.cap, self.repeats = cap, repeats
        self.start = time.perf_counter()
        self.rows: list[dict] = []
        self.deadline: dict[str, float] = {}
        total = 0.0
        for name in SECTIONS:
            total += SECTION_SHARES[name]
            self.deadline[name] = budget * total

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run(self, section: str, workload: str, engine: str, measure, **fields) -> dict:
        """One row: ``measure()`` returns the row's timing fields (time_calls or
        time_increment) or raises; the result is stored whatever happens."""
        row = {"id": f"{section}/{workload}/{engine}", "section": section}
        row.update(workload=workload, engine=engine, time_s=None, first_s=None, reason=None)
        row.update(fields)
        if self.elapsed() > self.deadline[section]:
            row["reason"] = (
                f"{OVER_CAP} (the run's budget for section {section!r} was spent, "
                f"{self.deadline[section]:.0f} s after the start)"
            )
        else:
            try:
                row.update(measure())
            except Exception as exc:  # noqa: BLE001 - every failure becomes the row's reason
                row["reason"] = failure_reason(exc)
            finally:
                _free_memory()
        self.rows.append(row)
        _print_progress(row)
        return row


def _free_memory():
    import gc

    gc.collect()
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _print_progress(row):
    if row["time_s"] is not None:
        what = f"{row['time_s']:.4g} s"
    elif row.get("value") is not None:
        what = f"{row['value']:.3g}"
    else:
        what = row["reason"]
    print(f"  .. {row['id']}: {what}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ optional packages
def ensure_fastprogress(directory: str | None = None) -> str | None:
    """Make ``fastprogress.fastprogress.progress_bar`` importable (dynamax needs it).

    If ``fastprogress`` is installed nothing is done and None is returned; else a
    stand-in package whose ``progress_bar(it, *args, **kwargs)`` returns ``it`` is
    written under ``directory`` (default: a new temporary directory, removed at exit),
    which is put first on ``sys.path``; the directory is returned."""
    if importlib.util.find_spec("fastprogress") is not None:
        return None
    if directory is None:
        directory = tempfile.mkdtemp(prefix="fastprogress_standin_")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    package = os.path.join(directory, "fastprogress")
    os.makedirs(package, exist_ok=True)
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write('"""Stand-in for fastprogress (benchmarks/gpu.py): no progress bars."""\n')
    with open(os.path.join(package, "fastprogress.py"), "w") as f:
        f.write(
            '"""Stand-in for fastprogress.fastprogress (benchmarks/gpu.py)."""\n\n\n'
            "def progress_bar(it, *args, **kwargs):\n"
            '    """Return the iterable itself: no progress bar."""\n'
            "    return it\n"
        )
    sys.path.insert(0, directory)
    importlib.invalidate_caches()
    return directory


_DYNAMAX: dict = {}


def import_dynamax():
    """(hmm_filter, parallel_hmm_filter, hmm_smoother, the matmul precision dynamax
    sets on import); the global setting is restored at once. Raises NotInstalled."""
    if not _DYNAMAX:
        ensure_fastprogress()
        before = jax.config.jax_default_matmul_precision
        try:
            import dynamax.hidden_markov_model as dhmm

            own = jax.config.jax_default_matmul_precision
        except ImportError as exc:
            raise NotInstalled(f"dynamax: {exc}") from exc
        finally:
            jax.config.update("jax_default_matmul_precision", before)
        _DYNAMAX.update(
            filter=dhmm.hmm_filter,
            parallel=dhmm.parallel_hmm_filter,
            smoother=dhmm.hmm_smoother,
            precision=own,
        )
    d = _DYNAMAX
    return d["filter"], d["parallel"], d["smoother"], d["precision"]


def _import_optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise NotInstalled(f"{name}: {exc}") from exc


def versions() -> dict:
    """Versions of the packages involved, read from their metadata (importing dynamax
    here would change JAX's global precision before the rows run)."""
    out = {"python": platform.python_version()}
    names = ["jax", "jaxlib", "numpy", "numpyro", "optax", "flax", "torch", "dynamax"]
    names += ["tfp-nightly"]
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    dev = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
    }
    try:
        stats = dev.memory_stats() or {}
        info["memory_limit_bytes"] = stats.get("bytes_limit")
    except Exception:  # noqa: BLE001 - CPU devices have no memory statistics
        info["memory_limit_bytes"] = None
    if "torch" in sys.modules:  # a training row imported it
        torch = sys.modules["torch"]
        info["torch_cuda"] = torch.cuda.is_available()
        info["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return info


# ------------------------------------------------------------------------ HMM rows
def hmm_problem(k, v, b, t, seed=0):
    """Random (pi, A, B, x) as benchmarks/em.py draws them (sticky A), float64 NumPy."""
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(k))
    a = rng.dirichlet(np.ones(k), size=k) * 0.5 + 0.5 * np.eye(k)
    em = rng.dirichlet(np.ones(v), size=k)
    x = rng.integers(0, v, size=(b, t)).astype(np.int32)
    return pi, a, em, x


def _probseq_hmm(k, v, pi, a, em, scan="auto", dtype=jnp.float32):
    model = probseq.CategoricalHMM(k, v, scan=scan)
    params = model.init(
        jax.random.key(0), initial_probs=pi, transition_matrix=a, emission_probs=em, dtype=dtype
    )
    return model, params


def _dynamax_fns():
    """Jitted dynamax calls over a batch, every array an argument (see the docstring);
    built once, so workloads of one shape share their compiled code."""
    if "fns" in _DYNAMAX:
        return _DYNAMAX["fns"], _DYNAMAX["precision"]
    d_filter, d_parallel, d_smoother, precision = import_dynamax()

    def batched(kernel, out):
        def fn(pi, a, log_b, x):
            return jax.vmap(lambda xs: out(kernel(pi, a, log_b[:, xs].T)))(x)

        return jax.jit(fn)

    def loglik(post):
        return post.marginal_loglik

    _DYNAMAX["fns"] = {
        "dynamax hmm_filter": batched(d_filter, loglik),
        "dynamax parallel_hmm_filter": batched(d_parallel, loglik),
        "dynamax hmm_smoother": batched(d_smoother, lambda post: post),
    }
    return _DYNAMAX["fns"], precision


def bench_hmm_workload(runner: Runner, name: str, w: dict, extra: int):
    k, v, b, t = w["k"], w["v"], w["b"], w["t"]
    pi, a, em, x = hmm_problem(k, v, b, t)
    shape = f"K{k} V{v} B{b} T{t}"
    cap, reps = runner.cap, runner.repeats
    for engine in HMM_ENGINES:
        fields = {"shape": shape}
        if engine.startswith("probseq log_prob"):
            scan = engine.rsplit(" ", 1)[1]
            model, params = _probseq_hmm(k, v, pi, a, em, scan)
            method, group = model.filter_path(b, t, jnp.float32)
            fields.update(path=method, group_size=group)
            fields["vs"] = None if scan == "auto" else "probseq log_prob auto"
            measure = lambda m=model, p=params: time_calls(  # noqa: E731
                lambda: probseq.log_prob(m, p, x), cap, reps
            )
        elif engine == "probseq EM iteration":
            model, params = _probseq_hmm(k, v, pi, a, em)

            def run(n, m=model, p=params):
                return probseq.fit_em(m, p, x, num_iters=n, tol=0.0).params

            measure = lambda r=run: time_increment(r, extra, cap, reps)  # noqa: E731
        else:
            fields["vs"] = (
                "probseq EM iteration"
                if engine == "dynamax hmm_smoother"
                else "probseq log_prob auto"
            )

            def measure(engine=engine):
                fns, precision = _dynamax_fns()
                fn = fns[engine]
                args = (
                    jnp.asarray(pi, jnp.float32),
                    jnp.asarray(a, jnp.float32),
                    jnp.log(jnp.asarray(em, jnp.float32)),
                    jnp.asarray(x),
                )

                def call():
                    with jax.default_matmul_precision(precision):
                        return fn(*args)

                return time_calls(call, cap, reps) | {"matmul_precision": precision}

        runner.run("hmm", name, engine, measure, **fields)


# ------------------------------------------------------------------ precision rows
@contextlib.contextmanager
def enable_x64():
    """float64 inside the block only (``jax.enable_x64`` or the older experimental one)."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # older JAX
        from jax.experimental import enable_x64 as ctx

        with ctx():
            yield
        return
    with ctx(True):
        yield


def precision_values(w: dict, em_iters: int = 10) -> dict:
    """{row: value} of PRECISION_ROWS on workload ``w``: float32 results against float64."""
    k, v = w["k"], w["v"]
    pi, a, em, x = hmm_problem(**w)

    def results(dtype):
        model, params = _probseq_hmm(k, v, pi, a, em, dtype=dtype)
        lp = np.asarray(probseq.log_prob(model, params, x), np.float64)
        fitted = probseq.fit_em(model, params, x, num_iters=em_iters, tol=0.0).params
        probs = [np.asarray(p, np.float64) for p in model.probabilities(fitted)]
        return lp, probs

    lp32, probs32 = results(jnp.float32)
    with enable_x64():
        lp64, probs64 = results(jnp.float64)
    rel = float(np.max(np.abs(lp32 - lp64) / np.abs(lp64)))
    diffs = [float(np.max(np.abs(p - q))) for p, q in zip(probs32, probs64, strict=True)]
    return {PRECISION_ROWS[0]: rel, PRECISION_ROWS[1]: diffs[1], PRECISION_ROWS[2]: max(diffs)}


def bench_precision(runner: Runner, name: str, w: dict):
    shape = f"K{w['k']} V{w['v']} B{w['b']} T{w['t']}"
    cache: dict = {}

    def measure(row):
        def go():
            if not cache:  # one computation for all rows; its failure fails each row
                try:
                    cache["values"] = precision_values(w)
                except Exception as exc:  # noqa: BLE001 - re-raised per row below
                    cache["error"] = exc
            if "error" in cache:
                raise cache["error"]
            value = cache["values"][row]
            target = PRECISION_TARGETS[row]
            return {"value": value, "target": target, "met": value <= target}

        return go

    for row in PRECISION_ROWS:
        runner.run("precision", name, row, measure(row), shape=shape, unit="")


# ----------------------------------------------------------------------- scan rows
def bench_scan(runner: Runner, b: int, t: int, hidden: int, layers: int):
    x = np.random.default_rng(0).integers(0, 64, size=(b, t)).astype(np.int32)
    shape = f"V64 B{b} T{t} H{hidden} L{layers}"
    for engine in SCAN_ENGINES:
        family_name, scan = engine.split()
        family = getattr(probseq, family_name)

        def measure(family=family, scan=scan):
            model = family(vocab_size=64, hidden_size=hidden, num_layers=layers, scan=scan)
            params = model.init(jax.random.key(0))
            return time_calls(
                lambda: probseq.log_prob(model, params, x), runner.cap, runner.repeats
            )

        vs = f"{family_name} parallel" if scan == "sequential" else None
        runner.run("scan", "recurrent", engine, measure, shape=shape, vs=vs)


# ----------------------------------------------------------------------- LSTM rows
def char_windows(n: int, t: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """(n, t + 1) windows of pydoc text as ids (t inputs + the next character), V."""
    text = data.pydoc_text()
    vocab = data.CharVocabulary.from_text(text)
    ids = vocab.encode(text)
    starts = np.random.default_rng(seed).integers(0, ids.size - t - 1, size=n)
    return np.stack([ids[s : s + t + 1] for s in starts]).astype(np.int32), vocab.vocab_size


#: Adam after clipping by global norm: the optimizer of every training row.
TX = optax.chain(optax.clip_by_global_norm(CLIP), optax.adam(LR))
_STEPS: dict = {}


def _jax_train_loop(loss_fn, params, batches):
    """A jitted Adam(+clip) step in a Python loop over ``batches`` (steps, B, T + 1);
    returns a function that runs all the steps from ``params`` and returns the loss.
    One jitted step per ``loss_fn`` (workloads of one shape share its compiled code)."""
    if loss_fn not in _STEPS:

        @jax.jit
        def step(params, opt_state, batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, opt_state = TX.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        _STEPS[loss_fn] = step
    step = _STEPS[loss_fn]

    def train():
        p, s, loss = params, TX.init(params), None
        for i in range(batches.shape[0]):
            p, s, loss = step(p, s, batches[i])
        return loss

    return train


def _xent(logits, targets):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def scan_lstm_params(key, v, e, h):
    """Parameters of the hand-written LSTM: embedding, input and recurrent weights
    (PyTorch gate order i, f, g, o; forget bias 1), readout."""
    k = jax.random.split(key, 4)

    def uniform(key, shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

    return {
        "embed": jax.random.normal(k[0], (v, e), jnp.float32),
        "w_ih": uniform(k[1], (e, 4 * h), e),
        "w_hh": uniform(k[2], (h, 4 * h), h),
        "b": jnp.zeros((4 * h,), jnp.float32).at[h : 2 * h].set(1.0),
        "w_out": uniform(k[3], (h, v), h),
        "b_out": jnp.zeros((v,), jnp.float32),
    }


def scan_lstm_logits(p, x):
    """(B, T, V) next-character logits of the hand-written LSTM: the input projection
    of every step is one matrix product before ``lax.scan``; the loop does h @ W_hh."""
    pre = p["embed"][x] @ p["w_ih"] + p["b"]  # (B, T, 4H), hoisted out of the loop
    h0 = jnp.zeros((x.shape[0], p["w_hh"].shape[0]), pre.dtype)

    def step(carry, pre_t):
        h, c = carry
        i, f, g, o = jnp.split(pre_t + h @ p["w_hh"], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    _, hs = jax.lax.scan(step, (h0, h0), jnp.swapaxes(pre, 0, 1))
    return jnp.swapaxes(hs, 0, 1) @ p["w_out"] + p["b_out"]


def scan_lstm_loss(p, batch):
    """Mean next-character cross-entropy of (B, T + 1) windows."""
    return _xent(scan_lstm_logits(p, batch[:, :-1]), batch[:, 1:])


def lstm_trainers(h: int, e: int, b: int, t: int, steps: int) -> dict:
    """{engine: () -> () -> loss}: each builds its engine and returns one timed pass of
    ``steps`` optimizer steps over the same windows (the first pass compiles)."""
    windows, v = char_windows(steps * b, t)
    batches = windows.reshape(steps, b, t + 1)

    def probseq_fit():
        model = probseq.LSTM(vocab_size=v, hidden_size=h, embed_size=e)
        params = model.init(jax.random.key(0))
        x = windows[:, :t]  # probseq scores every one of the t characters

        def fit():
            return probseq.fit_sgd(model, params, x, key=jax.random.key(1), num_epochs=1,
                                   batch_size=b, learning_rate=LR, max_grad_norm=CLIP,
                                   shuffle=False, progress=False).params  # fmt: skip

        return fit

    def scan_jax():
        params = scan_lstm_params(jax.random.key(0), v, e, h)
        return _jax_train_loop(scan_lstm_loss, params, jnp.asarray(batches))

    def flax_linen():
        nn = _import_optional("flax.linen")
        key = ("flax", v, e, h)
        if key not in _STEPS:  # one module and loss per width: workloads share compiles

            class Net(nn.Module):
                @nn.compact
                def __call__(self, x):
                    hs = nn.RNN(nn.OptimizedLSTMCell(h))(nn.Embed(v, e)(x))
                    return nn.Dense(v)(hs)

            net = Net()

            def loss(p, batch):
                return _xent(net.apply(p, batch[:, :-1]), batch[:, 1:])

            _STEPS[key] = net, loss
        net, loss = _STEPS[key]
        dev_batches = jnp.asarray(batches)
        params = net.init(jax.random.key(0), dev_batches[0, :, :t])
        return _jax_train_loop(loss, params, dev_batches)

    def torch_lstm():
        torch = _import_optional("torch")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.Embedding(v, e)
                self.rnn = torch.nn.LSTM(e, h, batch_first=True)
                self.out = torch.nn.Linear(h, v)

            def forward(self, x):
                return self.out(self.rnn(self.embed(x))[0])

        net = Net().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        data_t = torch.from_numpy(batches.astype(np.int64)).to(device)

        def train():
            loss = None
            for i in range(steps):
                batch = data_t[i]
                opt.zero_grad()
                logits = net(batch[:, :t])
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, v), batch[:, 1:].reshape(-1)
                )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
                opt.step()
            return loss  # _block calls .item(), which waits for the device

        return train

    return {
        "probseq fit_sgd": probseq_fit,
        "jax lax.scan hoisted": scan_jax,
        "flax OptimizedLSTMCell": flax_linen,
        "torch nn.LSTM": torch_lstm,
    }


def bench_lstm(runner: Runner, name: str, h: int, e: int, b: int, t: int, steps: int):
    trainers = lstm_trainers(h, e, b, t, steps)
    tokens = b * t * steps
    for engine in LSTM_ENGINES:

        def measure(build=trainers[engine]):
            # each timed pass is already an average over ``steps`` steps: 3 passes suffice
            row = time_calls(build(), runner.cap, min(runner.repeats, 3))
            if row["time_s"] is not None:
                row["value"] = tokens / row["time_s"]
            return row

        vs = None if engine == "probseq fit_sgd" else "probseq fit_sgd"
        shape = f"H{h} E{e} B{b} T{t}, {steps} steps"
        fields = dict(shape=shape, unit="tokens/s", tokens=tokens, vs=vs)
        runner.run("lstm", name, engine, measure, **fields)


# ------------------------------------------------------------------------- output
def add_ratios(rows: list[dict]) -> None:
    """ratio = time of the row / time of the row it is compared with (``vs``), both in
    the same section and workload: > 1 means the compared (probseq) row is faster."""
    by_key = {(r["section"], r["workload"], r["engine"]): r for r in rows}
    for r in rows:
        other = by_key.get((r["section"], r["workload"], r.get("vs")))
        r["ratio"] = None
        if other and r["time_s"] and other["time_s"]:
            r["ratio"] = r["time_s"] / other["time_s"]


def _fmt(x, spec=".4g"):
    return "-" if x is None else format(x, spec)


def print_tables(rows: list[dict], header: str) -> None:
    print(header)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["section"], r["workload"]), []).append(r)
    titles = {
        "hmm": "HMM {w} ({shape}), float32: seconds per call (warm median); ratio = row time / "
        "probseq log_prob auto time (dynamax hmm_smoother: / probseq EM iteration time)",
        "precision": "float32 vs float64, {w} ({shape}): value, target",
        "scan": "LRU / MinGRU log_prob of a batch ({shape}), seconds; "
        "ratio = sequential time / parallel time",
        "lstm": "char-LSTM training {w} ({shape}): tokens/s; ratio = anchor time / probseq "
        "time (= probseq tokens/s / anchor tokens/s)",
    }
    for (section, w), group in groups.items():
        print("\n" + titles[section].format(w=w, shape=group[0].get("shape", "")))
        for r in group:
            name = r["engine"]
            if r.get("path"):
                name += (
                    f" [{r['path']}"
                    + (f", groups of {r['group_size']}" if r.get("group_size") else "")
                    + "]"
                )
            if section == "precision":
                value = _fmt(r.get("value"), ".3g")
                extra = (
                    f"target {r['target']:g} {'met' if r['met'] else 'NOT met'}"
                    if r.get("target")
                    else ""
                )
                print(f"  {name:<58} {value:>10}  {extra}{r['reason'] or ''}")
                continue
            if section == "lstm":
                value = _fmt(r.get("value"), ",.0f")
            else:
                value = _fmt(r["time_s"])
            ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
            tail = r["reason"] or ""
            print(
                f"  {name:<44} {value:>11} {'first ' + _fmt(r['first_s'], '.2f'):>11} "
                f"{ratio:>8}  {tail}"
            )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU test runs it)")
    parser.add_argument("--json", default="gpu_results.json", help="where to write the results")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--cap", type=float, default=None, help="seconds per row (20; quick 60)")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole run (225; quick 400)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="warm calls per row (5; quick 2)")
    args = parser.parse_args(argv)
    args.cap = args.cap or (60.0 if args.quick else 20.0)
    args.budget = args.budget or (400.0 if args.quick else 225.0)
    args.repeats = args.repeats or (2 if args.quick else 5)
    return args


def main(argv=None):
    args = parse_args(argv)
    runner = Runner(args.cap, args.budget, args.repeats)
    workloads = QUICK_HMM_WORKLOADS if args.quick else HMM_WORKLOADS
    if "hmm" in args.only:
        for name, w in workloads.items():
            bench_hmm_workload(runner, name, w, extra=2 if args.quick else 8)
    if "precision" in args.only:
        bench_precision(runner, "medium", workloads["medium"])
    if "scan" in args.only:
        bench_scan(runner, *((4, 128, 16, 1) if args.quick else (16, 4096, 256, 2)))
    if "lstm" in args.only:
        e, b, t, steps = (8, 4, 32, 2) if args.quick else (64, 64, 128, 48)
        for name in LSTM_WORKLOADS:  # --quick: one tiny width for both (compiled once)
            bench_lstm(runner, name, 16 if args.quick else int(name[1:]), e, b, t, steps)

    add_ratios(runner.rows)
    dev, vers = device_info(), versions()
    header = (
        f"{dev['device_kind']} ({dev['backend']}, {dev['device_count']} device(s)), "
        f"{dev['machine']} {dev['cpu_count']} cores; "
        + ", ".join(f"{k} {v}" for k, v in vers.items() if v)
        + "; not installed: "
        + (", ".join(k for k, v in vers.items() if not v) or "none")
        + f"\n{'quick' if args.quick else 'full'} run, cap {args.cap:g} s per row, budget "
        f"{args.budget:g} s, up to {args.repeats} warm calls per row, "
        f"{runner.elapsed():.1f} s in all"
    )
    print_tables(runner.rows, header)
    result = {
        "mode": "quick" if args.quick else "full",
        "device": dev,
        "versions": vers,
        "settings": {"cap_s": args.cap, "budget_s": args.budget, "repeats": args.repeats},
        "total_s": runner.elapsed(),
        "rows": runner.rows,
    }
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
