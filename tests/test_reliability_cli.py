"""Issue 9, the command line and run directories: nothing a user saved is lost or
silently reused, and every failure is one line ``probseq: error: ...``, never a
traceback. One test (or one table of cases) per class of defect."""

import json
import os
import shutil
import stat

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import probseq
from probseq import atomic, cli, io, spec, workflow
from probseq.fit import checkpoint
from probseq.fit.sgd import CheckpointMismatchError, fit_sgd

GRU = """
seed = 1
[data]
kind = "text"
sequence_length = 32
[model]
family = "gru"
hidden_size = 4
[fit]
method = "sgd"
num_epochs = 1
batch_size = 8
learning_rate = 0.01
max_grad_norm = 1.0
patience = 2
"""
HMM = """
seed = 1
[data]
kind = "text"
sequence_length = 32
[model]
family = "hmm"
num_states = 2
[fit]
method = "em"
num_iters = 2
tol = 0.0
"""
SERIES_HMM = """
[data]
kind = "series"
[model]
family = "hmm"
num_states = 2
head = "normal"
[fit]
method = "em"
num_iters = 2
"""


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("probseq: error: "), err
    return lines[0]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.normal(size=(80, 2)), axis=0)
    csv = "a,b\n" + "".join(f"{x:.5f},{y:.5f}\n" for x, y in values)
    return {
        "text": _write(d / "corpus.txt", probseq.data.pydoc_text()[:1500]),
        "text2": _write(d / "corpus2.txt", probseq.data.pydoc_text()[1500:3000]),
        "csv": _write(d / "series.csv", csv),
        "gru": _write(d / "gru.toml", GRU),
        "hmm": _write(d / "hmm.toml", HMM),
        "series": _write(d / "series.toml", SERIES_HMM),
    }


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory):
    """A finished SGD (GRU) run and a finished EM (HMM) run, fitted by the CLI."""
    d = tmp_path_factory.mktemp("runs")
    for name in ("gru", "hmm"):
        argv = ["fit", files[name], "--data", files["text"], "--out", d / name, "--quiet"]
        assert cli.main([str(a) for a in argv]) == 0
    return {"gru": d / "gru", "hmm": d / "hmm"}


def _snapshot(directory):
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------ 1. a non-empty --out, any fitter
@pytest.mark.parametrize("spec_name, victim", [("hmm", "gru"), ("gru", "hmm")])
def test_another_fitters_spec_into_a_finished_run_is_refused(
    spec_name, victim, files, runs, capsys
):
    """An HMM (EM) spec into a finished GRU (SGD) run, and the reverse: one line,
    nothing touched (today the EM fit replaced the GRU run, leaving its checkpoints)."""
    before = _snapshot(runs[victim])
    code, _, err = _run(
        ["fit", files[spec_name], "--data", files["text"], "--out", runs[victim], "--quiet"],
        capsys,
    )
    line = _one_error_line(err)
    assert code == 1 and "its model differs" in line and "another --out" in line
    assert _snapshot(runs[victim]) == before


@pytest.mark.parametrize("name", ["gru", "hmm"])
def test_the_same_fit_into_its_own_out_is_done_at_once(name, files, runs, capsys):
    before = _snapshot(runs[name])
    code, out, err = _run(
        ["fit", files[name], "--data", files["text"], "--out", runs[name], "--quiet"], capsys
    )
    assert code == 0, err
    assert "already holds this fit" in out
    assert _snapshot(runs[name]) == before


