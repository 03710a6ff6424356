"""The pure steps under the fitters: ``sgd_init`` / ``sgd_update`` and ``em_step``.

References: a hand-written optax loop on ``probseq.log_prob`` (the same loss, the
same optimizer), and ``fit_em`` itself. Tolerance 1e-6: the same float32 operations
in the same order, up to XLA's fusion choices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax_logs import compiled_messages

import probseq


def _tokens():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(6, 12))
    lengths = np.array([12, 7, 12, 3, 9, 12])
    return jnp.asarray(x), jnp.asarray(np.arange(12)[None] < lengths[:, None])


@pytest.mark.parametrize(
    "model",
    [probseq.GRU(vocab_size=5, hidden_size=8), probseq.CategoricalHMM(3, 5)],
    ids=["gru", "hmm"],
)
def test_sgd_update_equals_a_hand_written_optax_loop(model):
    x, mask = _tokens()
    params = model.init(jax.random.key(0))
    opt = optax.adam(0.05)
    state = probseq.sgd_init(model, params, opt)
    step = jax.jit(probseq.sgd_update)

    def loss(p):
        return -jnp.sum(probseq.log_prob(model, p, x, mask)) / jnp.sum(mask)

    ref_p, ref_s = params, opt.init(params)
    for _ in range(5):
        state, metrics = step(state, (x, mask))
        value, grads = jax.value_and_grad(loss)(ref_p)
        updates, ref_s = opt.update(grads, ref_s, ref_p)
        ref_p = optax.apply_updates(ref_p, updates)
        np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(state.step) == 5 and bool(metrics["finite"])
    assert int(metrics["num_steps"]) == int(mask.sum())


def test_sgd_update_skips_a_non_finite_step():
    model = probseq.GaussianHMM(2, 1)
    params = model.init(jax.random.key(0))
    state = probseq.sgd_init(model, params)
    x = jnp.full((2, 4, 1), jnp.inf)
    new, metrics = probseq.sgd_update(state, (x, jnp.ones((2, 4), bool)))
    assert not bool(metrics["finite"]) and int(new.step) == 0
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sgd_state_is_a_pytree_that_compiles_once():
    model = probseq.RNN(vocab_size=5, hidden_size=4)
    state = probseq.sgd_init(model, model.init(jax.random.key(0)), optax.sgd(0.1))
    leaves = jax.tree.leaves(state)
    assert all(isinstance(a, jax.Array) for a in leaves)
    x, mask = _tokens()
    step = jax.jit(probseq.sgd_update)
    state, _ = step(state, (x, mask))
    with compiled_messages() as compiled:
        state, _ = step(state, (x, mask))
        state, _ = step(state, (x, mask))
    assert compiled == [], compiled


def test_sgd_init_refuses_bad_input():
    model = probseq.RNN(vocab_size=5, hidden_size=4)
    with pytest.raises(ValueError, match="optimizer must be an optax"):
        probseq.sgd_init(model, model.init(jax.random.key(0)), optimizer="adam")


def test_em_step_repeated_equals_fit_em():
    model = probseq.CategoricalHMM(3, 5)
    params = model.init(jax.random.key(1))
    x, mask = _tokens()
    fit = probseq.fit_em(model, params, x, mask=mask, num_iters=6, tol=0.0)
    p, history = params, []
    for _ in range(6):
        p, log_likelihood = probseq.em_step(model, p, x, mask=mask)
        history.append(float(log_likelihood))
    np.testing.assert_allclose(history, fit.history["log_likelihood"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(fit.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(b >= a - 1e-4 * abs(a) for a, b in zip(history, history[1:], strict=False))
    with pytest.raises(ValueError, match="estep must be one of"):
        probseq.em_step(model, p, x, mask=mask, estep="fast")


def test_fit_sgd_is_a_driver_around_sgd_update():
    """Whole batches, no shuffle, no TBPTT: fit_sgd's steps are sgd_update's steps
    (same params and optimizer state after 4 epochs of 2 steps)."""
    model = probseq.GRU(vocab_size=5, hidden_size=8)
    x, mask = _tokens()
    params = model.init(jax.random.key(0))
    opt = optax.adam(0.05)
    fit = probseq.fit_sgd(model, params, x, mask=mask, key=jax.random.key(1), num_epochs=4,
                          batch_size=3, optimizer=opt, shuffle=False, progress=False)  # fmt: skip
    state = probseq.sgd_init(model, params, opt)
    step = jax.jit(probseq.sgd_update)
    for _ in range(4):
        for rows in (slice(0, 3), slice(3, 6)):
            state, _ = step(state, (x[rows], mask[rows]))
    assert fit.info["num_steps"] == int(state.step) == 8
    for a, b in zip(jax.tree.leaves(fit.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        jax.tree.leaves(fit.info["opt_state"]), jax.tree.leaves(state.opt_state), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_steps_is_an_explicit_cache():
    """fit_sgd(compiled=CompiledSteps()) keeps its executables there, not in SHARED; a
    second fit with the same object compiles nothing; a wrong object is refused."""
    from probseq.fit.sgd import SHARED, CompiledSteps

    model = probseq.GRU(vocab_size=5, hidden_size=7)
    x, mask = _tokens()
    own = CompiledSteps(size=2)
    SHARED.clear()

    def fit(compiled):
        return probseq.fit_sgd(model, model.init(jax.random.key(0)), x, mask=mask,
                               key=jax.random.key(1), num_epochs=1, batch_size=3,
                               progress=False, compiled=compiled)  # fmt: skip

    first = fit(own)
    assert first.info["compile_time_s"] > 0
    assert len(own._executables._entries) == 1 and not SHARED._executables._entries
    assert fit(own).info["compile_time_s"] == 0.0
    own.clear()
    assert fit(own).info["compile_time_s"] > 0
    with pytest.raises(ValueError, match="compiled must be a CompiledSteps"):
        fit({})
