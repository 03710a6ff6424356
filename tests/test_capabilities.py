"""Optional capabilities are declared on the contract (issue 19), never found by duck
typing: generic code reads the flags (supports_em, supports_predict,
supports_least_squares, num_conditioned_steps, attention_weights), so a method that
happens to carry a capability's name does not switch it on, and a flag alone does."""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np
import pytest

import probseq
from probseq.core import SequenceModel

PACKAGE = pathlib.Path(probseq.__file__).parent
CAPABILITIES = ("predict", "least_squares", "num_conditioned_steps", "attention_weights",
                "supports_em", "em_options")  # fmt: skip


def test_the_contract_declares_each_capability_with_a_default():
    assert SequenceModel.supports_em is False and SequenceModel.supports_predict is False
    assert SequenceModel.supports_least_squares is False
    assert SequenceModel.num_conditioned_steps == 0
    lstm = probseq.LSTM(vocab_size=3, hidden_size=2)
    assert lstm.attention_weights(None) is None
    with pytest.raises(NotImplementedError, match="closed-form predictive"):
        lstm.predict(None, None, 2)
    ar, lds = probseq.AR(order=2), probseq.LDS(state_dim=1, obs_dim=1)
    assert (ar.supports_predict, ar.supports_least_squares, ar.num_conditioned_steps) == (
        True, True, 2,
    )  # fmt: skip
    assert lds.supports_predict and lds.supports_em and not lds.supports_least_squares


def test_no_generic_code_looks_for_a_capability_by_name():
    names = "|".join(CAPABILITIES)
    pattern = re.compile(rf"(hasattr|getattr)\(\s*(self\.)?model\s*,\s*[\"']({names})[\"']")
    found = [f"{p.relative_to(PACKAGE)}:{m.group(0)}" for p in PACKAGE.rglob("*.py")
             for m in pattern.finditer(p.read_text())]  # fmt: skip
    assert found == [], found


class _ARWithoutPredictive(probseq.AR):
    """An AR whose predict method exists but which does not declare the capability."""

    supports_predict = False


def test_forecast_bands_follow_the_flag_not_the_method():
    x = np.cumsum(np.random.default_rng(0).normal(size=120))[:, None].astype(np.float32)
    key = jax.random.key(1)
    exact_model = probseq.AR(order=2)
    params = probseq.fit_ls(exact_model, x).params
    exact = probseq.forecast(exact_model, params, key, x, 3, num_samples=50)
    sampled = probseq.forecast(_ARWithoutPredictive(order=2), params, key, x, 3, num_samples=50)
    means, _ = exact_model.predict(params, exact.final_state, 3)
    np.testing.assert_allclose(exact.mean, np.asarray(means), rtol=1e-5)  # closed form
    np.testing.assert_allclose(sampled.mean, np.asarray(sampled.samples).mean(axis=0))
    assert not np.allclose(sampled.mean, exact.mean, rtol=1e-6)  # 50 draws, not the mean


def test_fit_ls_reads_the_flag():
    x = np.cumsum(np.random.default_rng(0).normal(size=60))[:, None]

    class NoClosedForm(probseq.AR):
        supports_least_squares = False

    with pytest.raises(ValueError, match="closed-form least-squares fit"):
        probseq.fit_ls(NoClosedForm(order=1), x)
    assert probseq.fit_ls(probseq.AR(order=1), x).params["coef"].shape == (1, 1, 1)
