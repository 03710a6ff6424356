"""The ``probseq`` command: fit / compare / sample / forecast on a user's text file and
CSV, the demo, and one clear error line (exit status 1) for bad input."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from references import run_cli as _run

import probseq
from probseq import io, workflow

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _spec(tmp_path, name, body):
    path = tmp_path / f"{name}.toml"
    path.write_text(body)
    return str(path)


TEXT_GRU = """
seed = 1
[data]
kind = "text"
sequence_length = 64
[model]
family = "gru"
hidden_size = 16
[fit]
method = "sgd"
num_epochs = 1
batch_size = 8
"""
TEXT_HMM = """
[data]
kind = "text"
sequence_length = 64
[model]
family = "hmm"
num_states = 4
[fit]
method = "em"
num_iters = 3
"""
SERIES_HMM = """
[data]
kind = "series"
columns = ["flow"]
[model]
family = "hmm"
num_states = 2
head = "normal"
[fit]
method = "em"
num_iters = 5
"""
SERIES_LSTM = """
[data]
kind = "series"
[model]
family = "lstm"
hidden_size = 8
head = "normal"
[fit]
method = "sgd"
num_epochs = 3
batch_size = 1
"""


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(probseq.data.pydoc_text()[:4000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    t = np.arange(150)
    flow = 100 + 10 * np.sin(t / 8) + rng.normal(size=t.size)
    temp = 20 + rng.normal(size=t.size)
    path = tmp_path_factory.mktemp("data") / "river.csv"
    rows = zip(t, flow, temp, strict=True)
    lines = ["day,flow,temp"] + [f"{d},{f:.4f},{c:.4f}" for d, f, c in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_text_workflow_fit_compare_sample_forecast(tmp_path, text_file, capsys):
    gru = _spec(tmp_path, "gru", TEXT_GRU)
    hmm = _spec(tmp_path, "hmm", TEXT_HMM)
    for spec, out in ((gru, "gru"), (hmm, "hmm")):
        code, stdout, err = _run(
            ["fit", spec, "--data", text_file, "--out", tmp_path / out, "--quiet"], capsys
        )
        assert code == 0, err
        assert "bits/char" in stdout and (tmp_path / out / "run.json").exists()
    code, stdout, err = _run(
        ["compare", tmp_path / "gru", tmp_path / "hmm", "--data", text_file, "--part", "test",
         "--plot", tmp_path / "cmp.png"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "gru" in stdout and "hmm" in stdout and (tmp_path / "cmp.png").stat().st_size > 0
    code, stdout, err = _run(
        ["sample", tmp_path / "gru", "--length", "30", "--prefix", "The ", "--num-samples", "2",
         "--temperature", "0.5"], capsys,
    )  # fmt: skip
    assert code == 0, err
    samples = [part.split("\n", 1)[1][:-1] for part in stdout.split("--- sample ")[1:]]
    assert len(samples) == 2 and all(s.startswith("The ") and len(s) == 34 for s in samples)
    code, stdout, err = _run(
        ["forecast", tmp_path / "hmm", "--data", text_file, "--horizon", "10",
         "--num-samples", "3"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "next character:" in stdout
    code, stdout, err = _run(
        ["states", tmp_path / "hmm", "--data", text_file, "--length", "200",
         "--plot", tmp_path / "states.png"], capsys,
    )  # fmt: skip
    assert code == 0, err
    shares = [float(line.split(", ")[2]) for line in stdout.splitlines()[2:6]]
    assert len(shares) == 4 and abs(sum(shares) - 1) < 1e-6
    assert (tmp_path / "states.png").stat().st_size > 0
    code, _, err = _run(["states", tmp_path / "gru", "--data", text_file], capsys)
    assert code == 1 and "needs an HMM run" in err
    _check_diagnose(tmp_path / "gru", text_file, tmp_path / "grad.png", capsys)
    _check_diagnose(tmp_path / "hmm", text_file, None, capsys)


def _check_diagnose(run_dir, data, plot, capsys):
    """`probseq diagnose` prints rows of gradient_diagnostics on the run's own encoding."""
    argv = ["diagnose", run_dir, "--data", data, "--length", "30"]
    code, stdout, err = _run(argv + (["--plot", plot] if plot else []), capsys)
    assert code == 0, err
    rows = [[float(v) for v in line.split(", ")] for line in stdout.splitlines()[2:13]]
    run = io.load(run_dir)
    x = workflow.encode(run, workflow.read_source(run.kind, str(data), None))
    d = probseq.diagnostics.gradient_diagnostics(run.model, run.params, x[:30])
    steps = [r[0] for r in rows]
    assert len(steps) == 11 and steps[0] == 0 and steps[-1] == 29 and np.all(np.diff(steps) > 0)
    for t, *values in rows:
        t = int(t)
        want = [d.jacobian_norms[t], d.singular_values[t, 0], d.loss_gradient_norms[t],
                d.step_gradient_norms[t]]  # fmt: skip
        np.testing.assert_allclose(values, want, rtol=1e-3)
    if plot:
        assert plot.stat().st_size > 0


