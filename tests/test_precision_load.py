"""Every saved run loads in every precision: a float32 run (the default) under
JAX_ENABLE_X64=1, a float64 run without it (cast, with a PrecisionWarning when values
change), for every registered family and each of its fit methods, in Python and through
the CLI commands that read a run. x64 is process-global, so the x64 side runs in a
child process; this process never changes a JAX setting. Also: the messages tell a
damaged file from another model from another precision, and a fit does not resume in
another precision than it began in (it says how to)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import probseq
from probseq import atomic, cli, io, spec, workflow
from probseq.families import registry
from probseq.fit.checkpoint import PrecisionWarning

HERE = pathlib.Path(__file__).parent
FIT = {
    "sgd": {"method": "sgd", "num_epochs": 1, "batch_size": 8},
    "em": {"method": "em", "num_iters": 2},
    "ls": {"method": "ls"},
}
REQUIRED = {"num_states": 2, "order": 1, "state_dim": 1}


def _combos():
    """(family, method) for every registered family and each of its fit methods."""
    return [(n, m) for n, f in registry.registered().items() for m in f.fit_methods]


def _spec(family, method):
    f = registry.registered()[family]
    kind = "text" if "categorical" in f.heads else "series"
    model = {"family": family, **{k: v for k, v in REQUIRED.items() if k in f.keys}}
    if "hidden_size" in f.keys:
        model["hidden_size"] = 4
    data = {"kind": kind, "sequence_length": 24, "split": [0.8, 0.1, 0.1]}
    return spec.parse_spec({"data": data, "model": model, "fit": FIT[method]})


def _source(kind):
    if kind == "text":
        return workflow.Source("text", text="the cat sat on the mat. " * 12, origin="cats")
    z = np.cumsum(np.random.default_rng(0).normal(size=(96, 1)), axis=0)
    return workflow.Source("series", values=z, names=("c0",), origin="walk")


def fit_all(root, combos):
    """Fit and save each combo under root/<family>-<method>; their test log-likelihoods."""
    scores = {}
    for family, method in combos:
        s = _spec(family, method)
        run = workflow.fit_spec(s, _source(s.kind), progress=False)
        io.save_run(run, pathlib.Path(root) / f"{family}-{method}")
        scores[f"{family}-{method}"] = _score(run)
    return scores


def _score(run):
    x = run.encode(_source(run.kind).text if run.kind == "text" else _source("series").values)
    return float(np.asarray(run.log_prob(x[None]))[0])


def _dtypes(run):
    return sorted({str(a.dtype) for a in jax.tree.leaves(run.params)})


def child(root32, root64, combos, cli_runs):
    """Under x64: load every float32 run, fit and save every combo in float64, and run
    the CLI commands that read a run on float32 runs. Prints one JSON line."""
    assert jax.config.jax_enable_x64
    loaded = {}
    for d in sorted(pathlib.Path(root32).iterdir()):
        run = io.load(d)
        loaded[d.name] = {"dtypes": _dtypes(run), "score": _score(run)}
    scores = fit_all(root64, combos)
    codes = {}
    for name, argv in cli_runs.items():
        codes[name] = cli.main(argv)
    print("RESULT " + json.dumps({"loaded": loaded, "scores": scores, "cli": codes}))


def _in_x64(code):
    env = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE)])
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :]), proc


def _round_trip(tmp_path, combos):
    root32, root64 = tmp_path / "f32", tmp_path / "f64"
    scores32 = fit_all(root32, combos)
    text = tmp_path / "t.txt"
    text.write_text(_source("text").text)
    series = tmp_path / "s.csv"
    series.write_text("c0\n" + "\n".join(f"{v:.6f}" for v in _source("series").values[:, 0]))
    cli_runs, covered = {}, set()
    for d in sorted(root32.iterdir()):
        run = io.load(d)
        # the CLI reads a run through io.load, loaded above for every family: its
        # commands run on one run per (data kind, fit method), and on every HMM (states)
        # (every family's sample/forecast under x64: tests/test_x64.py's table)
        method = d.name.rsplit("-", 1)[1]
        if (run.kind, method) in covered and not d.name.startswith("hmm-"):
            continue
        covered.add((run.kind, method))
        data = str(text if run.kind == "text" else series)
        cli_runs[f"{d.name} sample"] = ["sample", str(d), "--length", "3"]
        cli_runs[f"{d.name} forecast"] = ["forecast", str(d), "--data", data,
                                          "--horizon", "2", "--num-samples", "2"]  # fmt: skip
        cli_runs[f"{d.name} diagnose"] = ["diagnose", str(d), "--data", data, "--length", "10"]
        if d.name.startswith("hmm-"):
            cli_runs[f"{d.name} states"] = ["states", str(d), "--data", data, "--length", "10"]
    same = [str(d) for d in sorted(root32.iterdir()) if io.load(d).kind == "text"]
    if same:
        cli_runs["compare"] = ["compare", *same, "--data", str(text), "--quiet"]
    code = (
        "import json, test_precision_load as t; "
        f"t.child({str(root32)!r}, {str(root64)!r}, {combos!r}, "
        f"json.loads({json.dumps(cli_runs)!r}))"
    )
    result, proc = _in_x64(code)
    assert "probseq: error" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert all(c == 0 for c in result["cli"].values()), result["cli"]
    for name, got in result["loaded"].items():  # float32 runs under x64: cast up, exactly
        assert got["dtypes"] == ["float64"], (name, got)
        np.testing.assert_allclose(got["score"], scores32[name], rtol=1e-5, err_msg=name)
    for d in sorted(root64.iterdir()):  # float64 runs here: cast down, and said so
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = io.load(d)
        assert _dtypes(run) == ["float32"], d.name
        said = [w for w in caught if issubclass(w.category, PrecisionWarning)]
        assert said and "float64" in str(said[0].message), (
            d.name,
            [str(w.message) for w in caught],
        )
        np.testing.assert_allclose(_score(run), result["scores"][d.name], rtol=1e-4, err_msg=d.name)


def test_an_hmm_em_run_loads_in_either_precision(tmp_path):
    _round_trip(tmp_path, [("hmm", "em")])


@pytest.mark.slow  # every registered family x fit method, fitted twice: ~1-2 minutes
def test_every_family_and_fitter_loads_in_either_precision(tmp_path):
    combos = _combos()
    assert len(combos) >= 10 and ("lds", "em") in combos and ("ar", "ls") in combos
    _round_trip(tmp_path, combos)


@pytest.fixture(scope="module")
def hmm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    fit_all(root, [("hmm", "em")])
    return root / "hmm-em"


def _copy(run, tmp_path, name="copy"):
    shutil.copytree(run, tmp_path / name)
    return tmp_path / name


def _refresh_checksums(d):
    meta = json.loads((d / "run.json").read_text())
    meta["sha256"] = {n: atomic.sha256_file(d / n) for n in meta["sha256"]}
    (d / "run.json").write_text(json.dumps(meta))


def test_damaged_another_model_and_another_precision_are_told_apart(hmm_run, tmp_path):
    damaged = _copy(hmm_run, tmp_path, "damaged")
    raw = bytearray((damaged / "params.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (damaged / "params.npz").write_bytes(bytes(raw))
    with pytest.raises(io.RunError, match=r"params\.npz is damaged") as e:
        io.load(damaged)
    assert "precision" not in str(e.value)

    other = _copy(hmm_run, tmp_path, "other")  # intact bytes, parameters of a 3-state HMM
    bigger = _spec("hmm", "em").replace(model={"family": "hmm", "num_states": 3})
    run = io.load(hmm_run)
    model = bigger.build_model(vocab_size=run.vocabulary.vocab_size)
    big = probseq.fit.checkpoint
    big.save_checkpoint(other, {"params": bigger.init_params(model)}, {}, filename="params.npz")
    _refresh_checksums(other)
    with pytest.raises(io.RunError, match="another model") as e:
        io.load(other)
    assert "intact" in str(e.value) and "corrupt" not in str(e.value)
    assert "is damaged" not in str(e.value)

    wider = _copy(hmm_run, tmp_path, "wider")  # intact, the same model, float64
    params64 = jax.tree.map(lambda a: np.asarray(a, np.float64) / 3, run.params)
    big.save_checkpoint(wider, {"params": params64}, {}, filename="params.npz")
    _refresh_checksums(wider)
    with pytest.warns(PrecisionWarning, match="float64.*cast to float32"):
        loaded = io.load(wider)
    assert _dtypes(loaded) == ["float32"]


SGD = {"data": {"kind": "text", "sequence_length": 24, "split": [0.8, 0.1, 0.1]},
       "model": {"family": "gru", "hidden_size": 3},
       "fit": {"method": "sgd", "num_epochs": 1, "batch_size": 8}}  # fmt: skip


def test_a_fit_resumes_only_in_the_precision_it_began_in(tmp_path):
    spec_path = tmp_path / "gru.toml"
    spec_path.write_text(spec.spec_text(spec.parse_spec(SGD)))
    text = tmp_path / "t.txt"
    text.write_text(_source("text").text)
    out = tmp_path / "gru"
    argv = ["fit", str(spec_path), "--data", str(text), "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    (out / "run.json").unlink()  # as if killed after its last checkpoint
    code = (
        "import sys, json, probseq, numpy as np, jax; from probseq import cli; "
        f"rc = cli.main({argv!r}); "
        "m = probseq.GRU(vocab_size=5, hidden_size=3); "
        "x = np.random.default_rng(0).integers(0, 5, size=(4, 9)); "
        "err = ''\n"
        "try:\n"
        "    probseq.fit_sgd(m, m.init(jax.random.key(0)), x, key=jax.random.key(1), "
        f"num_epochs=1, batch_size=2, checkpoint_dir={str(tmp_path / 'c')!r}, progress=False)\n"
        "except ValueError as e:\n"
        "    err = type(e).__name__ + ': ' + str(e)\n"
        "print('RESULT ' + json.dumps({'rc': rc, 'err': err}))"
    )
    m = probseq.GRU(vocab_size=5, hidden_size=3)
    x = np.random.default_rng(0).integers(0, 5, size=(4, 9))
    probseq.fit_sgd(m, m.init(jax.random.key(0)), x, key=jax.random.key(1), num_epochs=1,
                    batch_size=2, checkpoint_dir=tmp_path / "c", progress=False)  # fmt: skip
    result, proc = _in_x64(code)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("probseq: error")]
    assert result["rc"] == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert "float32" in lines[0] and "precision" in lines[0] and "JAX_ENABLE_X64" in lines[0]
    assert "corrupt" not in lines[0] and "is damaged" not in lines[0]
    assert result["err"].startswith("PrecisionMismatchError") and "intact" in result["err"]
    assert cli.main(argv) == 0  # in its own precision it resumes and finishes
    io.load(out)
