"""Fuzzing the ``probseq`` command (issue 9): random command lines, spec files and
damaged run directories. Every run ends with exit status 0, or 1/2 and exactly one
line ``probseq: error: ...``; never a traceback, never an uncaught exception, and
nothing is written outside ``--out`` (the working directory's files and the
filesystem root are compared before and after).

``cli.main`` runs in-process (no interpreter start per example); models and data
are tiny and the sizes asked for are bounded, so that the whole module takes well
under a minute on two cores.
"""

import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probseq
from probseq import cli, io, spec, workflow

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Input files and two fitted runs (text HMM, series HMM) shared by the examples."""
    d = tmp_path_factory.mktemp("fuzz-inputs")
    (d / "corpus.txt").write_text(probseq.data.pydoc_text()[:800], encoding="utf-8")
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.normal(size=(60, 2)), axis=0)
    (d / "series.csv").write_text("a,b\n" + "".join(f"{x:.4f},{y:.4f}\n" for x, y in values))
    (d / "empty.txt").write_text("")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    runs = {}
    for name, kind, source in (
        ("text", "text", workflow.read_source("text", d / "corpus.txt")),
        ("series", "series", workflow.read_source("series", d / "series.csv")),
    ):
        s = spec.parse_spec(
            {
                "data": {"kind": kind, "sequence_length": 20},
                "model": {
                    "family": "hmm",
                    "num_states": 2,
                    "head": "categorical" if kind == "text" else "normal",
                },
                "fit": {"method": "em", "num_iters": 2},
            }
        )
        runs[name] = io.save_run(workflow.fit_spec(s, source, progress=False), d / f"run-{name}")
    return {"dir": d, "runs": runs}


# ----------------------------------------------------------------- strategies
# Each example is a sane command line and spec with at most one field broken (half
# of the examples break none), so that fits, samples and forecasts really run and
# every kind of bad value is met in every place.
ODD_VALUE = st.one_of(
    st.sampled_from([0, -1, 2**31, 2**64 + 1, -(2**70), True, "3", [1, 2], 1.5]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)


class _Picker:
    def __init__(self, draw, broken):
        self.draw, self.broken = draw, broken

    def __call__(self, name, good, bad=ODD_VALUE):
        if name == self.broken:
            return self.draw(bad if isinstance(bad, st.SearchStrategy) else st.sampled_from(bad))
        return self.draw(st.sampled_from(good))


SPEC_FIELDS = ["kind", "length", "family", "size", "head", "method", "iters", "batch", "lr"]
SPEC_FIELDS += ["seed", "extra", "description"]


@st.composite
def spec_files(draw):
    broken = draw(st.one_of(st.none(), st.sampled_from(SPEC_FIELDS)))
    pick = _Picker(draw, broken)
    kind = pick("kind", ["text", "text", "series"], ["image", 3, ""])
    family = pick("family", ["hmm", "hmm", "gru", "rnn", "mingru", "lru", "lstm"], ["x", "HMM"])
    data = {"kind": kind, "sequence_length": pick("length", [16])}
    model = {"family": family}
    model["num_states" if family == "hmm" else "hidden_size"] = pick("size", [2, 3])
    text_head = "categorical" if kind == "text" else "normal"
    model["head"] = pick("head", [text_head], ["categorical", "normal", "poisson", "nope", 1])
    method = "em" if family == "hmm" and draw(st.booleans()) else "sgd"
    fit = {"method": pick("method", [method], ["em", "sgd", "adam"])}
    if fit["method"] == "em":
        fit["num_iters"] = pick("iters", [1, 2])
    else:
        fit.update(num_epochs=pick("iters", [1]), batch_size=pick("batch", [8]))
        fit["learning_rate"] = pick("lr", [0.01], [0.0, -1.0, float("nan"), 1e308, "fast"])
    tables = {"data": data, "model": model, "fit": fit}
    if broken == "extra":
        table = draw(st.sampled_from(["data", "model", "fit"]))
        key = draw(st.sampled_from(["extra", "columns", "split", "patience", "scan"]))
        tables[table][key] = draw(ODD_VALUE)
    top = {"seed": pick("seed", [0, 3])}
    top["description"] = pick("description", [""], st.text(max_size=30))  # control chars too
    lines = [f"{k} = {spec._toml_value(v)}" for k, v in top.items()]
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {spec._toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


SPEC_FILE = st.one_of(
    spec_files(),
    spec_files(),
    spec_files(),
    st.sampled_from(["", "[data\n", "x = " + "[" * 3000 + "]" * 3000, "\x00\xff"]),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
ARG_FIELDS = ["data", "out", "length", "num", "temperature", "seed", "prefix", "horizon"]
ARG_FIELDS += ["part", "columns", "run", "bogus"]
BAD_DATA = ["empty.txt", "binary.bin", "missing.txt", "builtin:nope", "", "run-text"]
BAD_NUMBER = ["0", "-2", "x", "1e2", "99999999999999999999999", ""]


@st.composite
def command_lines(draw):
    broken = draw(st.one_of(st.none(), st.sampled_from(ARG_FIELDS)))
    pick = _Picker(draw, broken)
    command = draw(
        st.sampled_from(["fit", "fit", "fit", "sample", "forecast", "states", "compare"])
    )
    argv = [command]
    if command == "fit":
        data = pick("data", ["corpus.txt", "series.csv"], BAD_DATA)
        out = pick("out", ["out", "deep/er/out", "out/"], ["", " ", "corpus.txt", "/dev/null"])
        argv += ["{spec}", "--data", data, "--out", out, "--quiet"]
    else:
        runs = ["{run-text}", "{run-series}"]
        run = pick("run", runs, ["{damaged}", "missing-run", "corpus.txt", ""])
        argv.append(run)
        if command == "sample":
            argv += ["--length", pick("length", ["1", "5"], BAD_NUMBER)]
            argv += ["--num-samples", pick("num", ["1", "2"], BAD_NUMBER)]
            argv += ["--temperature", pick("temperature", ["1", "0", "1e-40", "0.5"],
                                           ["-1", "nan", "inf", "x"])]  # fmt: skip
            argv += ["--seed", pick("seed", ["0", "7"], ["-1", str(2**32), str(2**64), "s"])]
            if broken == "prefix" or draw(st.booleans()):
                argv += ["--prefix", pick("prefix", ["The "], ["", "\u2603", "zz\x00"])]
        else:
            data = "corpus.txt" if run == runs[0] else "series.csv"
            argv += ["--data", pick("data", [data], BAD_DATA)]
            if command == "forecast":
                argv += ["--horizon", pick("horizon", ["1", "3"], BAD_NUMBER)]
                argv += ["--num-samples", pick("num", ["2", "5"], BAD_NUMBER)]
                argv += ["--seed", pick("seed", ["0"], ["-1", str(2**64)])]
            if command == "states":
                argv += ["--length", pick("length", ["5", "50"], BAD_NUMBER)]
            if command == "compare":
                argv += ["--part", pick("part", ["all", "test"], ["nope", ""]), "--quiet"]
    if broken == "columns" or draw(st.integers(0, 3)) == 0:
        argv += ["--columns", pick("columns", ["a", "b,a", "0"], ["z", "", ",", "1,1", "9"])]
    if broken == "bogus":
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(["--bogus", "-x"])))
    return argv


def _tree(root: pathlib.Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _check(code: int, err: str, argv) -> None:
    assert "Traceback" not in err, (argv, err)
    errors = [line for line in err.splitlines() if line.startswith("probseq: error:")]
    if code == 0:
        assert not errors, (argv, err)
        return
    assert code in (1, 2), (argv, code, err)
    assert len(errors) == 1, (argv, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == errors[0], (argv, err)


@pytest.mark.slow  # about 30-50 s on two shared cores
@SETTINGS
@given(argv=command_lines(), spec_file=SPEC_FILE, damage=st.integers(0, 10**9))
def test_any_command_line_ends_in_success_or_one_error_line(
    argv, spec_file, damage, world, capsys, monkeypatch
):
    root = pathlib.Path(tempfile.mkdtemp(prefix="fuzz-", dir=world["dir"]))
    try:
        work = root / "work"
        shutil.copytree(world["dir"], work, ignore=shutil.ignore_patterns("fuzz-*"))
        (work / "spec.toml").write_text(spec_file, encoding="utf-8")
        damaged = work / "damaged"
        shutil.copytree(world["runs"]["text"], damaged)
        victims = sorted(p for p in damaged.iterdir() if p.is_file())
        victim = victims[damage % len(victims)]
        raw = bytearray(victim.read_bytes())
        raw[damage % len(raw)] ^= 1 + damage % 255
        victim.write_bytes(bytes(raw))
        fill = {
            "{spec}": "spec.toml",
            "{run-text}": "run-text",
            "{run-series}": "run-series",
            "{damaged}": "damaged",
        }
        argv = [fill.get(a, a) for a in argv]
        monkeypatch.chdir(work)
        before = _tree(work)
        top_level = sorted(os.listdir("/"))
        out_was_file = "--out" in argv and os.path.isfile(argv[argv.index("--out") + 1])
        code = cli.main(argv)
        _, err = capsys.readouterr()
        _check(code, err, argv)
        assert sorted(os.listdir("/")) == top_level, argv
        outs = set()
        if argv[0] == "fit" and "--out" in argv:
            out = argv[argv.index("--out") + 1]
            if out.strip() and not out_was_file:
                outs.add(os.path.normpath(out))
        after = _tree(work)
        changed = {p for p in after if before.get(p) != after[p]} | (set(before) - set(after))
        outside = {p for p in changed if not any((p + "/").startswith(o + "/") for o in outs)}
        assert not outside, (argv, sorted(outside))
    finally:
        shutil.rmtree(root, ignore_errors=True)
