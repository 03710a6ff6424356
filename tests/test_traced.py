"""What a traced call (under ``jax.jit``, ``grad``, ``vmap``) gives for input that eager
validation refuses: NaN, never a plausible number.

Eagerly, probseq raises a ValueError for a token id outside [0, vocab_size) and for a
mask that is not a prefix. Under ``jax.jit`` the values are tracers and cannot be
checked, and a plain gather would clamp (the HMM scored ``[0, 99, 2]`` as ``[0, 4, 2]``)
or wrap (-1 read the last embedding row): every such row's log-likelihood is NaN now.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq

TOKEN_FAMILIES = {
    "RNN": lambda: probseq.RNN(vocab_size=5, hidden_size=6),
    "LSTM": lambda: probseq.LSTM(vocab_size=5, hidden_size=6),
    "GRU": lambda: probseq.GRU(vocab_size=5, hidden_size=6),
    "MinGRU": lambda: probseq.MinGRU(vocab_size=5, hidden_size=6),
    "LRU": lambda: probseq.LRU(vocab_size=5, hidden_size=6),
    "CategoricalHMM": lambda: probseq.CategoricalHMM(3, 5),
}
GOOD = np.array([[0, 3, 2, 1], [4, 4, 0, 2]])


@pytest.mark.parametrize("family", list(TOKEN_FAMILIES))
def test_out_of_range_tokens_give_nan_under_jit(family):
    model = TOKEN_FAMILIES[family]()
    params = model.init(jax.random.key(0))
    traced = jax.jit(lambda p, x: probseq.log_prob(model, p, x))
    steps = jax.jit(lambda p, x: probseq.step_log_probs(model, p, x))
    np.testing.assert_allclose(
        traced(params, GOOD), probseq.log_prob(model, params, GOOD), rtol=1e-6
    )
    # In the middle, at the end (nothing after it to poison) and negative (wraps).
    for t, bad_id in [(1, 99), (3, 5), (2, -1)]:
        x = GOOD.copy()
        x[0, t] = bad_id
        lp = np.asarray(traced(params, x))
        assert np.isnan(lp[0]), (t, bad_id, lp)
        assert np.isfinite(lp[1]), "the other row is untouched"
        assert np.isnan(np.asarray(steps(params, x))[0]).all()
        with pytest.raises(ValueError, match="outside"):
            probseq.log_prob(model, params, x)


@pytest.mark.parametrize(
    "model",
    [
        probseq.GRU(vocab_size=5, hidden_size=6),
        probseq.GaussianHMM(2, 1),
        probseq.PoissonHMM(2, 1),
        probseq.GaussianMixtureHMM(2, 1, 2),
        probseq.GaussianHMM(2, 1, covariance_type="full"),
    ],
    ids=repr,
)
def test_mask_with_a_hole_gives_nan_under_jit(model):
    params = model.init(jax.random.key(0))
    x = GOOD if model.head.is_token else GOOD[..., None].astype(np.float32)
    mask = np.array([[True, False, True, True], [True, True, False, False]])
    traced = jax.jit(lambda p, x, m: probseq.log_prob(model, p, x, m))
    lp = np.asarray(traced(params, x, mask))
    assert np.isnan(lp[0]) and np.isfinite(lp[1])
    np.testing.assert_allclose(lp[1], probseq.log_prob(model, params, x[1, :2]), rtol=1e-6)
    with pytest.raises(ValueError, match="after a masked step"):
        probseq.log_prob(model, params, x, mask)


def test_hmm_posteriors_and_em_statistics_never_clamp():
    model = probseq.CategoricalHMM(3, 5)
    params = model.init(jax.random.key(0))
    x = jnp.array([0, 99, 2])
    filtered = jax.jit(lambda p, x: model.filter(p, x))(params, x)
    smoothed = jax.jit(lambda p, x: model.smoother(p, x))(params, x)
    assert np.isnan(np.asarray(filtered)[1:]).all()
    assert np.isnan(np.asarray(smoothed)).all()
    ll = model.emission_log_likelihoods(params, x)
    assert np.isnan(np.asarray(ll)[1]).all() and np.isfinite(np.asarray(ll)[[0, 2]]).all()


def test_gradient_of_a_valid_batch_is_unchanged_by_the_checks():
    model = probseq.LSTM(vocab_size=5, hidden_size=6)
    params = model.init(jax.random.key(0))
    grads = jax.jit(jax.grad(lambda p: probseq.log_prob(model, p, GOOD).sum()))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
