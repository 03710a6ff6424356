"""Issue 25: every number probseq prints is either right or refused.

One test per case of the issue (1-6 through the ``probseq`` command, in-process; 7 and
8 through the Python API, where EM and the HMM's likelihoods live), and a property
test of the comparison invariant: for random pairs of runs with random splits of one
file, ``compare`` either refuses or scores only steps that are held out by every run
fitted on that file, and always prints one row per argument.

The expected parts are computed here from the split fractions with integer
arithmetic (percentages), independently of :func:`probseq.data.part_bounds`.
Models and data are tiny: the module takes about 40 s on two cores.
"""

import dataclasses
import os
import re
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from references import run_cli as _run

import probseq
from probseq import cli, hmm_inference, io, spec, workflow
from probseq.distribution import step_support

N = 613  # characters of the corpus: not a multiple of 100, so the parts are floored

HMM_TEXT = """
seed = 0
[data]
kind = "text"
sequence_length = 300
split = {split}
[model]
family = "hmm"
num_states = 2
[fit]
method = "em"
num_iters = 2
"""
LSTM_TEXT = """
seed = 0
[data]
kind = "text"
sequence_length = 300
split = [0.8, 0.1, 0.1]
[model]
family = "lstm"
hidden_size = 4
[fit]
method = "sgd"
num_epochs = 1
batch_size = 4
"""
HMM_SERIES = """
seed = 0
[data]
kind = "series"
[model]
family = "hmm"
num_states = 2
head = "normal"
[fit]
method = "em"
num_iters = 3
"""
AR5 = """
[data]
kind = "series"
split = [0.8, 0.1, 0.1]
[model]
family = "ar"
order = 5
[fit]
method = "ls"
"""


def _bounds(n, percents):
    """[start, stop) of train, valid, test for a split of whole percentages, by integer
    arithmetic: part ends at floor(cumulative% * n / 100); the last one at n when the
    percentages sum to 100."""
    ends, total = [], 0
    for p in percents:
        total += p
        ends.append(total * n // 100)
    if total == 100:
        ends[-1] = n
    starts = [0] + ends[:-1]
    return list(zip(starts, ends, strict=True))


def _rows(stdout):
    """(name, log_lik) of each row of the comparison table, in the order printed."""
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("rank  model"))
    rows = []
    for line in lines[head + 1 :]:
        m = re.match(r"^\s*\d+  (.+?)\s{2,}(-?\d+\.\d+|-?inf|nan)\s", line)
        if m is None:
            break
        rows.append((m.group(1), float(m.group(2))))
    return rows


def _num_scored(stdout) -> int:
    """The number of steps (symbols) the table says it scored."""
    return int(re.search(r"of \d+ sequences, (\d+) (?:symbol|step)s", stdout).group(1))


