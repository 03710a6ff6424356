"""The PRNG key of the fitting state reaches the training loss (issue 19).

SGDState carries a key; every optimizer step splits it and hands one half to the
model's ``training_log_probs`` (the contract method a stochastic training objective
overrides: scheduled sampling now, dropout next). These tests show that the key is
real: each step draws afresh, a fit is reproducible from its ``key=``, a resumed fit
restores the key from its checkpoint, and a model that needs a key refuses to train
without one. They also pin that sgd_update is the step fit_sgd takes with TBPTT
(a carried state continued by ``Window(..., reset=False)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import probseq
from probseq.fit.sgd import Window


def _tokens(n=8, t=12, seed=0):
    return np.random.default_rng(seed).integers(0, 4, size=(n, t))


def test_default_training_loss_is_the_likelihood():
    model = probseq.GRU(vocab_size=4, hidden_size=5)
    params = model.init(jax.random.key(0))
    x = jnp.asarray(_tokens())
    want = model.batch_sequence_log_probs(params, None, x)
    got = model.training_log_probs(params, None, x, key=jax.random.key(3))
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_each_step_splits_the_key_and_draws_afresh():
    model = probseq.ScheduledSampling(probseq.GRU(vocab_size=4, hidden_size=5), 1.0)
    params = model.init(jax.random.key(0))
    x = jnp.asarray(_tokens())
    batch = (x, jnp.ones(x.shape, bool))
    key = jax.random.key(7)
    state = probseq.sgd_init(model, params, optax.sgd(0.0), key=key)  # params never move
    step = jax.jit(probseq.sgd_update)
    s1, m1 = step(state, batch)
    s2, m2 = step(s1, batch)
    np.testing.assert_array_equal(
        jax.random.key_data(s1.key), jax.random.key_data(jax.random.split(key)[0])
    )
    assert float(m1["loss"]) != float(m2["loss"])  # the same batch, other draws
    again, m1b = step(state, batch)  # the same state: the same draws
    assert float(m1b["loss"]) == float(m1["loss"])
    # with p = 0 nothing is drawn: every step scores the same
    teacher = probseq.ScheduledSampling(model.model, 0.0)
    t = probseq.sgd_init(teacher, params, optax.sgd(0.0), key=key)
    t1, n1 = step(t, batch)
    _, n2 = step(t1, batch)
    assert float(n1["loss"]) == float(n2["loss"])


def test_a_model_that_draws_noise_refuses_a_state_without_key():
    model = probseq.ScheduledSampling(probseq.GRU(vocab_size=4, hidden_size=5), 0.5)
    params = model.init(jax.random.key(0))
    x = jnp.asarray(_tokens())
    state = probseq.sgd_init(model, params, optax.adam(1e-2))
    with pytest.raises(ValueError, match="key"):
        probseq.sgd_update(state, (x, jnp.ones(x.shape, bool)))


def test_fit_noise_comes_from_the_fit_key_and_resumes_from_the_checkpoint(tmp_path):
    model = probseq.ScheduledSampling(probseq.GRU(vocab_size=4, hidden_size=5), 0.5)
    params = model.init(jax.random.key(0))
    x = _tokens(16, 12)
    kw = dict(batch_size=8, learning_rate=0.05, shuffle=False, progress=False, bptt_length=6)
    a = probseq.fit_sgd(model, params, x, key=jax.random.key(1), num_epochs=2, **kw)
    b = probseq.fit_sgd(model, params, x, key=jax.random.key(1), num_epochs=2, **kw)
    c = probseq.fit_sgd(model, params, x, key=jax.random.key(2), num_epochs=2, **kw)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    # no shuffle: only the loss's draws differ between the keys
    assert any(
        not np.array_equal(u, v)
        for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params), strict=True)
    )
    # one epoch, then continued to two from the checkpoint: the key is part of the state
    ckpt = tmp_path / "ckpt"
    probseq.fit_sgd(model, params, x, key=jax.random.key(1), num_epochs=1,
                    checkpoint_dir=ckpt, **kw)  # fmt: skip
    resumed = probseq.fit_sgd(model, params, x, key=jax.random.key(1), num_epochs=2,
                              checkpoint_dir=ckpt, **kw)  # fmt: skip
    assert resumed.info["resumed_from_step"] == 4  # 2 batches x 2 windows
    jax.tree.map(np.testing.assert_array_equal, resumed.params, a.params)


def test_sgd_update_continues_a_carried_state_across_windows():
    """Two windows with reset=False between them score what the whole sequences score
    (zero learning rate: the parameters stay put), as fit_sgd's TBPTT does."""
    model = probseq.LSTM(vocab_size=4, hidden_size=5)
    params = model.init(jax.random.key(0))
    x = jnp.asarray(_tokens(4, 12))
    mask = jnp.ones(x.shape, bool)
    state = probseq.sgd_init(model, params, optax.sgd(0.0), carry_rows=4)
    step = jax.jit(probseq.sgd_update)
    s1, m1 = step(state, Window(x[:, :6], mask[:, :6], reset=True))
    s2, m2 = step(s1, Window(x[:, 6:], mask[:, 6:], reset=False))
    whole = float(jnp.sum(probseq.log_prob(model, params, x)))
    total = float(m1["log_likelihood"] + m2["log_likelihood"])
    np.testing.assert_allclose(total, whole, rtol=1e-5)  # float32 sums in another order
    # restarting the second window scores something else
    _, m3 = step(s1, Window(x[:, 6:], mask[:, 6:], reset=True))
    assert abs(float(m3["log_likelihood"]) - float(m2["log_likelihood"])) > 1e-3
    with pytest.raises(ValueError, match="carry_rows"):
        probseq.sgd_update(probseq.sgd_init(model, params), Window(x, mask, reset=False))
