"""Ancestral sampling: shapes, dtypes, prefixes, frequencies and temperature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq

NEURAL = [probseq.RNN, probseq.LSTM, probseq.GRU, probseq.MinGRU, probseq.LRU]

# A known 3-state, 4-symbol HMM (used for the frequency tests).
PI = np.array([0.6, 0.3, 0.1])
A = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.25, 0.25, 0.5]])
B = np.array([[0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25]])


@pytest.mark.parametrize("family", NEURAL, ids=lambda f: f.__name__)
def test_shapes_and_dtypes(family):
    tok = family(vocab_size=6, hidden_size=8)
    p = tok.init(jax.random.key(0))
    key = jax.random.key(1)
    x = probseq.sample(tok, p, key, 7)
    assert x.shape == (7,) and jnp.issubdtype(x.dtype, jnp.integer)
    assert ((x >= 0) & (x < 6)).all()
    assert probseq.sample(tok, p, key, 7, num_samples=3).shape == (3, 7)
    prefix = np.array([[1, 2, 3], [4, 5, 0]])
    assert probseq.sample(tok, p, key, 5, prefix=prefix).shape == (2, 5)
    assert probseq.sample(tok, p, key, 5, prefix=prefix, num_samples=4).shape == (4, 2, 5)
    assert probseq.sample(tok, p, key, 5, prefix=[np.array([1]), np.array([2, 3, 4])]).shape == (
        2,
        5,
    )

    real = family(obs_dim=2, hidden_size=8)
    p = real.init(jax.random.key(0))
    y = probseq.sample(real, p, key, 6, num_samples=3)
    assert y.shape == (3, 6, 2) and y.dtype == jnp.float32
    assert probseq.sample(real, p, key, 4, prefix=np.zeros((5, 3, 2))).shape == (5, 4, 2)


def test_hmm_shapes():
    hmm = probseq.CategoricalHMM(3, 4)
    p = hmm.init(jax.random.key(0))
    assert probseq.sample(hmm, p, jax.random.key(1), 9, num_samples=2).shape == (2, 9)
    g = probseq.GaussianHMM(2, 3)
    q = g.init(jax.random.key(0))
    assert probseq.sample(g, q, jax.random.key(1), 5).shape == (5, 3)


def test_same_key_same_draw_and_keys_differ():
    model = probseq.GRU(vocab_size=6, hidden_size=8)
    p = model.init(jax.random.key(0))
    a = probseq.sample(model, p, jax.random.key(5), 50)
    b = probseq.sample(model, p, jax.random.key(5), 50)
    c = probseq.sample(model, p, jax.random.key(6), 50)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("family", NEURAL, ids=lambda f: f.__name__)
def test_prefix_is_the_state_after_the_prefix(family):
    """Sampling after a prefix == sampling from the prefix's filtered final state."""
    model = family(vocab_size=6, hidden_size=8, num_layers=2)
    p = model.init(jax.random.key(0))
    prefix = np.array([3, 1, 4, 1, 5])
    state = probseq.score(model, p, prefix).final_state
    a = probseq.sample(model, p, jax.random.key(2), 10, prefix=prefix, num_samples=3)
    b = probseq.sample(model, p, jax.random.key(2), 10, initial_state=state, num_samples=3)
    np.testing.assert_array_equal(a, b)


def test_prefix_changes_the_continuation():
    """A 2-state HMM whose states emit disjoint symbols: the prefix pins the state."""
    hmm = probseq.CategoricalHMM(2, 4)
    p = hmm.init(
        jax.random.key(0),
        initial_probs=np.array([0.5, 0.5]),
        transition_matrix=np.array([[0.99, 0.01], [0.01, 0.99]]),
        emission_probs=np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]),
    )
    after_low = probseq.sample(
        hmm, p, jax.random.key(1), 5, prefix=np.array([0, 1, 0]), num_samples=200
    )
    after_high = probseq.sample(
        hmm, p, jax.random.key(1), 5, prefix=np.array([2, 3]), num_samples=200
    )
    assert (after_low[:, 0] < 2).all()  # the next symbol comes from state 0 w.p. 0.99
    assert (after_high[:, 0] >= 2).mean() > 0.95
    assert (after_low < 2).mean() > 0.9


def _exact_position_marginals(t):
    """p(z_t) for t = 0..t-1 under (PI, A)."""
    out, pz = [], PI
    for _ in range(t):
        out.append(pz)
        pz = pz @ A
    return np.array(out)


def test_hmm_sample_frequencies_match_the_model():
    """12,000 sampled steps: unigram and bigram counts within 4 standard errors.

    Expected counts per sequence are exact (forward marginals); the standard error is
    the empirical spread of per-sequence counts over independent sequences.
    """
    hmm = probseq.CategoricalHMM(3, 4)
    p = hmm.init(jax.random.key(0), initial_probs=PI, transition_matrix=A, emission_probs=B)
    n_seq, t = 400, 30
    xs = np.asarray(probseq.sample(hmm, p, jax.random.key(42), t, num_samples=n_seq))
    pz = _exact_position_marginals(t)  # (t, K)
    # unigrams
    counts = np.stack([(xs == a).sum(1) for a in range(4)], 1)  # (n_seq, V)
    expected = (pz @ B).sum(0)
    se = counts.std(0, ddof=1) / np.sqrt(n_seq)
    z = (counts.mean(0) - expected) / se
    assert np.abs(z).max() < 4, z
    # bigrams (x_t, x_{t+1}) = sum_ij p(z_t=i) B[i,a] A[i,j] B[j,b]
    exp_bi = np.einsum("ti,ia,ij,jb->ab", pz[:-1], B, A, B)
    for a in range(4):
        for b in range(4):
            c = ((xs[:, :-1] == a) & (xs[:, 1:] == b)).sum(1)
            se = c.std(ddof=1) / np.sqrt(n_seq)
            assert abs(c.mean() - exp_bi[a, b]) < 4 * se, (a, b, c.mean(), exp_bi[a, b])


