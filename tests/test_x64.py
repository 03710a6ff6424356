"""Every family under ``jax_enable_x64`` (numpyro's ``enable_x64()``, common for NUTS).

The table: each family x each operation (init, log_prob, step_log_probs, sample,
forecast, a few fit_sgd steps; fit_em, filter and smoother for HMMs), with parameters
of either precision and data of the other. x64 is on only inside this module: the
fixture restores the flag and drops every compiled executable on both sides, so no
jit cache built in one mode is reused in the other.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq
from probseq.fit import sgd


@pytest.fixture(autouse=True, scope="module")
def _x64():
    before = jax.config.jax_enable_x64
    jax.clear_caches()
    sgd.clear_compiled_cache()
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)
    jax.clear_caches()
    sgd.clear_compiled_cache()


FAMILIES = {
    "RNN": lambda: probseq.RNN(vocab_size=5, hidden_size=6),
    "LSTM": lambda: probseq.LSTM(obs_dim=2, hidden_size=6),
    "GRU": lambda: probseq.GRU(vocab_size=5, hidden_size=6, num_layers=2),
    "MinGRU": lambda: probseq.MinGRU(obs_dim=2, hidden_size=6),
    "LRU": lambda: probseq.LRU(vocab_size=5, hidden_size=6),
    "CategoricalHMM": lambda: probseq.CategoricalHMM(3, 5),
    "GaussianHMM": lambda: probseq.GaussianHMM(3, 2),
}


def _data(model, dtype):
    rng = np.random.default_rng(0)
    if model.head.is_token:
        return rng.integers(0, 5, size=(2, 7))
    return rng.normal(size=(2, 7, 2)).astype(dtype)


def test_default_parameter_dtype_follows_jax_default_float():
    for make in FAMILIES.values():
        params = jax.eval_shape(make().init, jax.random.key(0))
        assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}


@pytest.mark.slow  # ~15-35 s each on 2 cores: mostly compilation
@pytest.mark.parametrize("param_dtype", [None, jnp.float32], ids=["default", "float32"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_x_operation_table(family, param_dtype):
    model = FAMILIES[family]()
    key = jax.random.key(1)
    params = model.init(key, dtype=param_dtype)
    want = jnp.dtype(jnp.float64 if param_dtype is None else param_dtype)
    assert {a.dtype for a in jax.tree.leaves(params)} == {want}
    # Data of the other precision than the parameters.
    x = _data(model, np.float32 if want == jnp.float64 else np.float64)

    lp = probseq.log_prob(model, params, x)
    steps = probseq.step_log_probs(model, params, x)
    assert lp.dtype == want and steps.dtype == want
    assert np.isfinite(np.asarray(lp)).all()
    np.testing.assert_allclose(np.asarray(steps).sum(-1), np.asarray(lp), rtol=1e-5)

    draws = probseq.sample(model, params, key, 6, num_samples=2, prefix=x)
    assert draws.shape == (2, 2, 6) + model.head.event_shape
    if not model.head.is_token:
        assert draws.dtype == want
    fc = probseq.forecast(model, params, key, x, 4, 3)
    assert fc.samples.shape[:3] == (3, 2, 4) and np.isfinite(fc.history_log_prob).all()

    res = probseq.fit_sgd(
        model, params, x, key=key, num_epochs=2, batch_size=2, learning_rate=1e-2, progress=False
    )
    assert {a.dtype for a in jax.tree.leaves(res.params)} == {want}
    assert np.isfinite(np.asarray(probseq.log_prob(model, res.params, x))).all()

    if isinstance(model, probseq.CategoricalHMM | probseq.GaussianHMM):
        em = probseq.fit_em(model, params, x, num_iters=3)
        ll = np.asarray(em.history["log_likelihood"])
        assert np.isfinite(ll).all() and (np.diff(ll) >= -1e-6 * np.abs(ll[:-1])).all()
        for posterior in (model.filter(params, x), model.smoother(params, x)):
            assert posterior.shape == (2, 7, 3) and posterior.dtype == want
            np.testing.assert_allclose(np.asarray(posterior).sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_float64_and_float32_parameters_agree(family):
    model = FAMILIES[family]()
    p64 = model.init(jax.random.key(2))
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    x = _data(model, np.float64)
    lp64 = np.asarray(probseq.log_prob(model, p64, x))
    lp32 = np.asarray(probseq.log_prob(model, p32, x))
    assert lp64.dtype == np.float64
    np.testing.assert_allclose(lp32, lp64, rtol=1e-4)
