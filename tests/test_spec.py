"""Model specs: the strict loader, every models/*.toml fitted a few steps and scored,
and run directories saved and loaded exactly."""

import json
import math
import pathlib
import shutil

import jax
import numpy as np
import pytest

import probseq
from probseq import atomic, io, spec, workflow

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "models").glob("*.toml"))


def _text_source(n=3000):
    return workflow.Source("text", text=probseq.data.pydoc_text()[:n], origin="pydoc[:n]")


def _series_source(t=120, d=1, seed=0):
    rng = np.random.default_rng(seed)
    z = np.cumsum(rng.normal(size=(t, d)), axis=0) + 10.0
    return workflow.Source("series", values=z, names=tuple(f"c{i}" for i in range(d)), origin="rw")


def _pairs_source(n=200):
    full = probseq.data.builtin_pairs("reversal")
    pairs = full._replace(sources=full.sources[:n], targets=full.targets[:n], lines=full.lines[:n])
    return workflow.Source("pairs", origin="reversal[:n]", pairs=pairs)


def _minimal(**over):
    d = {
        "data": {"kind": "text"},
        "model": {"family": "gru", "hidden_size": 8},
        "fit": {"method": "sgd"},
    }
    for k, v in over.items():
        d[k] = v
    return d


def test_there_is_a_spec_for_every_required_model():
    names = {p.stem for p in SPECS}
    assert {
        "hmm_text",
        "lstm_text",
        "gru_text",
        "mingru_text",
        "lru_text",
        "gaussian_hmm_series",
        "lstm_series",
    } <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_spec_loads_fits_a_few_steps_and_scores(path, tmp_path):
    s = spec.load_spec(path)
    short = {"em": {"num_iters": 2}, "ls": {}}.get(s.method, {"num_epochs": 1})
    s = s.replace(fit=short)
    source = {"text": _text_source, "series": _series_source, "pairs": _pairs_source}[s.kind]()
    run = workflow.fit_spec(s, source, progress=False)
    assert math.isfinite(run.info["test_log_lik"])
    test = workflow.prepare(run, source, "test")
    src = {"source": test.source, "source_mask": test.source_mask} if s.kind == "pairs" else {}
    lp = probseq.log_prob(run.model, run.params, test.x, test.mask, **src)
    assert np.isfinite(np.asarray(lp)).all()
    # the same run, saved and loaded, scores identically
    loaded = io.load(io.save_run(run, tmp_path / "run"))
    np.testing.assert_array_equal(
        np.asarray(probseq.log_prob(loaded.model, loaded.params, test.x, test.mask, **src)),
        np.asarray(lp),
    )


