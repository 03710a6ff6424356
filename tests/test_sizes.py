"""Sizes are checked before anything is allocated: one ValueError with the estimate and
the limit, raised at once, instead of a process that grows until it is killed (a
sample of 1e9 steps reached 20 GB; a forecast over 1e9 steps aborted inside XLA)."""

import time

import jax
import numpy as np
import pytest

import probseq
from probseq import memory

LIMIT = 8 * 10**9  # a fixed limit, so the tests mean the same on every machine


@pytest.fixture(autouse=True)
def _limit():
    memory.set_memory_limit(LIMIT)
    yield
    memory.set_memory_limit(None)


@pytest.fixture(scope="module")
def gru():
    model = probseq.GRU(vocab_size=5, hidden_size=8)
    return model, model.init(jax.random.key(0))


def _refused(call):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"needs about .* over the memory limit of 8 GB") as err:
        call()
    assert time.perf_counter() - start < 5.0, "refused only after working"
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_timesteps": 10**9}, {"num_timesteps": 10, "num_samples": 10**9}],
    ids=["num_timesteps", "num_samples"],
)
def test_sampling_too_much_is_refused_before_allocating(gru, kwargs):
    model, params = gru
    message = _refused(lambda: probseq.sample(model, params, jax.random.key(1), **kwargs))
    assert message.startswith("sample(")


def test_forecasting_too_far_is_refused_before_allocating():
    model = probseq.GaussianHMM(2, 1)
    params = model.init(jax.random.key(0))
    history = np.sin(np.arange(20.0))[:, None]
    _refused(lambda: probseq.forecast(model, params, jax.random.key(1), history, 10**9, 2))
    _refused(lambda: probseq.forecast(model, params, jax.random.key(1), history, 10, 10**9))


@pytest.mark.parametrize(
    "model",
    [
        probseq.RNN(vocab_size=5, hidden_size=10**5),
        probseq.LSTM(obs_dim=2, hidden_size=10**9),
        probseq.GRU(vocab_size=5, hidden_size=8, embed_size=10**9),
        probseq.LRU(vocab_size=5, hidden_size=10**6),
        probseq.CategoricalHMM(10**5, 4),
        probseq.GaussianHMM(10**9, 2),
    ],
    ids=repr,
)
def test_models_too_large_are_refused_at_init(model):
    assert memory.param_bytes(model) > LIMIT
    _refused(lambda: model.init(jax.random.key(0)))


def test_normal_sizes_pass(gru):
    model, params = gru
    assert probseq.sample(model, params, jax.random.key(1), 50, num_samples=3).shape == (3, 50)
    hmm = probseq.GaussianHMM(2, 1)
    fc = probseq.forecast(hmm, hmm.init(jax.random.key(0)), jax.random.key(1), np.zeros((5, 1)), 7)
    assert fc.samples.shape == (100, 7, 1)
    assert memory.param_bytes(model) == memory.nbytes_of(params)


def test_the_limit_default_and_overrides(monkeypatch):
    memory.set_memory_limit(None)
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    default = memory.memory_limit()
    assert default is None or default > 0
    with pytest.raises(ValueError, match="over the memory limit"):
        memory.check_fits(1e30, "anything")  # whatever the machine
    monkeypatch.setenv(memory.ENV_VAR, "1.5G")
    assert memory.memory_limit() == int(1.5 * 2**30)
    monkeypatch.setenv(memory.ENV_VAR, "2e9")
    assert memory.memory_limit() == 2 * 10**9
    monkeypatch.setenv(memory.ENV_VAR, "lots")
    with pytest.raises(ValueError, match="PROBSEQ_MEMORY_LIMIT='lots' is not a memory size"):
        memory.memory_limit()
    memory.set_memory_limit(1000)
    assert memory.memory_limit() == 1000  # the explicit override wins over the variable
    for bad in (0, -5, "8G", True):
        with pytest.raises(ValueError, match="positive number of bytes"):
            memory.set_memory_limit(bad)