def _steps(stdout):
    """The steps a..b the header says were scored."""
    m = re.search(r"steps (\d+)\.\.(\d+)", stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _fit(spec_path, data, out, *extra):
    code = cli.main(["fit", str(spec_path), "--data", str(data), "--out", str(out), "--quiet",
                     *map(str, extra)])  # fmt: skip
    assert code == 0, f"probseq fit {spec_path} failed"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A corpus, another text, a CSV, and runs fitted by ``probseq fit``: two HMMs of
    different splits and an LSTM on the corpus, a Gaussian HMM on the CSV's a,b."""
    d = tmp_path_factory.mktemp("guarantees")
    rng = np.random.default_rng(0)
    (d / "corpus.txt").write_text("".join(rng.choice(list("abc"), size=N)))
    (d / "other.txt").write_text("".join(rng.choice(list("abc"), size=90)))
    t = np.arange(120)
    cols = (100 + 10 * np.sin(t / 6) + rng.normal(size=120), rng.normal(size=120),
            rng.normal(size=120))  # fmt: skip
    lines = ["a,b,c"] + [f"{x:.4f},{y:.4f},{z:.4f}" for x, y, z in zip(*cols, strict=True)]
    (d / "river.csv").write_text("\n".join(lines) + "\n")
    specs = {
        "hmm": HMM_TEXT.format(split="[0.8, 0.1, 0.1]"),
        "hmm96": HMM_TEXT.format(split="[0.96, 0.02, 0.02]"),
        "lstm": LSTM_TEXT,
        "ghmm": HMM_SERIES,
    }
    for name, body in specs.items():
        (d / f"{name}.toml").write_text(body)
    runs = d / "runs"
    for name in ("hmm", "hmm96", "lstm"):
        _fit(d / f"{name}.toml", d / "corpus.txt", runs / name)
    _fit(d / "ghmm.toml", d / "river.csv", runs / "ghmm", "--columns", "a,b")
    return d


# --------------------------------------------------------------- 1. in-sample
def test_1_compare_on_the_training_file_scores_held_out_steps_only(world, capsys):
    corpus, runs = world / "corpus.txt", world / "runs"
    test = _bounds(N, (80, 10, 10))[2]
    # No --part, on the file the runs were fitted on: the test part, said so.
    code, out, err = _run(["compare", runs / "hmm", runs / "lstm", "--data", corpus, "--quiet"],
                          capsys)  # fmt: skip
    assert code == 0, err
    assert _num_scored(out) == test[1] - test[0] and _steps(out) == test
    assert "part: test" in out and "held out by every run" in out and "IN-SAMPLE" not in out
    # Training data is refused without --in-sample, and labelled in-sample with it.
    for part in ("all", "train"):
        argv = ["compare", runs / "hmm", runs / "lstm", "--data", corpus, "--part", part]
        code, out, err = _run(argv, capsys)
        assert code == 1 and out.count("rank  model") == 0, out
        assert "training data of hmm, lstm" in err and "--in-sample" in err, err
        code, out, err = _run(argv + ["--in-sample", "--quiet"], capsys)
        assert code == 0, err
        assert out.startswith("IN-SAMPLE comparison") or "\nIN-SAMPLE comparison" in out
        expected = N if part == "all" else _bounds(N, (80, 10, 10))[0][1]
        assert _num_scored(out) == expected
    # Data no run was fitted on: every step is held-out, and the header says so.
    code, out, err = _run(["compare", runs / "hmm", runs / "lstm", "--data",
                           world / "other.txt", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    assert "no run was fitted on these data, so every step is held-out" in out
    assert _num_scored(out) == 90


# ------------------------------------------------------------ 2. split leak
def test_2_runs_of_different_splits_are_scored_on_steps_both_held_out(world, capsys):
    corpus, runs = world / "corpus.txt", world / "runs"
    argv = ["compare", runs / "hmm", runs / "hmm96", "--data", corpus, "--quiet"]
    code, out, err = _run(argv + ["--part", "test"], capsys)
    assert code == 0, err
    both = _bounds(N, (96, 2, 2))[2]  # inside hmm's test part (80/10/10)
    assert _num_scored(out) == both[1] - both[0] and _steps(out) == both
    assert "different splits" in out and "held out by every run" in out
    # Their valid parts do not overlap: refused, naming both runs and their splits.
    code, out, err = _run(argv + ["--part", "valid"], capsys)
    assert code == 1 and "rank  model" not in out
    assert "no step of" in err and "hmm [0.8, 0.1, 0.1]" in err and "hmm96 [0.96" in err, err


# ---------------------------------------------------------- 3. row per argument
def test_3_every_argument_gets_its_own_row(world, capsys, tmp_path, monkeypatch):
    corpus = world / "corpus.txt"
    shutil.copytree(world / "runs" / "lstm", tmp_path / "runs" / "lstm")
    shutil.copytree(world / "runs" / "hmm", tmp_path / "cmp" / "lstm")  # an HMM named lstm
    alone = {}
    for name in ("lstm", "hmm"):
        code, out, err = _run(["compare", world / "runs" / name, "--data", corpus, "--quiet"],
                              capsys)  # fmt: skip
        assert code == 0, err
        alone[name] = _rows(out)[0][1]
    assert alone["lstm"] != alone["hmm"]
    monkeypatch.chdir(tmp_path / "cmp")
    code, out, err = _run(["compare", "../runs/lstm", "lstm", "--data", corpus, "--quiet"], capsys)
    assert code == 0, err
    rows = dict(_rows(out))
    assert len(_rows(out)) == 2 and rows == {"runs/lstm": alone["lstm"], "cmp/lstm": alone["hmm"]}
    code, out, err = _run(["compare", "lstm", "lstm", "./lstm", "--data", corpus, "--quiet"],
                          capsys)  # fmt: skip
    assert code == 0, err
    assert sorted(_rows(out)) == sorted(
        [("lstm", alone["hmm"]), ("lstm #2", alone["hmm"]), ("lstm #3", alone["hmm"])]
    )


# ------------------------------------------------------------ 4. columns by name
def test_4_columns_are_matched_by_name(world, capsys):
    run, csv = world / "runs" / "ghmm", world / "river.csv"
    notice = "river.csv: columns b, a reordered to the run's a, b (matched by name)"
    outputs, notices = {}, {}
    for columns in ("a,b", "b,a"):
        for command in (["compare", run, "--data", csv, "--quiet"],
                        ["forecast", run, "--data", csv, "--horizon", "3", "--num-samples", "5"],
                        ["states", run, "--data", csv, "--length", "30"]):  # fmt: skip
            code, out, err = _run(command + ["--columns", columns], capsys)
            assert code == 0, err
            notices[command[0], columns] = notice in out
            outputs[command[0], columns] = [line for line in out.splitlines() if notice not in line]
    for command in ("compare", "forecast", "states"):  # the same numbers, the same labels
        assert outputs[command, "b,a"] == outputs[command, "a,b"], command
        assert notices[command, "b,a"] and not notices[command, "a,b"], command
    for columns in ("a", "a,c", "a,b,c"):
        code, out, err = _run(["compare", run, "--data", csv, "--columns", columns], capsys)
        assert code == 1 and "rank  model" not in out
        assert "columns are matched by name" in err and "models a, b" in err, err


# ---------------------------------------------------- 5. a score of zero steps
def test_5_no_score_of_zero_steps(tmp_path, capsys):
    rng = np.random.default_rng(1)
    values = np.cumsum(rng.normal(size=40))
    (tmp_path / "ar40.csv").write_text("y\n" + "".join(f"{v:.5f}\n" for v in values))
    (tmp_path / "ar5.toml").write_text(AR5)
    argv = ["fit", tmp_path / "ar5.toml", "--data", tmp_path / "ar40.csv", "--out",
            tmp_path / "ar5", "--quiet"]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    # valid and test hold 4 steps each, all conditioned on by the AR(5): no score
    assert "valid n/a (no step scored), test n/a (no step scored)" in out, out
    info = io.load(tmp_path / "ar5").info
    for part in ("valid", "test"):
        assert info[f"{part}_log_lik"] is None and info[f"{part}_bits_per_symbol"] is None
    code, out, err = _run(["compare", tmp_path / "ar5", "--data", tmp_path / "ar40.csv",
                           "--part", "test", "--quiet"], capsys)  # fmt: skip
    assert code == 1 and "no step is left to score" in err and "rank  model" not in out
    from probseq.compare import per_step_log_lik

    assert per_step_log_lik(-3.0, 0, 0.7) is None and per_step_log_lik(-3.0, 2, 0.5) == -2.0


# ------------------------------------------------------- 6. digit column names
def test_6_a_digit_column_is_the_column_of_that_name(tmp_path, capsys):
    rng = np.random.default_rng(2)
    col0, col1 = 1000 + rng.normal(size=60), rng.normal(size=60)
    lines = [",0,1"] + [
        f"{i},{x:.4f},{y:.4f}" for i, (x, y) in enumerate(zip(col0, col1, strict=True))
    ]
    (tmp_path / "frame.csv").write_text("\n".join(lines) + "\n")  # as pandas' to_csv writes
    (tmp_path / "g.toml").write_text(HMM_SERIES)
    argv = ["fit", tmp_path / "g.toml", "--data", tmp_path / "frame.csv", "--columns", "0",
            "--out", tmp_path / "run", "--quiet"]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    run = io.load(tmp_path / "run")
    assert run.columns == ("0",)
    train = np.round(col0[: len(col0) * 8 // 10], 4)
    np.testing.assert_allclose(run.scaler.mean, [train.mean()], rtol=1e-9)  # not the row index
    table = probseq.data.read_csv(tmp_path / "frame.csv", columns="0")
    assert list(table.names) == ["0"] and np.allclose(table.values[:, 0], col0, atol=1e-4)
    assert probseq.data.parse_columns(" 0, 1 ,") == ["0", "1"]


# --------------------------------------------------------- 7. impossible data
def _left_to_right(input_dim=0):
    """A left-to-right HMM (state k emits k or k+1) and a batch whose sequence 1 is
    impossible at step 3 (symbol 0 after the chain has left state 0)."""
    hmm = probseq.CategoricalHMM(3, 3, input_dim=input_dim)
    params = hmm.init(
        jax.random.key(0),
        initial_probs=jnp.array([1.0, 0.0, 0.0]),
        transition_matrix=jnp.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]]),
        emission_probs=jnp.array([[0.8, 0.2, 0.0], [0.0, 0.8, 0.2], [0.0, 0.0, 1.0]]),
    )
    x = jnp.array([[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 0, 0]])
    return hmm, params, x


IMPOSSIBLE = r"sequence 1 has probability zero under these parameters: step 3 \(0-based\)"


def test_7_impossible_data_is_an_error_in_em_and_inference(monkeypatch):
    from probseq.fit import driver

    hmm, params, x = _left_to_right()
    ll = np.asarray(probseq.log_prob(hmm, params, x))
    assert np.isfinite(ll[0]) and ll[1] == -np.inf  # log_prob keeps its -inf
    for posterior in (hmm.filter, hmm.smoother, hmm.most_likely_states):
        with pytest.raises(ValueError, match=IMPOSSIBLE):
            posterior(params, x)

    def no_iteration(*args, **kwargs):
        raise AssertionError("fit_em ran an iteration on data of probability zero")

    monkeypatch.setattr(driver, "run", no_iteration)  # the check comes before any work
    with pytest.raises(ValueError, match="EM cannot start: " + IMPOSSIBLE):
        probseq.fit_em(hmm, params, x, num_iters=5)
    with pytest.raises(ValueError, match=IMPOSSIBLE):
        probseq.em_step(hmm, params, x)
    ih, ip, _ = _left_to_right(input_dim=1)  # an input-driven HMM's generalised EM too
    u = jax.random.normal(jax.random.key(1), (2, 6, 1))
    with pytest.raises(ValueError, match=IMPOSSIBLE):
        probseq.fit_em(ih, ip, x, inputs=u, num_iters=5)
    monkeypatch.undo()
    hmm.em_options(params, probseq.core.as_batch(hmm, params, x[:1], None, None))  # possible

    # Under a trace the values are unknown: nothing is checked (and nothing computed).
    calls = []
    real = hmm_inference._first_impossible_of
    monkeypatch.setattr(hmm_inference, "_first_impossible_of",
                        lambda *a: calls.append(1) or real(*a))  # fmt: skip
    batch = probseq.core.as_batch(hmm, params, x, None, None)

    @jax.jit
    def traced(p):
        hmm.em_options(p, batch)
        return jnp.zeros(())

    traced(params)
    assert calls == []
    with pytest.raises(ValueError, match=IMPOSSIBLE):
        hmm.em_options(params, batch)
    assert calls == [1]


# ---------------------------------------------- 8. probabilities stay probabilities
@pytest.mark.parametrize("estep", ["autodiff", "forward_backward", "chunked"])
def test_8_discrete_log_likelihoods_never_exceed_zero(estep):
    """One repeated symbol: EM drives p(x) to 1, and float32 rounding gave totals of
    up to +3.4e-5 and steps of +1.2e-7 (each E-step, each filter path)."""
    worst = -np.inf
    for k, v, length in ((2, 2, 50), (3, 2, 200)):
        hmm = probseq.CategoricalHMM(k, v)
        x = np.zeros((3, length), np.int32)
        fit = probseq.fit_em(hmm, hmm.init(jax.random.key(0)), x, num_iters=15, estep=estep)
        worst = max(worst, np.max(fit.history["log_likelihood"]))
        worst = max(worst, np.max(probseq.log_prob(hmm, fit.params, x)))
        scans = ("sequential", "parallel") if estep == "autodiff" and k == 2 else ("auto",)
        for scan in scans:  # each filter path, step by step
            m = probseq.CategoricalHMM(k, v, scan=scan)
            worst = max(worst, np.max(probseq.step_log_probs(m, fit.params, x)))
    assert worst <= 0.0


def test_8_bits_too_but_densities_are_not_clamped():
    zeros = np.zeros((3, 300, 2), np.float32)
    hmm = probseq.BernoulliHMM(2, 2)
    fit = probseq.fit_em(hmm, hmm.init(jax.random.key(0)), zeros, num_iters=8)
    assert np.max(fit.history["log_likelihood"]) <= 0.0
    assert np.max(probseq.step_log_probs(hmm, fit.params, zeros)) <= 0.0
    gauss = probseq.GaussianHMM(2, 1)  # a density above 1 is no rounding error
    params = gauss.init(jax.random.key(0), means=jnp.zeros((2, 1)), scales=jnp.full((2, 1), 0.01))
    assert np.min(probseq.log_prob(gauss, params, np.zeros((2, 20, 1), np.float32))) > 50
    # which heads are discrete: what their distributions' supports say
    heads = [probseq.heads.CategoricalHead(3), probseq.heads.NormalHead(2),
             probseq.heads.PoissonHead(2), probseq.heads.BernoulliHead(2)]  # fmt: skip
    assert [h.discrete for h in heads] == [bool(step_support(h).is_discrete) for h in heads]
    # the clamp keeps the gradient (the E-step's statistics are gradients of log p)
    from probseq.families.hmm import at_most_zero

    lp = jnp.array([1e-7, -0.5, -jnp.inf])
    assert at_most_zero(heads[0], lp).tolist() == [0.0, -0.5, -np.inf]
    grad = jax.grad(lambda v: jnp.sum(at_most_zero(heads[0], v)[:2]))(lp)
    assert grad.tolist()[:2] == [1.0, 1.0]
    assert at_most_zero(heads[1], lp).tolist()[0] == pytest.approx(1e-7)


# ------------------------------------------------ the comparison invariant (property)
def _random_split(draw):
    train = draw(st.integers(10, 90))
    valid = draw(st.integers(1, 100 - train - 1))
    test = draw(st.integers(1, 100 - train - valid))
    return train, valid, test


@st.composite
def _comparisons(draw):
    """Two runs (splits in whole percent; each fitted on the corpus or on another
    file), the arguments (a run may be repeated), the part asked and --in-sample."""
    splits = [_random_split(draw) for _ in range(2)]
    on_corpus = [draw(st.booleans()) for _ in range(2)]
    order = draw(st.sampled_from([(0, 1), (1, 0), (0, 1, 0), (1, 1)]))
    part = draw(st.sampled_from([None, "test", "valid", "train", "all"]))
    return splits, on_corpus, order, part, draw(st.booleans())


@pytest.fixture(scope="module")
def fitted(world):
    """A fitted text HMM on the corpus, and the corpus and other text as sources."""
    run = io.load(world / "runs" / "hmm")
    return run, {
        True: workflow.read_source("text", world / "corpus.txt"),
        False: workflow.read_source("text", world / "other.txt"),
    }


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_comparisons())  # fmt: skip
def test_compare_scores_only_steps_every_run_held_out(world, fitted, capsys, case):
    splits, on_corpus, order, part, in_sample = case
    base, sources = fitted
    root = tempfile.mkdtemp(dir=world)
    dirs = []
    for i, (split, own) in enumerate(zip(splits, on_corpus, strict=True)):
        d = base.spec.to_dict()
        s = spec.parse_spec({**d, "data": {**d["data"], "split": [p / 100 for p in split]}})
        # what `probseq fit` records: this spec and the data it was fitted on
        fingerprint = workflow.fit_fingerprint(s, sources[own])
        run = dataclasses.replace(base, spec=s, path=None)
        dirs.append(io.save_run(run, os.path.join(root, f"r{i}"), fingerprint=fingerprint))
    argv = ["compare", *(dirs[i] for i in order), "--data", world / "corpus.txt", "--quiet"]
    argv += ["--part", part] if part else []
    argv += ["--in-sample"] if in_sample else []
    code, out, err = _run(argv, capsys)

    # What the runs' records say, worked out here: which runs trained on the corpus,
    # and the steps held out by every one of them.
    fitted = [i for i in dict.fromkeys(order) if on_corpus[i]]  # in argument order
    trained = [_bounds(N, splits[i])[0] for i in fitted]
    index = {None: 2, "test": 2, "valid": 1, "train": 0, "all": None}[part]
    if not fitted:  # no run was fitted on the corpus: every step is held out
        first = _bounds(N, splits[order[0]])
        want, refuse = ((0, N) if index is None or part is None else first[index]), False
    elif part in ("train", "all"):
        want = (0, N) if part == "all" else trained[0]
        refuse = not in_sample
    else:
        parts = [_bounds(N, splits[i])[index] for i in fitted]
        want = (max(a for a, _ in parts), min(b for _, b in parts))
        refuse = want[0] >= want[1]
    if refuse:  # one line saying why, and no table
        assert code == 1 and err.startswith("probseq: error: ") and err.count("\n") == 1, err
        assert "rank  model" not in out
        return
    assert code == 0, err
    rows = _rows(out)  # one row per argument, each named apart
    assert len(rows) == len(order) and len({name for name, _ in rows}) == len(order)
    assert _num_scored(out) == want[1] - want[0]
    if fitted and part in ("train", "all"):  # asked for, and labelled in-sample
        assert "IN-SAMPLE comparison" in out and "held-out comparison" not in out
        return
    assert "held-out comparison" in out and "IN-SAMPLE" not in out
    if fitted:
        assert _steps(out) == want
    for a, b in trained:  # no step scored is training data of any run
        assert want[1] <= a or want[0] >= b