def test_a_directory_of_other_files_is_not_fitted_into(files, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = _run(
        ["fit", files["hmm"], "--data", files["text"], "--out", tmp_path, "--quiet"], capsys
    )
    assert code == 1 and "not empty" in _one_error_line(err)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_a_killed_em_fit_is_resumed_and_an_sgd_fit_resumes_its_checkpoint(
    files, runs, tmp_path, capsys
):
    """A directory whose fit.json matches but that has no run.json (killed before the
    save) is the same fit: fitting again completes it."""
    for name in ("hmm", "gru"):
        copy = tmp_path / name
        shutil.copytree(runs[name], copy)
        (copy / "run.json").unlink()
        code, out, err = _run(
            ["fit", files[name], "--data", files["text"], "--out", copy, "--quiet"], capsys
        )
        assert code == 0, err
        assert "resuming" in out
        loaded, original = io.load(copy), io.load(runs[name])
        for a, b in zip(
            jax.tree.leaves(loaded.params), jax.tree.leaves(original.params), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------- 2. everything that changes the result
CHANGES = [
    ("gru", "learning_rate = 0.01", "learning_rate = 0.02", "fit settings"),
    ("gru", "max_grad_norm = 1.0", "max_grad_norm = 5.0", "fit settings"),
    ("gru", "patience = 2", "patience = 3", "fit settings"),
    ("gru", "num_epochs = 1", "num_epochs = 2", "fit settings"),
    ("gru", "batch_size = 8", "batch_size = 4", "fit settings"),
    ("gru", "seed = 1", "seed = 2", "seed"),
    ("gru", "sequence_length = 32", "sequence_length = 16", "data settings"),
    ("gru", "hidden_size = 4", "hidden_size = 5", "model"),
    ("hmm", "num_iters = 2", "num_iters = 3", "fit settings"),
    ("hmm", "tol = 0.0", "tol = 0.5", "fit settings"),
    ("hmm", "[fit]", "[fit]\nprior = 2.0", "fit settings"),
    ("hmm", 'kind = "text"', 'kind = "text"\nsplit = [0.8, 0.1, 0.1]', "data settings"),
]


@pytest.mark.parametrize("name, old, new, part", CHANGES)
def test_a_changed_spec_is_refused_not_resumed(name, old, new, part, files, runs, tmp_path, capsys):
    text = {"gru": GRU, "hmm": HMM}[name]
    assert old in text
    changed = _write(tmp_path / "changed.toml", text.replace(old, new, 1))
    before = _snapshot(runs[name])
    code, _, err = _run(
        ["fit", changed, "--data", files["text"], "--out", runs[name], "--quiet"], capsys
    )
    line = _one_error_line(err)
    assert code == 1 and f"its {part} differs" in line, line
    assert _snapshot(runs[name]) == before


def test_other_data_or_columns_are_refused(files, runs, tmp_path, capsys):
    code, _, err = _run(
        ["fit", files["hmm"], "--data", files["text2"], "--out", runs["hmm"], "--quiet"], capsys
    )
    assert code == 1 and "its data differs" in _one_error_line(err)
    out = tmp_path / "series"
    argv = ["fit", files["series"], "--data", files["csv"], "--out", out, "--quiet"]
    assert _run(argv + ["--columns", "a"], capsys)[0] == 0
    code, _, err = _run(argv + ["--columns", "b"], capsys)
    assert code == 1 and "its data differs" in _one_error_line(err)


def test_fit_sgd_refuses_a_checkpoint_of_other_optimizer_settings(tmp_path):
    hmm = probseq.CategoricalHMM(num_states=2, vocab_size=3)
    key = jax.random.key
    x = probseq.sample(hmm, hmm.init(key(0)), key(1), 20, num_samples=8)
    common = dict(key=key(3), num_epochs=1, batch_size=4, progress=False)
    common["checkpoint_dir"] = str(tmp_path)
    fit_sgd(hmm, hmm.init(key(2)), x, learning_rate=0.05, **common)
    with pytest.raises(CheckpointMismatchError, match="optimizer or stopping setting differs"):
        fit_sgd(hmm, hmm.init(key(2)), x, learning_rate=0.1, **common)


# ------------------------------------------------------- 3. --out before any work
@pytest.fixture
def no_fitting(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the fit started before --out was checked")

    monkeypatch.setattr(workflow, "fit_spec", fail)


def test_out_that_is_a_file_is_refused_before_any_work(files, tmp_path, no_fitting, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = _run(["fit", files["hmm"], "--data", files["text"], "--out", target], capsys)
    assert code == 1 and "existing file" in _one_error_line(err)
    assert target.read_text() == "keep me"


def test_empty_out_is_refused(files, tmp_path, no_fitting, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  "):
        code, _, err = _run(["fit", files["hmm"], "--data", files["text"], "--out", empty], capsys)
        assert code == 1 and "--out is empty" in _one_error_line(err)
    assert os.listdir(tmp_path) == []


def test_read_only_out_is_refused_before_any_work(files, tmp_path, no_fitting, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        try:
            (locked / "probe").write_text("x")
        except OSError:
            pass
        else:
            pytest.skip("this user (root?) can write into a read-only directory")
        code, _, err = _run(["fit", files["hmm"], "--data", files["text"], "--out", locked], capsys)
        assert code == 1 and "not writable" in _one_error_line(err)
    finally:
        locked.chmod(stat.S_IRWXU)


@pytest.mark.skipif(not os.path.isdir("/proc/1"), reason="needs Linux's /proc")
def test_an_unwritable_out_is_refused_even_for_root(files, no_fitting, capsys):
    """/proc/1 is a directory no user, root included, can create files in."""
    code, _, err = _run(["fit", files["hmm"], "--data", files["text"], "--out", "/proc/1"], capsys)
    assert code == 1 and "not writable" in _one_error_line(err)


def test_a_refused_fit_leaves_no_directory_it_created(files, tmp_path, capsys):
    (tmp_path / "empty-before").mkdir()
    out = tmp_path / "empty-before" / "new" / "deeper"
    code, _, err = _run(
        ["fit", files["hmm"], "--data", tmp_path / "missing.txt", "--out", out], capsys
    )
    assert code == 1 and "missing.txt" in _one_error_line(err)
    assert not (tmp_path / "empty-before" / "new").exists()
    assert (tmp_path / "empty-before").is_dir()  # it was there before: kept


def test_demo_does_not_replace_saved_runs(tmp_path, capsys, monkeypatch):
    from probseq import demo

    def fail(**kwargs):
        raise AssertionError("the demo started before --out was checked")

    monkeypatch.setattr(demo, "run_demo", fail)
    (tmp_path / "lstm").mkdir()
    (tmp_path / "lstm" / "run.json").write_text("{}")
    code, _, err = _run(["demo", "--quick", "--out", tmp_path], capsys)
    assert code == 1 and "lstm exists" in _one_error_line(err)
    code, _, err = _run(["demo", "--quick", "--out", ""], capsys)
    assert code == 1 and "--out is empty" in _one_error_line(err)


# ---------------------------------------------------- 4. --columns with text
@pytest.mark.parametrize("command", ["fit", "forecast", "states", "compare"])
def test_columns_with_a_text_model_is_an_error(command, files, runs, tmp_path, capsys):
    if command == "fit":
        argv = ["fit", files["hmm"], "--data", files["text"], "--out", tmp_path / "o"]
    else:
        argv = [command, runs["hmm"], "--data", files["text"]]
        argv += ["--horizon", "2"] if command == "forecast" else []
    code, _, err = _run(argv + ["--columns", "a"], capsys)
    assert code == 1 and "--columns" in _one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_the_terminal_says_which_csv_columns_were_left_out(files, tmp_path, capsys):
    rows = np.cumsum(np.random.default_rng(1).normal(size=60))
    csv = _write(
        tmp_path / "dated.csv",
        "date,level\n" + "".join(f"2020-01-{i % 28 + 1:02d},{v:.4f}\n" for i, v in enumerate(rows)),
    )
    code, out, err = _run(
        ["fit", files["series"], "--data", csv, "--out", tmp_path / "o", "--quiet"], capsys
    )
    assert code == 0, err
    assert "using column 'level'" in out and "left out 'date'" in out, out


# ------------------------------------------------ 5. what is written reads back
STRANGE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # every code point but surrogates
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(description=STRANGE, column=STRANGE.filter(bool))
def test_spec_text_round_trips_any_string(description, column):
    s = spec.parse_spec(
        {
            "description": description,
            "data": {"kind": "series", "columns": [column, 3]},
            "model": {"family": "hmm", "num_states": 2, "head": "normal"},
            "fit": {"method": "em", "tol": 1e-300},
        }
    )
    import tomllib

    back = spec.parse_spec(tomllib.loads(spec.spec_text(s)))
    assert back == s


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(min_value=1e-300, max_value=1e300),
    norm=st.floats(min_value=5e-324, allow_infinity=False),
    name=STRANGE,
)
def test_spec_text_round_trips_any_number(rate, norm, name):
    s = spec.parse_spec(
        {
            "description": name,
            "data": {"kind": "text", "split": [min(rate, 0.1), 0.5, 0.25]},
            "model": {"family": "lru", "hidden_size": 3, "r_min": min(rate, 1.0)},
            "fit": {"method": "sgd", "learning_rate": rate, "max_grad_norm": norm},
        }
    )
    import tomllib

    assert spec.parse_spec(tomllib.loads(spec.spec_text(s))) == s


def test_a_spec_with_control_characters_fits_saves_and_loads(files, tmp_path, capsys):
    nasty = 'ctrl \x00\x01\x1b\x7f tab\t cr\r quote" back\\ \U0001f600 \u2028 end'
    path = _write(tmp_path / "nasty.toml", f"description = {spec._toml_value(nasty)}\n" + HMM)
    assert spec.load_spec(path).description == nasty
    out = tmp_path / "run"
    code, _, err = _run(["fit", path, "--data", files["text"], "--out", out, "--quiet"], capsys)
    assert code == 0, err
    assert io.load(out).spec.description == nasty
    code, _, err = _run(["sample", out, "--length", "5"], capsys)
    assert code == 0, err


def test_a_lone_surrogate_is_refused_in_a_spec():
    with pytest.raises(spec.SpecError, match="description"):
        spec.parse_spec(
            {
                "description": "bad \ud800",
                "data": {"kind": "text"},
                "model": {"family": "gru", "hidden_size": 4},
                "fit": {"method": "sgd"},
            }
        )


# ---------------------------------------------------- 6. one line, no traceback
def _unfinished_copy(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "run.json").unlink()
    return copy


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated
        lambda p: p.write_bytes(b"garbage, not a zip file at all"),
        lambda p: np.savez(p, __metadata__=np.array("{not json")),
        lambda p: p.write_bytes(b""),
    ],
    ids=["truncated", "garbage", "metadata-not-json", "empty"],
)
def test_a_damaged_checkpoint_is_one_line_naming_it(damage, files, runs, tmp_path, capsys):
    copy = _unfinished_copy(runs["gru"], tmp_path)
    ckpt = copy / "checkpoints" / "checkpoint.npz"
    damage(ckpt)
    code, _, err = _run(
        ["fit", files["gru"], "--data", files["text"], "--out", copy, "--quiet"], capsys
    )
    assert code == 1 and "checkpoint.npz" in _one_error_line(err)
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.npz"):
        checkpoint.load_checkpoint(copy / "checkpoints")


@pytest.mark.parametrize("seed", [str(2**64), str(2**32), "-1", "1e3"])
def test_a_seed_out_of_range_is_one_line(seed, runs, capsys):
    code, _, err = _run(["sample", runs["hmm"], "--length", "3", "--seed", seed], capsys)
    assert code == 2 and "seed" in _one_error_line(err)


def test_a_spec_seed_out_of_range_is_refused(tmp_path, files, capsys):
    path = _write(tmp_path / "s.toml", HMM.replace("seed = 1", f"seed = {2**64}"))
    code, _, err = _run(["fit", path, "--data", files["text"], "--out", tmp_path / "o"], capsys)
    assert code == 1 and "seed" in _one_error_line(err)


def test_deeply_nested_toml_and_json_are_one_line(files, runs, tmp_path, capsys):
    deep = _write(tmp_path / "deep.toml", "x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    code, _, err = _run(["fit", deep, "--data", files["text"], "--out", tmp_path / "o"], capsys)
    assert code == 1 and "deep.toml" in _one_error_line(err)
    copy = tmp_path / "copy"
    shutil.copytree(runs["hmm"], copy)
    (copy / "run.json").write_text("[" * 50_000 + "]" * 50_000)
    code, _, err = _run(["sample", copy, "--length", "3"], capsys)
    assert code == 1 and "run.json" in _one_error_line(err)


@pytest.mark.parametrize(
    "victim, content",
    [
        ("run.json", '{"format_version": 2, "sha256": []}'),
        ("run.json", '{"format_version": true}'),
        ("run.json", "[1, 2]"),
        ("data.json", '{"kind": "text", "vocabulary": 5}'),
        ("history.json", '{"history": [1, 2], "info": 3}'),
        ("fit.json", "{"),
    ],
)
def test_damaged_run_files_are_one_line_naming_them(victim, content, files, runs, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(runs["hmm"], copy)
    (copy / victim).write_text(content)
    code, _, err = _run(["sample", copy, "--length", "3"], capsys)
    assert code == 1 and victim in _one_error_line(err)
    if victim != "fit.json":
        return
    (copy / "run.json").unlink()  # an unfinished fit: claim() reads fit.json
    code, _, err = _run(["fit", files["hmm"], "--data", files["text"], "--out", copy], capsys)
    assert code == 1 and "fit.json" in _one_error_line(err)


@pytest.mark.parametrize(
    "error, expected",
    [
        (MemoryError(), "out of memory"),
        (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8GB\nmore"), "out of memory"),
        (TypeError("a bug\nwith lines"), "internal error (TypeError: a bug with lines)"),
        (ValueError("bad path\r\n'a\x1bb'"), "bad path 'a\\x1bb'"),
    ],
)
def test_every_exception_is_one_line(error, expected, runs, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(io, "load", boom)
    monkeypatch.delenv("PROBSEQ_DEBUG", raising=False)
    code, _, err = _run(["sample", runs["hmm"]], capsys)
    line = _one_error_line(err)
    assert code == 1 and expected in line, line
    monkeypatch.setenv("PROBSEQ_DEBUG", "1")
    with pytest.raises(type(error)):
        cli.main(["sample", str(runs["hmm"])])


def test_argparse_errors_are_one_line_with_status_2(capsys):
    for argv in (["fit"], ["nosuchcommand"], ["sample", "x", "--length", "0"], []):
        code, _, err = _run(argv, capsys)
        assert code == 2 and _one_error_line(err)
    assert cli.main(["--help"]) == 0


# --------------------------------------------------------------- 7. small ones
def test_stale_temporaries_are_removed_on_the_next_save_and_resume(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["gru"], copy)
    stale = [
        copy / ".spec.toml-0123abcd.tmp",
        copy / ".params.npz-0123abcd.tmp",
        copy / "checkpoints" / ".checkpoint-legacy1.tmp",
        copy / "checkpoints" / ".checkpoint.npz-0123abcd.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = [copy / "notes.tmp", copy / ".notes-1.tmp", copy / "checkpoints" / ".x-1.tmp"]
    for path in keep:  # not temporaries of ours: a user's files are never removed
        path.write_text("mine")
    io.save_run(io.load(copy), copy)
    checkpoint.save_checkpoint(copy / "checkpoints", {"p": np.zeros(2)}, {})
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "mine" for p in keep)


def test_a_fit_killed_while_claiming_its_out_is_not_refused(files, tmp_path, capsys):
    """Only a temporary of fit.json (a kill in the first milliseconds): the same
    directory is still fitted into, and the temporary is removed."""
    (tmp_path / ".fit.json-0123abcd.tmp").write_text('{"half')
    code, _, err = _run(
        ["fit", files["hmm"], "--data", files["text"], "--out", tmp_path, "--quiet"], capsys
    )
    assert code == 0, err
    assert not (tmp_path / ".fit.json-0123abcd.tmp").exists()
    assert io.load(tmp_path).model.num_states == 2


def test_a_changed_character_in_any_run_file_is_detected(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["hmm"], copy)
    data = json.loads((copy / "data.json").read_text())
    vocab = data["vocabulary"]
    data["vocabulary"] = vocab[1] + vocab[0] + vocab[2:]  # still valid, still loadable
    (copy / "data.json").write_text(json.dumps(data, indent=1))
    with pytest.raises(io.RunError, match="data.json"):
        io.load(copy)
    for name in ("history.json", "fit.json", "spec.toml"):
        shutil.rmtree(copy)
        shutil.copytree(runs["hmm"], copy)
        text = (copy / name).read_text()
        (copy / name).write_text(text.replace("1", "2", 1))
        with pytest.raises(io.RunError, match=name.replace(".", r"\.")):
            io.load(copy)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_files_honour_the_umask(umask, runs, tmp_path):
    run = io.load(runs["hmm"])
    old = os.umask(umask)
    try:
        io.save_run(run, tmp_path / "r")
        checkpoint.save_checkpoint(tmp_path / "c", {"p": np.zeros(2)}, {})
        written = list((tmp_path / "r").iterdir()) + list((tmp_path / "c").iterdir())
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_one_atomic_writer_serves_run_directories_and_checkpoints(runs, tmp_path, monkeypatch):
    written = []
    real = atomic.write_atomic

    def spy(path, content):
        written.append(os.path.basename(path))
        return real(path, content)

    monkeypatch.setattr(atomic, "write_atomic", spy)
    io.save_run(io.load(runs["hmm"]), tmp_path / "r")
    checkpoint.save_checkpoint(tmp_path / "c", {"p": np.zeros(2)}, {})
    assert written == [
        "spec.toml",
        "params.npz",
        "data.json",
        "history.json",
        "run.json",
        "checkpoint.npz",
    ]
