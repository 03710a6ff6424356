"""FitHistory: one typed history, the same fields for fit_sgd, fit_em and fit_ls; the
log-likelihood in total and per token (over the unmasked steps); older names still read."""

import dataclasses
import json
import warnings

import jax
import numpy as np
import pytest

import probseq
from probseq import FitHistory, FitResult

FIELDS = [f.name for f in dataclasses.fields(FitHistory)]
INT_FIELDS = {"iteration", "num_tokens", "valid_num_tokens", "num_steps", "skipped_steps"}


@pytest.fixture(scope="module")
def fits():
    """fit_em and fit_sgd of one HMM on one ragged batch (6 rows, lengths 3..12)."""
    hmm = probseq.CategoricalHMM(num_states=2, vocab_size=3)
    truth = hmm.init(jax.random.key(0))
    x = np.asarray(probseq.sample(hmm, truth, jax.random.key(1), 12, num_samples=6))
    lengths = np.array([12, 3, 7, 12, 5, 9])
    mask = np.arange(12)[None, :] < lengths[:, None]
    start = hmm.init(jax.random.key(2))
    em = probseq.fit_em(hmm, start, x, mask=mask, num_iters=4, tol=0.0)
    data = [row[:n] for row, n in zip(x, lengths, strict=True)]
    sgd = probseq.fit_sgd(
        hmm, start, data, key=jax.random.key(3), num_epochs=3, batch_size=4,
        valid_data=data[:2], learning_rate=0.05, progress=False,
    )  # fmt: skip
    return dict(hmm=hmm, start=start, x=x, mask=mask, data=data, em=em, sgd=sgd)


def test_every_fitter_records_the_same_typed_fields(fits):
    ar = probseq.AR(order=1, obs_dim=1)
    series = np.cumsum(np.random.default_rng(0).normal(size=(2, 30, 1)), axis=1) * 0.1
    ls = probseq.fit_ls(ar, series)
    histories = {"fit_em": fits["em"].history, "fit_sgd": fits["sgd"].history, "fit_ls": ls.history}
    for fitter, h in histories.items():
        assert isinstance(h, FitHistory) and h.fitter == fitter
        assert list(h) == FIELDS == list(dict(h))
        for name in FIELDS[1:]:
            a = h[name]
            assert isinstance(a, np.ndarray) and a.shape == (h.num_entries,), (fitter, name)
            assert a.dtype == (np.int64 if name in INT_FIELDS else np.float64), (fitter, name)
            assert not a.flags.writeable
    assert histories["fit_em"].num_entries == 4 and histories["fit_sgd"].num_entries == 3
    assert histories["fit_ls"].num_entries == 1
    # what each fitter does not have: NaN / 0, as the docstring says
    em, sgd, ls_h = histories["fit_em"], histories["fit_sgd"], histories["fit_ls"]
    for h in (em, ls_h):
        assert np.isnan(h.valid_log_likelihood).all() and (h.valid_num_tokens == 0).all()
        assert np.isnan(h.time_s).all() and np.isnan(h.tokens_per_s).all()
        assert not h.has_validation
    assert sgd.has_validation and np.isfinite(sgd.time_s).all()
    assert em.iteration.tolist() == em.num_steps.tolist() == [0, 1, 2, 3]
    assert sgd.iteration.tolist() == [1, 2, 3]
    # fit_ls: per token over the regression steps (each row's first step is conditioned on)
    assert ls_h.num_tokens.tolist() == [2 * 29] == [ls.info["num_regression_steps"]]