def test_gaussian_hmm_sample_moments():
    g = probseq.GaussianHMM(1, 2)
    p = g.init(jax.random.key(0), means=np.array([[1.5, -2.0]]), scales=np.array([[0.5, 2.0]]))
    y = np.asarray(probseq.sample(g, p, jax.random.key(3), 100, num_samples=100)).reshape(-1, 2)
    n = len(y)
    assert np.all(np.abs(y.mean(0) - [1.5, -2.0]) < 4 * np.array([0.5, 2.0]) / np.sqrt(n))
    np.testing.assert_allclose(y.std(0), [0.5, 2.0], rtol=0.05)


def _greedy_reference(model, params, t):
    h, out = model.initial_state(params), []
    for _ in range(t):
        d = model.emission(params, h)
        x = jnp.argmax(d.probs if hasattr(d, "probs") else d.logits)
        out.append(int(x))
        h = model.update(params, h, x)
    return np.array(out)


@pytest.mark.parametrize(
    "model",
    [
        probseq.GRU(vocab_size=6, hidden_size=8),
        probseq.LRU(vocab_size=6, hidden_size=8),
        probseq.CategoricalHMM(3, 4),
    ],
    ids=repr,
)
def test_temperature_to_zero_is_greedy(model):
    p = model.init(jax.random.key(7))
    if isinstance(p, dict):  # a fresh network predicts an exactly uniform x_1: break the tie
        bias = jax.random.normal(jax.random.key(8), p["head"]["bias"].shape)
        p = dict(p, head=dict(p["head"], bias=bias))
    greedy = _greedy_reference(model, p, 12)
    zero = probseq.sample(model, p, jax.random.key(0), 12, temperature=0.0)
    np.testing.assert_array_equal(zero, greedy)
    for key in range(3):
        cold = probseq.sample(model, p, jax.random.key(key), 12, temperature=1e-3)
        np.testing.assert_array_equal(cold, greedy)


def test_temperature_zero_real_is_the_mean():
    model = probseq.LSTM(obs_dim=2, hidden_size=8)
    p = model.init(jax.random.key(0))
    a = probseq.sample(model, p, jax.random.key(0), 5, temperature=0.0)
    b = probseq.sample(model, p, jax.random.key(1), 5, temperature=0.0)
    np.testing.assert_array_equal(a, b)
    h = model.initial_state(p)
    np.testing.assert_allclose(a[0], model.emission(p, h).mean, rtol=1e-6)


def test_high_temperature_flattens():
    hmm = probseq.CategoricalHMM(1, 4)
    p = hmm.init(jax.random.key(0), emission_probs=np.array([[0.85, 0.05, 0.05, 0.05]]))
    hot = np.asarray(probseq.sample(hmm, p, jax.random.key(0), 2000, temperature=100.0))
    cold = np.asarray(probseq.sample(hmm, p, jax.random.key(0), 2000, temperature=1.0))
    assert (cold == 0).mean() > 0.8
    assert abs((hot == 0).mean() - 0.25) < 0.05


def test_conditional_model_samples_with_future_inputs():
    model = probseq.GRU(vocab_size=5, hidden_size=8, input_dim=3)
    p = model.init(jax.random.key(0))
    u = jax.random.normal(jax.random.key(1), (6, 3))
    assert probseq.sample(model, p, jax.random.key(2), 6, inputs=u).shape == (6,)
    with pytest.raises(ValueError, match="needs future inputs"):
        probseq.sample(model, p, jax.random.key(2), 6)


_TINY_TEMPERATURES = [1e-45, 1e-40, 1e-37, 1e-31]


@pytest.mark.parametrize(
    "model",
    [
        probseq.GRU(vocab_size=6, hidden_size=8),
        probseq.CategoricalHMM(3, 4),
        probseq.RNN(obs_dim=2, hidden_size=8),
        probseq.GaussianHMM(2, 2),
        probseq.RNN(head=probseq.heads.BernoulliHead(3), hidden_size=8),
        probseq.RNN(
            head=probseq.heads.MixtureNormalHead(obs_dim=2, num_components=3), hidden_size=8
        ),
    ],
    ids=repr,
)
def test_tiny_temperatures_are_greedy_never_token_zero(model):
    # t in (0, ~1e-30) used to overflow logits / t to -inf everywhere: token 0 forever.
    if isinstance(model, probseq.CategoricalHMM):  # a mode other than token 0
        b = np.array([[0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.2, 0.6], [0.2, 0.1, 0.6, 0.1]])
        p = model.init(jax.random.key(7), emission_probs=b)
    else:
        p = model.init(jax.random.key(7))
    if isinstance(p, dict):  # break the exact tie of a fresh network's first prediction
        bias = jax.random.normal(jax.random.key(8), p["head"]["bias"].shape)
        p = dict(p, head=dict(p["head"], bias=bias))
    greedy = np.asarray(probseq.sample(model, p, jax.random.key(0), 12, temperature=0.0))
    if model.head.is_token:
        assert greedy.any(), "the reference must not be all zeros"
    for t in _TINY_TEMPERATURES:
        cold = np.asarray(probseq.sample(model, p, jax.random.key(1), 12, temperature=t))
        assert np.isfinite(cold).all(), t
        np.testing.assert_allclose(cold, greedy, rtol=1e-5, atol=1e-5, err_msg=f"t={t}")
