"""MinLSTM (Feng et al. 2024): a float64 NumPy recursion of the paper's equations, the
log-space parallel path against the sequential one from non-zero states (values and
gradients), and a short fit on the text example.

Tolerances: float64 vs the NumPy recursion 1e-10 (the same arithmetic up to order);
parallel vs sequential in float32 1e-5 (as tests/test_parallel.py: both solve the
same linear recurrence, in a different order of float32 operations).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq
from probseq import data
from probseq.scan import log_linear_recurrence


def _np_sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _np_minlstm_states(params, x_onehot_or_real, embed=None):
    """Top-layer states h_1..h_T of a MinLSTM stack, from the paper's equations in
    float64 NumPy (gates normalised to sum to one, g for the candidate)."""
    inp = np.asarray(x_onehot_or_real, np.float64)
    if embed is not None:
        inp = np.asarray(embed, np.float64)[inp.astype(int)]
    for p in params["layers"]:
        p = {k: np.asarray(v, np.float64) for k, v in p.items()}
        h = np.zeros(p["b_f"].shape)
        out = []
        for xt in inp:
            f = _np_sigmoid(xt @ p["w_f"] + p["b_f"])
            i = _np_sigmoid(xt @ p["w_i"] + p["b_i"])
            v = xt @ p["w_h"] + p["b_h"]
            cand = np.where(v >= 0, v + 0.5, _np_sigmoid(v))
            h = f / (f + i) * h + i / (f + i) * cand
            out.append(h)
        inp = np.stack(out)
    return inp


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_log_prob_equals_a_float64_numpy_recursion(scan):
    with jax.enable_x64(True):
        model = probseq.MinLSTM(vocab_size=6, hidden_size=5, num_layers=2, scan=scan)
        params = model.init(jax.random.key(0))
        # non-zero biases so that both branches of g and unequal gates are exercised
        params = jax.tree.map(
            lambda a: a + 0.3 * jax.random.normal(jax.random.key(a.size), a.shape, a.dtype),
            params,
        )
        x = np.array([0, 3, 5, 1, 1, 2, 4, 0, 5, 3])
        hs = _np_minlstm_states(params, x, embed=params["embed"])
        feats = np.vstack([np.zeros((1, 5)), hs[:-1]])
        logits = feats @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        expected = log_p[np.arange(len(x)), x]
        res = probseq.score(model, params, x)
        np.testing.assert_allclose(np.asarray(res.step_log_probs), expected, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(res.final_state.features), hs[-1], rtol=1e-10)


def _pair(**kw):
    return probseq.MinLSTM(scan="sequential", **kw), probseq.MinLSTM(scan="parallel", **kw)


def test_parallel_equals_sequential_from_nonzero_states():
    seq, par = _pair(vocab_size=7, hidden_size=8, num_layers=2)
    params = seq.init(jax.random.key(3))
    key = jax.random.key(4)
    x = jax.random.randint(key, (3, 64), 0, 7)
    h = probseq.score(seq, params, x[:, :32]).final_state
    assert min(float(jnp.abs(c).max()) for c in jax.tree.leaves(h.carries)) > 0.1
    # and a state no run reaches: negative entries (the log-space path takes any sign)
    noise = jax.tree.map(lambda a: -2.0 * jnp.abs(jax.random.normal(key, a.shape)), h)
    for start in (h, noise):
        a = probseq.score(seq, params, x[:, 32:], initial_state=start)
        b = probseq.score(par, params, x[:, 32:], initial_state=start)
        np.testing.assert_allclose(b.step_log_probs, a.step_log_probs, rtol=1e-5, atol=1e-5)
        leaves = zip(jax.tree.leaves(a.final_state), jax.tree.leaves(b.final_state), strict=True)
        for fa, fb in leaves:
            np.testing.assert_allclose(fb, fa, rtol=1e-5, atol=1e-5)
    whole = probseq.score(par, params, x).step_log_probs[:, 32:]
    after_prefix = probseq.score(seq, params, x[:, 32:], initial_state=h).step_log_probs
    np.testing.assert_allclose(whole, after_prefix, rtol=1e-5, atol=1e-5)


def test_parallel_and_sequential_gradients_agree_from_a_nonzero_state():
    seq, par = _pair(obs_dim=2, hidden_size=8)
    params = seq.init(jax.random.key(5))
    x = jax.random.normal(jax.random.key(6), (2, 32, 2))
    state = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(7), a.shape), seq.initial_state(params)
    )
    state = jax.tree.map(lambda a: jnp.broadcast_to(a, (2,) + a.shape), state)

    def grads(model):
        def f(p, h):
            return -jnp.sum(probseq.log_prob(model, p, x, initial_state=h))

        return jax.grad(f, argnums=(0, 1))(params, state)

    g_seq, g_par = grads(seq), grads(par)
    for gs, gp in zip(jax.tree.leaves(g_seq), jax.tree.leaves(g_par), strict=True):
        scale = float(jnp.abs(gs).max()) + 1e-30
        np.testing.assert_allclose(gp / scale, gs / scale, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(jax.tree.leaves(g_seq[1])[0]).max()) > 0  # the state matters


def test_log_linear_recurrence_on_long_sequences_matches_the_loop():
    """Gates near 0 multiplied over 2000 steps: the log-space tree neither under- nor
    overflows, and h0 of either sign enters linearly."""
    rng = np.random.default_rng(0)
    t, n = 2000, 4
    log_a = np.log(rng.uniform(0.01, 0.999, size=(t, n)))
    log_b = rng.normal(size=(t, n)) - 3.0
    h0 = np.array([-3.0, 0.0, 2.0, 10.0])
    expected = np.empty((t, n))
    h = h0.copy()
    for k in range(t):
        h = np.exp(log_a[k]) * h + np.exp(log_b[k])
        expected[k] = h
    for parallel in (False, True):
        got = log_linear_recurrence(
            jnp.asarray(log_a, jnp.float32), jnp.asarray(log_b, jnp.float32),
            jnp.asarray(h0, jnp.float32), parallel=parallel,
        )  # fmt: skip
        assert np.isfinite(np.asarray(got)).all()
        np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5, atol=1e-6)


def test_bad_scan_is_refused():
    with pytest.raises(ValueError, match="scan"):
        probseq.MinLSTM(vocab_size=3, scan="fast")


def test_short_fit_on_the_text_example_lowers_the_held_out_loss():
    text = data.pydoc_text()[:6000]
    splits = data.text_splits(text, sequence_length=64, fractions=(0.8, 0.1, 0.1))
    model = probseq.MinLSTM(vocab_size=splits.vocabulary.vocab_size, hidden_size=32)
    params = model.init(jax.random.key(0))
    valid = splits.valid

    def per_char(p):
        lp = probseq.log_prob(model, p, valid.x, valid.mask)
        return -float(jnp.sum(lp)) / float(valid.mask.sum())

    before = per_char(params)
    fit = probseq.fit_sgd(
        model, params, splits.train.x, mask=splits.train.mask, key=jax.random.key(1),
        num_epochs=6, batch_size=16, learning_rate=1e-2, progress=False,
    )  # fmt: skip
    after = per_char(fit.params)
    unigram = np.log(splits.vocabulary.vocab_size)
    assert before > 0.95 * unigram  # a fresh model is near-uniform
    assert after < before - 0.5, (before, after)