def test_per_token_is_the_total_over_the_unmasked_steps(fits):
    hmm, start, x, mask, em = fits["hmm"], fits["start"], fits["x"], fits["mask"], fits["em"]
    h = em.history
    assert (h.num_tokens == mask.sum()).all() and mask.sum() == 48 < mask.size
    np.testing.assert_array_equal(h.log_likelihood_per_token, h.log_likelihood / 48)
    # entry 0 is log p(x) of the starting parameters (before the first M-step), float32 sum
    total = float(np.sum(np.asarray(probseq.log_prob(hmm, start, x, mask), np.float64)))
    np.testing.assert_allclose(h.log_likelihood[0], total, rtol=1e-5)
    np.testing.assert_array_equal(h.objective, h.log_likelihood)  # no prior
    sgd = fits["sgd"].history
    assert (sgd.num_tokens == 48).all() and (sgd.valid_num_tokens == 12 + 3).all()
    np.testing.assert_array_equal(sgd.log_likelihood_per_token, sgd.log_likelihood / 48)
    np.testing.assert_array_equal(sgd.valid_log_likelihood_per_token, sgd.valid_log_likelihood / 15)
    # the best epoch's validation score is the one fit_sgd reports
    best = fits["sgd"].info["best_epoch"]
    assert fits["sgd"].info["best_valid_log_lik"] == sgd.valid_log_likelihood_per_token[best - 1]


def test_reading_by_name_old_names_warn_unknown_names_fail(fits):
    h = fits["sgd"].history
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DESIGN's history["log_likelihood"]: no warning
        assert h["log_likelihood"] is h.log_likelihood
        assert "log_likelihood" in h and "train_log_lik" not in h
    for old, new in [("train_log_lik", "log_likelihood_per_token"), ("epoch", "iteration"),
                     ("valid_log_lik", "valid_log_likelihood_per_token")]:  # fmt: skip
        with pytest.warns(DeprecationWarning, match=new):
            assert h[old] is h[new]
    with pytest.raises(KeyError, match="not a FitHistory field"):
        h["loss"]
    with pytest.raises((AttributeError, dataclasses.FrozenInstanceError)):
        h.log_likelihood = np.zeros(3)
    assert FitHistory.from_dict(h.to_dict()) == h and FitHistory.from_dict(h) is h
    assert h != fits["em"].history


def test_from_totals_and_from_dict_check_their_input():
    h = FitHistory.from_totals(
        "fit_sgd", log_likelihood=[-30.0, -20.0], num_tokens=[10, 0], valid_log_likelihood=None
    )
    assert h.log_likelihood_per_token[0] == -3.0 and np.isnan(h.log_likelihood_per_token[1])
    with pytest.raises(ValueError, match=r"num_tokens must be one number or one per .*\(3,\)"):
        FitHistory.from_totals("fit_em", log_likelihood=[-1.0, -2.0], num_tokens=[1, 2, 3])
    with pytest.raises(ValueError, match="one length; objective has 3 entries"):
        FitHistory.from_totals(
            "fit_em", log_likelihood=[-1.0, -2.0], num_tokens=1, objective=[1, 2, 3]
        )
    with pytest.raises(ValueError, match=r"1-D.*\(2, 2\)"):
        FitHistory.from_totals("fit_em", log_likelihood=np.ones((2, 2)), num_tokens=1)
    with pytest.raises(ValueError, match="fitter must be one of"):
        FitHistory.from_totals("adam", log_likelihood=[-1.0], num_tokens=1)
    with pytest.raises(ValueError, match=r"no log-likelihood.*found keys \['time_s'\]"):
        FitHistory.from_dict({"time_s": [1.0]})
    with pytest.raises(ValueError, match=r"history\['objective'\] must be one value"):
        FitHistory.from_dict({"log_likelihood": [-1.0], "objective": [[-1.0]]})
    with pytest.raises(ValueError, match="must be numbers"):
        FitHistory.from_dict({"log_likelihood": ["many"]})


def test_a_fit_result_history_is_a_mapping_for_old_code(fits):
    """Code written for the dict history keeps working: dict(), items(), sorted()."""
    em = fits["em"]
    assert isinstance(em, FitResult)
    d = dict(em.history)
    assert sorted(d) == sorted(FIELDS) and d["fitter"] == "fit_em"
    assert len(em.history["log_likelihood"]) == 4
    assert "FitHistory(fitter='fit_em', num_entries=4" in repr(em.history)