def test_unknown_key_lists_the_allowed_ones(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[data]\nkind = "text"\n[model]\nfamily = "lstm"\nhiden_size = 8\n[fit]\nmethod = "sgd"\n'
    )
    with pytest.raises(spec.SpecError, match=r"bad.toml: unknown key 'hiden_size' in \[model\]"):
        spec.load_spec(bad)
    with pytest.raises(spec.SpecError, match="allowed keys: family, hidden_size, num_layers"):
        spec.load_spec(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extra": 1}, "unknown key 'extra' at the top level"),
        ({"data": {"kind": "video"}}, r"\[data\].kind must be one of 'text', 'series'"),
        ({"data": {}}, r"\[data\] needs the key 'kind'"),
        ({"model": {"family": "transformer"}}, "family must be one of rnn, lstm"),
        ({"model": {"family": "gru", "hidden_size": 0}}, "hidden_size must be a positive"),
        ({"model": {"family": "gru", "hidden_size": True}}, "hidden_size must be a positive"),
        ({"model": {"family": "gru", "num_states": 3}}, "unknown key 'num_states'"),
        ({"model": {"family": "hmm"}}, "needs the key 'num_states'"),
        ({"model": {"family": "gru", "head": "normal"}}, "text data needs head = 'categorical'"),
        ({"fit": {"method": "em"}}, "method = 'em' fits family = 'hmm' or 'lds' only"),
        ({"fit": {"method": "sgd", "num_iters": 3}}, r"unknown key 'num_iters' in \[fit\]"),
        ({"fit": {"method": "adam"}}, "method must be 'sgd', 'em' or 'ls'"),
        ({"fit": {"method": "sgd", "learning_rate": -1.0}}, "learning_rate must be a positive"),
        ({"data": {"kind": "text", "split": [0.9, 0.9]}}, r"split must be \[train, valid, test\]"),
        ({"data": {"kind": "text", "columns": ["a"]}}, "columns applies to kind = 'series'"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(change, message):
    with pytest.raises(spec.SpecError, match=message):
        spec.parse_spec(_minimal(**change), source="s.toml")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(spec.SpecError, match="no such spec file"):
        spec.load_spec(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[data\nkind = 1\n")
    with pytest.raises(spec.SpecError, match="broken.toml: not valid TOML"):
        spec.load_spec(broken)


def test_spec_text_round_trips(tmp_path):
    for path in SPECS:
        s = spec.load_spec(path)
        copy = tmp_path / path.name
        copy.write_text(spec.spec_text(s))
        again = spec.load_spec(copy)
        assert again.to_dict() == s.to_dict()


def test_build_model_for_each_head():
    s = spec.parse_spec(
        {
            "data": {"kind": "series"},
            "model": {"family": "lru", "hidden_size": 4, "head": "mixture_normal",
                      "num_components": 2},
            "fit": {"method": "sgd"},
        }
    )  # fmt: skip
    m = s.build_model(obs_dim=3)
    assert m.head == probseq.heads.MixtureNormalHead(3, num_components=2)
    hmm = spec.parse_spec(
        {
            "data": {"kind": "series"},
            "model": {"family": "hmm", "num_states": 2, "head": "poisson"},
            "fit": {"method": "em"},
        }
    ).build_model(obs_dim=2)
    assert hmm.head == probseq.heads.PoissonHead(2) and hmm.num_states == 2
    assert hmm.scan == "auto"
    for scan in ("sequential", "chunked", "parallel"):
        hmm = spec.parse_spec(
            {
                "data": {"kind": "series"},
                "model": {"family": "hmm", "num_states": 2, "head": "normal", "scan": scan},
                "fit": {"method": "em"},
            }
        ).build_model(obs_dim=1)
        assert hmm.scan == scan
    with pytest.raises(spec.SpecError, match="scan"):
        spec.parse_spec(
            {
                "data": {"kind": "series"},
                "model": {"family": "hmm", "num_states": 2, "head": "normal", "scan": "fast"},
                "fit": {"method": "em"},
            }
        )
    text = spec.parse_spec(_minimal()).build_model(vocab_size=7)
    assert text == probseq.GRU(vocab_size=7, hidden_size=8)


# ----------------------------------------------------------------------- run dirs
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    s = spec.parse_spec(_minimal(data={"kind": "text", "sequence_length": 64}))
    run = workflow.fit_spec(s, _text_source(2000), progress=False)
    path = tmp_path_factory.mktemp("runs") / "gru"
    io.save_run(run, path)
    return run, path


def test_save_load_round_trip_is_exact(small_run):
    run, path = small_run
    loaded = io.load(path)
    assert loaded.model == run.model
    assert loaded.vocabulary == run.vocabulary
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(run.params), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(loaded.history, probseq.FitHistory) and loaded.history == run.history
    assert loaded.history.fitter == "fit_sgd" and np.isfinite(loaded.history.log_likelihood).all()
    assert loaded.info["test_log_lik"] == run.info["test_log_lik"]
    assert loaded.spec.to_dict() == run.spec.to_dict()


def _rewrite_history(path, document: dict) -> None:
    """history.json replaced by ``document``, its checksum in run.json updated."""
    (path / "history.json").write_text(json.dumps(document, indent=1))
    meta = json.loads((path / "run.json").read_text())
    meta["sha256"]["history.json"] = atomic.sha256_file(str(path / "history.json"))
    (path / "run.json").write_text(json.dumps(meta))


def test_history_json_of_older_runs_loads_into_fit_history(small_run, tmp_path):
    """history.json as probseq wrote it before FitHistory (hand-written here)."""
    _, path = small_run
    copy = tmp_path / "old"
    shutil.copytree(path, copy)
    # fit_sgd: per-token curves under the old names; tokens were tokens_per_s * time_s
    old_sgd = {
        "epoch": [1, 2],
        "train_log_lik": [-1.5, -1.25],
        "valid_log_lik": [-1.625, -1.375],
        "num_steps": [3, 6],
        "skipped_steps": [0, 1],
        "tokens_per_s": [1000.0, 2000.0],
        "time_s": [0.2, 0.1],
    }
    _rewrite_history(copy, {"history": old_sgd, "info": {"stopped": "completed"}})
    h = io.load(copy).history
    assert isinstance(h, probseq.FitHistory) and h.fitter == "fit_sgd"
    assert h.iteration.dtype == np.int64 and h.iteration.tolist() == [1, 2]
    np.testing.assert_array_equal(h.log_likelihood_per_token, [-1.5, -1.25])
    assert h.num_tokens.tolist() == [200, 200]
    np.testing.assert_array_equal(h.log_likelihood, [-300.0, -250.0])
    np.testing.assert_array_equal(h.valid_log_likelihood_per_token, [-1.625, -1.375])
    assert np.isnan(h.valid_log_likelihood).all()  # the old file had no validation tokens
    assert h.num_steps.tolist() == [3, 6] and h.skipped_steps.tolist() == [0, 1]
    # fit_em: totals; the per-token values over the run's training symbols
    old_em = {"log_likelihood": [-100.0, -90.0], "objective": [-101.0, -91.0]}
    _rewrite_history(copy, {"history": old_em, "info": {"num_train_symbols": 50}})
    h = io.load(copy).history
    assert h.fitter == "fit_em" and h.iteration.tolist() == [0, 1]
    np.testing.assert_array_equal(h.log_likelihood_per_token, [-2.0, -1.8])
    np.testing.assert_array_equal(h["log_likelihood"], [-100.0, -90.0])
    np.testing.assert_array_equal(h.objective, [-101.0, -91.0])
    assert np.isnan(h.time_s).all() and np.isnan(h.valid_log_likelihood_per_token).all()
    # fit_ls: one total and no token count: per token not known (NaN), still loads
    _rewrite_history(copy, {"history": {"log_likelihood": [-10.0]}, "info": {}})
    h = io.load(copy).history
    assert h.log_likelihood.tolist() == [-10.0] and np.isnan(h.log_likelihood_per_token).all()
    # a new run's file holds every field under its one name
    stored = json.loads((path / "history.json").read_text())["history"]
    assert set(stored) == set(probseq.FitHistory.__dataclass_fields__)
    # an old file with no curve at all is corrupt, named
    _rewrite_history(copy, {"history": {"foo": [1.0]}, "info": {}})
    with pytest.raises(io.RunError, match=r"history.json is corrupt.*found keys \['foo'\]"):
        io.load(copy)


def test_series_run_round_trips_its_scaling(tmp_path):
    s = spec.load_spec(ROOT / "models" / "gaussian_hmm_series.toml").replace(fit={"num_iters": 3})
    source = _series_source(d=2)
    run = workflow.fit_spec(s, source, progress=False)
    loaded = io.load(io.save_run(run, tmp_path / "g"))
    assert loaded.scaler == run.scaler and loaded.columns == ("c0", "c1")
    np.testing.assert_allclose(loaded.decode(loaded.encode(source.values)), source.values)
    train = source.values[: int(0.8 * len(source.values))]
    np.testing.assert_allclose(np.asarray(run.scaler.mean), train.mean(0), rtol=1e-12)


@pytest.mark.parametrize("victim", ["run.json", "params.npz", "data.json", "spec.toml"])
def test_missing_or_corrupt_files_are_named(small_run, tmp_path, victim):
    import shutil

    _, path = small_run
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    (copy / victim).unlink()
    with pytest.raises(io.RunError, match=victim.replace(".", r"\.")):
        io.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(path, copy)
    (copy / victim).write_bytes(b"\x00garbage{")
    with pytest.raises(io.RunError, match=victim.replace(".", r"\.")):
        io.load(copy)


def test_load_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(io.RunError, match="no such run directory"):
        io.load(tmp_path / "absent")
    with pytest.raises(io.RunError, match="not a complete probseq run"):
        io.load(tmp_path)


def test_run_json_is_written_last(small_run, tmp_path, monkeypatch):
    """A save killed before run.json leaves a directory load() refuses."""
    run, _ = small_run
    calls = []
    real = io._write_atomic

    def failing(directory, name, text):
        calls.append(name)
        if name == "run.json":
            raise KeyboardInterrupt
        return real(directory, name, text)

    monkeypatch.setattr(io, "_write_atomic", failing)
    with pytest.raises(KeyboardInterrupt):
        io.save_run(run, tmp_path / "r")
    assert calls[-1] == "run.json"
    with pytest.raises(io.RunError, match="not a complete probseq run"):
        io.load(tmp_path / "r")
    meta = tmp_path / "r" / "history.json"
    assert json.loads(meta.read_text())["info"]["test_log_lik"] == run.info["test_log_lik"]