def test_series_workflow_on_a_users_csv(tmp_path, csv_file, capsys):
    hmm = _spec(tmp_path, "ghmm", SERIES_HMM)
    lstm = _spec(tmp_path, "lstm", SERIES_LSTM)
    code, _, err = _run(["fit", hmm, "--data", csv_file, "--out", tmp_path / "ghmm",
                         "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = _run(
        ["fit", lstm, "--data", csv_file, "--columns", "flow", "--out", tmp_path / "lstm",
         "--quiet", "--plot", tmp_path / "curves.png"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "curves.png").stat().st_size > 0
    run = io.load(tmp_path / "ghmm")
    assert run.columns == ("flow",) and run.scaler is not None
    code, stdout, err = _run(
        ["compare", tmp_path / "ghmm", tmp_path / "lstm", "--data", csv_file], capsys
    )
    assert code == 0, err
    assert "nats/step" in stdout
    code, stdout, err = _run(
        ["forecast", tmp_path / "ghmm", "--data", csv_file, "--horizon", "5", "--num-samples",
         "400", "--plot", tmp_path / "fan.png"], capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = [line for line in stdout.splitlines() if line[:1].isdigit()]
    assert len(rows) == 5
    mean = np.array([float(r.split(",")[1]) for r in rows])
    assert np.all((mean > 70) & (mean < 130)), mean  # original units, not standardised
    code, stdout, err = _run(["sample", tmp_path / "lstm", "--length", "4"], capsys)
    assert code == 0, err
    code, stdout, err = _run(
        ["diagnose", tmp_path / "lstm", "--data", csv_file, "--length", "5"], capsys
    )
    assert code == 0, err
    assert [line.split(",")[0] for line in stdout.splitlines()[2:]] == ["0", "1", "2", "3", "4"]


def test_compare_runs_fitted_with_and_without_standardisation(tmp_path, csv_file, capsys):
    """Both runs are scored in the CSV's own units (the standardised run's density is
    mapped back): compare's nats/step of each equals the test score its fit reported,
    and the two Gaussian HMMs, fitted to convergence, land within 1 nat (a missing
    log|det J| would put them log(sd of flow) ~ 2 nats apart)."""
    converged = SERIES_HMM.replace("num_iters = 5", "num_iters = 100")
    specs = {
        "std": converged,
        "raw": converged.replace('columns = ["flow"]', 'columns = ["flow"]\nstandardize = false'),
    }
    for name, text in specs.items():
        argv = ["fit", _spec(tmp_path, name, text), "--data", csv_file, "--out", tmp_path / name]
        assert _run(argv + ["--quiet"], capsys)[0] == 0
    assert io.load(tmp_path / "raw").scaler is None
    code, stdout, err = _run(
        ["compare", tmp_path / "std", tmp_path / "raw", "--data", csv_file, "--part", "test",
         "--quiet"], capsys,
    )  # fmt: skip
    assert code == 0, err
    nats = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit():
            nats[cells[1]] = float(cells[3])
    for name in specs:
        reported = -io.load(tmp_path / name).info["test_log_lik"]
        assert abs(nats[name] - reported) < 1e-3, (name, nats, reported)
    assert abs(nats["std"] - nats["raw"]) < 1.0, nats  # 0.18 measured


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "{spec}", "--data", "{tmp}/missing.txt", "--out", "{tmp}/o"], "missing.txt"),
        (["fit", "{spec}", "--data", "{tmp}/empty.txt", "--out", "{tmp}/o"], "empty"),
        (["fit", "{badspec}", "--data", "{text}", "--out", "{tmp}/o"], "unknown key 'hiden_size'"),
        (["fit", "{tmp}/nospec.toml", "--data", "{text}", "--out", "{tmp}/o"], "no such spec"),
        (["fit", "{series}", "--data", "{csv}", "--columns", "flw", "--out", "{tmp}/o"], "flw"),
        (["compare", "{tmp}/norun", "--data", "{text}"], "no such run directory"),
        (["sample", "{tmp}", "--length", "3"], "not a complete probseq run"),
        (["diagnose", "{tmp}/norun", "--data", "{text}"], "no such run directory"),
    ],
)
def test_bad_input_gives_one_clear_line_and_status_1(
    argv, message, tmp_path, text_file, csv_file, capsys
):
    (tmp_path / "empty.txt").write_text("")
    fill = {
        "spec": _spec(tmp_path, "gru", TEXT_GRU),
        "badspec": _spec(tmp_path, "bad", TEXT_GRU.replace("hidden_size", "hiden_size")),
        "series": _spec(tmp_path, "s", SERIES_HMM),
        "tmp": str(tmp_path),
        "text": str(text_file),
        "csv": str(csv_file),
    }
    code, out, err = _run([a.format(**fill) for a in argv], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probseq: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err


def test_text_outside_the_vocabulary_is_reported(tmp_path, text_file, capsys):
    spec = _spec(tmp_path, "gru", TEXT_GRU)
    assert (
        _run(["fit", spec, "--data", text_file, "--out", tmp_path / "r", "--quiet"], capsys)[0] == 0
    )
    other = tmp_path / "other.txt"
    other.write_text("naïve ☃ text\n", encoding="utf-8")
    code, _, err = _run(["compare", tmp_path / "r", "--data", other], capsys)
    assert code == 1 and "not in the vocabulary" in err


def test_fit_into_an_out_of_another_fit_says_what_to_do(tmp_path, text_file, capsys):
    """Re-running the same fit into its --out resumes (and is done at once); another
    spec into that --out stops before any work with one line naming the way out."""
    spec = _spec(tmp_path, "gru", TEXT_GRU)
    argv = ["fit", spec, "--data", text_file, "--out", tmp_path / "r", "--quiet"]
    assert _run(argv, capsys)[0] == 0
    before = (tmp_path / "r" / "params.npz").read_bytes()
    assert _run(argv, capsys)[0] == 0
    assert (tmp_path / "r" / "params.npz").read_bytes() == before
    other = _spec(tmp_path, "gru12", TEXT_GRU.replace("hidden_size = 16", "hidden_size = 12"))
    code, _, err = _run(["fit", other] + argv[2:], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("probseq: error: ")
    assert "fit into another --out" in lines[0] and "its model differs" in lines[0]
    assert (tmp_path / "r" / "params.npz").read_bytes() == before


def test_demo_quick(capsys):
    code, out, err = _run(["demo", "--quick", "--quiet"], capsys)
    assert code == 0, err
    for name in ("hmm", "lstm", "lru"):
        assert f"[{name}]" in out
    assert "bits" in out


def test_console_script_is_installed():
    script = pathlib.Path(sys.executable).parent / "probseq"
    for argv in ([str(script)], [sys.executable, "-m", "probseq.cli"]):
        proc = subprocess.run([*argv, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "fit" in proc.stdout and "forecast" in proc.stdout


def test_fit_on_devices_is_the_same_fit(tmp_path, csv_file, capsys):
    """--devices splits the sequences over this process's devices (here the one CPU
    device: 'all' and 1); the run equals the plain fit's. A bad count is one line,
    before any work."""
    spec_path = _spec(tmp_path, "ghmm", SERIES_HMM)
    params = {}
    for name, extra in {
        "plain": [],
        "all": ["--devices", "all"],
        "one": ["--devices", "1"],
    }.items():
        code, out, err = _run(
            ["fit", spec_path, "--data", csv_file, "--out", tmp_path / name, "--quiet", *extra],
            capsys,
        )
        assert code == 0, err
        params[name] = jax.tree.leaves(probseq.load(tmp_path / name).params)
    for name in ("all", "one"):
        for a, b in zip(params[name], params["plain"], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    for bad in ("0", "99", "many"):
        code, out, err = _run(
            [
                "fit",
                spec_path,
                "--data",
                csv_file,
                "--out",
                tmp_path / f"bad{bad}",
                "--devices",
                bad,
            ],
            capsys,
        )
        assert code == 1 and err.count("\n") == 1 and "devices" in err, err
        assert not (tmp_path / bad).exists()