def test_plots_of_both_fitters_work_and_are_not_mixed(fits):
    pytest.importorskip("matplotlib")
    from probseq import plots

    sgd, em = fits["sgd"], fits["em"]
    train, valid = plots.plot_learning_curves(sgd).axes[0].get_lines()
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(train.get_ydata(), sgd.history.log_likelihood_per_token)
    np.testing.assert_array_equal(valid.get_ydata(), sgd.history.valid_log_likelihood_per_token)
    ax = plots.plot_learning_curves(em.history).axes[0]
    (line,) = ax.get_lines()  # no prior: objective == log-likelihood, drawn once
    np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2, 3])
    np.testing.assert_array_equal(line.get_ydata(), em.history.log_likelihood)
    assert ax.get_xlabel() == "EM iteration"
    # without validation data there is no "valid" curve (the field is NaN)
    no_valid = FitHistory.from_totals("fit_sgd", log_likelihood=[-5.0, -4.0], num_tokens=2)
    assert [ln.get_label() for ln in plots.plot_learning_curves(no_valid).axes[0].get_lines()] == [
        "train"
    ]
    with pytest.raises(ValueError, match="cannot overlay"):
        plots.plot_learning_curves({"sgd": sgd, "em": em})
    with pytest.raises(ValueError, match="no learning curve"):
        plots.plot_learning_curves(
            FitHistory.from_totals("fit_em", log_likelihood=[], num_tokens=0)
        )


def _as_old_checkpoint(directory) -> list:
    """Rewrite fit_sgd's checkpoint as probseq wrote it before FitHistory: the history
    columns per token under the old names. Returns the old per-token train curve."""
    from probseq.fit import checkpoint

    path = directory / checkpoint.CHECKPOINT_FILE
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    document = json.loads(str(arrays["__metadata__"][()]))
    new = document["metadata"]["run"]["history"]
    per_token = [t / n for t, n in zip(new["log_likelihood"], new["num_tokens"], strict=True)]
    valid = [
        t / n for t, n in zip(new["valid_log_likelihood"], new["valid_num_tokens"], strict=True)
    ]
    document["metadata"]["run"]["history"] = {
        "epoch": new["iteration"],
        "train_log_lik": per_token,
        "valid_log_lik": valid,
        **{k: new[k] for k in ("num_steps", "skipped_steps", "tokens_per_s", "time_s")},
    }
    arrays["__metadata__"] = np.array(json.dumps(document))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return per_token


def test_fit_sgd_resumes_a_checkpoint_with_the_old_history_names(fits, tmp_path):
    hmm, start, data = fits["hmm"], fits["start"], fits["data"]
    settings = dict(
        key=jax.random.key(3), batch_size=4, valid_data=data[:2], learning_rate=0.05,
        progress=False, checkpoint_dir=tmp_path,
    )  # fmt: skip
    one = probseq.fit_sgd(hmm, start, data, num_epochs=1, **settings)
    old_curve = _as_old_checkpoint(tmp_path)
    two = probseq.fit_sgd(hmm, start, data, num_epochs=2, **settings)
    h = two.history
    assert two.info["resumed_from_step"] == one.info["num_steps"] and h.num_entries == 2
    np.testing.assert_allclose(h.log_likelihood_per_token[:1], old_curve, rtol=1e-12)
    np.testing.assert_allclose(h.log_likelihood, h.log_likelihood_per_token * 48, rtol=1e-12)
    assert h.num_tokens.tolist() == [48, 48]  # recovered from tokens_per_s * time_s
    # the validation totals: the old per-token values over this fit's validation tokens
    assert h.valid_num_tokens.tolist() == [15, 15]
    np.testing.assert_allclose(
        h.valid_log_likelihood[0], one.history.valid_log_likelihood[0], rtol=1e-12
    )
    np.testing.assert_allclose(
        h.valid_log_likelihood_per_token[0], one.history.valid_log_likelihood_per_token[0],
        rtol=1e-12,
    )  # fmt: skip
