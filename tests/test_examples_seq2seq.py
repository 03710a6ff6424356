"""The conditional-model examples run with tiny arguments and report what their
docstrings promise (numbers in range; the full-size results are in the README)."""

import pathlib
import runpy

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    return runpy.run_path(str(ROOT / "examples" / name), run_name="example")


def test_reversal_tiny(capsys):
    module = _load("reversal.py")
    results = module["main"](list(module["TINY_ARGS"]))
    assert set(results) == {"dot"}
    _check_reversal(module, results, capsys)


@pytest.mark.slow  # about 50 s on two shared cores: two models
def test_reversal_tiny_with_and_without_attention(capsys):
    module = _load("reversal.py")
    args = list(module["TINY_ARGS"])
    args[args.index("--attention") + 1] = "additive,none"
    results = module["main"](args)
    assert set(results) == {"additive", "none"}
    _check_reversal(module, results, capsys)


def _check_reversal(module, results, capsys):
    for r in results.values():
        assert 0.0 <= r["exact"] <= 1.0 and 0.0 <= r["per_digit"] <= 1.0
    assert "exact match" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    src, tgt = module["make_pairs"](rng, 5, 5, 20)
    for s, t in zip(src, tgt, strict=True):
        assert 5 <= len(s) <= 20
        np.testing.assert_array_equal(t, np.append(s[::-1], module["EOS"]))


def test_classify_tiny(capsys):
    module = _load("classify.py")
    results = module["main"](list(module["TINY_ARGS"]))
    assert 0.0 <= results["accuracy"] <= 1.0 and results["log_loss"] > 0
    assert "held-out accuracy" in capsys.readouterr().out
    seqs, labels = module["make_data"](np.random.default_rng(0), 20)
    for seq, label in zip(seqs, labels, strict=True):
        counts = [module["_count"](seq, m) for m in module["MOTIFS"]]
        assert counts[label] == 1 and sum(counts) == 2
        starts = [
            i
            for i in range(len(seq) - 2)
            if any(np.array_equal(seq[i : i + 3], m) for m in module["MOTIFS"])
        ]
        np.testing.assert_array_equal(seq[starts[0] : starts[0] + 3], module["MOTIFS"][label])
