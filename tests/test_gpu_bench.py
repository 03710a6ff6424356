"""benchmarks/gpu.py: the one-command GPU benchmark runs on CPU (--quick) and keeps its
promises (every row present, with a value or a reason; caps; out-of-memory and missing
packages as rows; the fastprogress stand-in that dynamax needs on the GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"

HMM_ROWS = [
    "probseq log_prob auto",
    "probseq log_prob parallel",
    "probseq log_prob chunked",
    "probseq log_prob sequential",
    "probseq EM iteration",
    "dynamax parallel_hmm_filter",
    "dynamax hmm_filter",
    "dynamax hmm_smoother",
]
EXPECTED_IDS = (
    {f"hmm/{w}/{e}" for w in ("medium", "batch", "largeK", "long") for e in HMM_ROWS}
    | {
        "precision/medium/log_prob float32 vs float64, max relative error",
        "precision/medium/EM 10 iterations, transition matrix max abs difference",
        "precision/medium/EM 10 iterations, all parameters max abs difference",
    }
    | {f"scan/recurrent/{f} {s}" for f in ("LRU", "MinGRU") for s in ("sequential", "parallel")}
    | {
        f"lstm/{w}/{e}"
        for w in ("H256", "H1024")
        for e in (
            "probseq fit_sgd",
            "jax lax.scan hoisted",
            "flax OptimizedLSTMCell",
            "torch nn.LSTM",
        )
    }
)
ALLOWED_REASONS = ("not installed", "out of memory", "over cap")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("probseq_gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _installed(name):
    return importlib.util.find_spec(name) is not None


# ~36 s of CPU (nearly all compilation): 36 s wall on a quiet 2-core machine, up to ~70 s
# when it is shared; not marked slow.
def test_quick_run_has_every_row_with_a_value_or_a_reason(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["id"]: r for r in result["rows"]}
    assert set(rows) == EXPECTED_IDS
    assert len(result["rows"]) == len(EXPECTED_IDS)
    for r in result["rows"]:
        has_value = r["time_s"] is not None or r.get("value") is not None
        reason = r["reason"] or ""
        assert has_value or reason.startswith(ALLOWED_REASONS), r
        assert not reason.startswith("error"), r
    # On CPU with --quick nothing is near a cap or out of memory: probseq's rows all ran.
    for rid, r in rows.items():
        if "probseq" in rid or rid.startswith(("precision/", "scan/")):
            assert r["reason"] is None, r
        if rid.startswith("lstm/") and "jax lax.scan" in rid:
            assert r["value"] > 0, r
    for rid, package in (("hmm/medium/dynamax hmm_filter", "dynamax"),
                         ("lstm/H256/flax OptimizedLSTMCell", "flax"),
                         ("lstm/H256/torch nn.LSTM", "torch")):  # fmt: skip
        if _installed(package):
            assert rows[rid]["reason"] is None, rows[rid]
        else:
            assert rows[rid]["reason"].startswith("not installed"), rows[rid]
    auto = rows["hmm/medium/probseq log_prob auto"]
    assert auto["path"] in ("sequential", "chunked", "parallel")
    if _installed("dynamax"):
        assert rows["hmm/medium/dynamax hmm_filter"]["ratio"] > 0
    precision = rows["precision/medium/log_prob float32 vs float64, max relative error"]
    assert 0 <= precision["value"] < 1e-4 and precision["target"] == 2e-7
    # the device and versions are recorded, and the table is printed
    assert result["device"]["backend"] == jax.default_backend()
    assert result["versions"]["jax"] == jax.__version__
    for text in ("HMM medium", "HMM long", "ratio", "float32 vs float64", "LRU / MinGRU",
                 "char-LSTM training H1024", f"jax {jax.__version__}", "probseq EM iteration",
                 "wrote"):  # fmt: skip
        assert text in proc.stdout, text


def test_time_calls_caps_the_row(gpu):
    def sleeper(seconds):
        return lambda: time.sleep(seconds)

    over = gpu.time_calls(sleeper(0.3), cap=0.1, repeats=5)
    assert over["time_s"] is None and over["reason"].startswith("over cap")
    assert over["first_s"] >= 0.3 and over["n_timed"] == 0
    # the first call fits: one warm call always follows, more only within the cap
    one = gpu.time_calls(sleeper(0.1), cap=0.25, repeats=5)
    assert one["reason"] is None and one["n_timed"] == 1 and one["time_s"] >= 0.1
    many = gpu.time_calls(sleeper(0.0), cap=10.0, repeats=3)
    assert many["n_timed"] == 3


def test_time_increment_is_the_cost_of_one_more_iteration(gpu):
    row = gpu.time_increment(lambda n: time.sleep(0.05 + 0.02 * n), extra=3, cap=5, repeats=2)
    assert row["reason"] is None and row["n_timed"] == 2
    assert 0.015 < row["time_s"] < 0.03
    assert 0.04 < row["call_s"] < 0.08
    over = gpu.time_increment(lambda n: time.sleep(0.2), extra=3, cap=0.1, repeats=2)
    assert over["time_s"] is None and over["reason"].startswith("over cap")


def test_failures_become_reasons(gpu):
    class OutOfMemoryError(RuntimeError):  # the name torch.cuda's error has
        pass

    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 31.6G")
    assert gpu.failure_reason(oom).startswith("out of memory")
    assert gpu.failure_reason(OutOfMemoryError("CUDA")).startswith("out of memory")
    assert gpu.failure_reason(ImportError("No module named 'flax'")).startswith("not installed")
    assert gpu.failure_reason(ValueError("bad")).startswith("error: ValueError")

    runner = gpu.Runner(cap=1.0, budget=1000.0, repeats=1)

    def exhausted():
        raise oom

    row = runner.run("hmm", "batch", "dynamax parallel_hmm_filter", exhausted)
    assert row["reason"].startswith("out of memory") and row["time_s"] is None
    spent = gpu.Runner(cap=1.0, budget=0.0, repeats=1)
    row = spent.run("lstm", "H256", "torch nn.LSTM", lambda: pytest.fail("must not run"))
    assert row["reason"].startswith("over cap")
    assert [r["id"] for r in runner.rows] == ["hmm/batch/dynamax parallel_hmm_filter"]


def test_ratios_compare_each_row_with_its_probseq_row(gpu):
    rows = [
        {"section": "hmm", "workload": "m", "engine": "probseq log_prob auto", "time_s": 2.0},
        {
            "section": "hmm",
            "workload": "m",
            "engine": "d",
            "time_s": 6.0,
            "vs": "probseq log_prob auto",
        },  # fmt: skip
        {
            "section": "hmm",
            "workload": "m",
            "engine": "e",
            "time_s": None,
            "vs": "probseq log_prob auto",
        },  # fmt: skip
    ]
    gpu.add_ratios(rows)
    assert rows[1]["ratio"] == 3.0 and rows[2]["ratio"] is None and rows[0]["ratio"] is None


@pytest.mark.skipif(not _installed("dynamax"), reason="dynamax not installed")
def test_dynamax_imports_with_the_fastprogress_standin_and_keeps_precision(tmp_path):
    # As on the GPU machine: no fastprogress (a view of site-packages without it, and
    # python -S), so gpu.py must write its stand-in; and dynamax's import must not leave
    # JAX's global matmul precision changed.
    site = pathlib.Path(importlib.util.find_spec("dynamax").origin).parents[1]
    view = tmp_path / "site"
    view.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith("fastprogress"):
            (view / entry.name).symlink_to(entry)
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        assert importlib.util.find_spec("fastprogress") is None, "fastprogress still there"
        spec = importlib.util.spec_from_file_location("g", {str(SCRIPT)!r})
        g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)
        import jax
        before = jax.config.jax_default_matmul_precision
        *fns, own = g.import_dynamax()
        assert jax.config.jax_default_matmul_precision == before, "precision changed"
        assert own == "float32", own
        stand_in = sys.modules["fastprogress.fastprogress"]
        assert "fastprogress_standin_" in stand_in.__file__, stand_in.__file__
        assert stand_in.progress_bar([1, 2], total=2) == [1, 2]
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(view)]))
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
