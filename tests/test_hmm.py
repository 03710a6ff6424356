"""Hidden Markov models: exact marginal likelihoods against independent references.

References: hmmlearn (categorical and diagonal-Gaussian ``score``), dynamax
(``marginal_log_prob``), brute-force enumeration of all K**T state paths, and NumPy
forward recursions in float64 (here and in references.py). Float64 checks run inside
``jax.enable_x64(True)``; nothing here changes a global JAX setting.

Tolerances (reason in one line each):
* float64 vs hmmlearn / dynamax: 1e-9 relative -- two exact float64 forward passes
  (log-space vs scaled) differ by O(T) ulps, ~1e-14, far below this.
* float64 vs brute force / NumPy recursion: 1e-12 relative -- the same sums over a
  handful of terms, differing only in rounding order.
* float32 vs hmmlearn: 1e-5 relative -- float32 parameters (~6e-8 relative each) and
  per-step float32 rounding over at most a few hundred steps.
* T = 1e6 float32 vs float64: 1e-6 relative -- the acceptance bound; the scaled filter
  has no error growth and the per-step terms are summed pairwise.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import forward_np as _forward_np
from references import gauss_loglik as _gauss_loglik
from references import hmmlearn_categorical as _hmmlearn_categorical
from references import hmmlearn_gaussian as _hmmlearn_gaussian
from references import import_dynamax as _import_dynamax
from references import init_categorical64 as _init_categorical64
from references import init_gaussian64 as _init_gaussian64
from references import left_to_right_hmm as _left_to_right_hmm
from references import ragged_tokens as _ragged_tokens
from references import random_gaussian_hmm as _random_gaussian_hmm
from references import random_hmm as _random_hmm

import probseq
from probseq.core import SequenceModel
from probseq.hmm_inference import hmm_filter

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")


# ------------------------------------------------------------------------ helpers
def _softmax64(logits) -> np.ndarray:
    a = np.asarray(logits, np.float64)
    a = a - a.max(axis=-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=-1, keepdims=True)


def _brute_force_log_prob(pi, a, b, xs):
    """log sum over all K**T paths of p(z, x), for every sequence in xs (N, T)."""
    k, t = a.shape[0], xs.shape[1]
    paths = np.array(list(itertools.product(range(k), repeat=t)))  # (K**T, T)
    p_path = pi[paths[:, 0]] * np.prod(a[paths[:, :-1], paths[:, 1:]], axis=1)  # (P,)
    # p(x | z) for every (sequence, path): product over t of B[z_t, x_t].
    emit = np.prod(b[paths[None, :, :], xs[:, None, :]], axis=2)  # (N, P)
    with np.errstate(divide="ignore"):
        return np.log(emit @ p_path)


# Ragged lengths used throughout: includes a length-1 sequence and a long one.
LENGTHS = [1, 7, 30, 113, 64]

CATEGORICAL_SHAPES = [(k, v) for k in (2, 4, 7) for v in (3, 6)]


# ------------------------------------------------------ 1. hmmlearn, categorical
@pytest.mark.parametrize("k,v", CATEGORICAL_SHAPES, ids=lambda z: str(z))
def test_categorical_matches_hmmlearn_ragged(k, v):
    rng = np.random.default_rng(100 * k + v)
    pi, a, b = _random_hmm(rng, k, v)
    seqs = _ragged_tokens(rng, v, LENGTHS)
    ref = _hmmlearn_categorical(pi, a, b)
    ref_each = np.array([ref.score(s[:, None]) for s in seqs])
    ref_total = ref.score(np.concatenate(seqs)[:, None], lengths=LENGTHS)
    hmm = probseq.CategoricalHMM(num_states=k, vocab_size=v)

    # Padded batch with explicit prefix mask; padding holds valid-looking garbage.
    t_max = max(LENGTHS)
    padded = rng.integers(0, v, size=(len(seqs), t_max))
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    mask = np.arange(t_max)[None] < np.array(LENGTHS)[:, None]

    with jax.enable_x64(True):
        params = _init_categorical64(hmm, pi, a, b)
        lp = np.asarray(probseq.log_prob(hmm, params, seqs))
        steps = np.asarray(probseq.step_log_probs(hmm, params, padded, mask))
        lp_masked = np.asarray(probseq.log_prob(hmm, params, padded, mask))
    assert lp.dtype == np.float64
    np.testing.assert_allclose(lp, ref_each, rtol=1e-9)
    np.testing.assert_allclose(lp.sum(), ref_total, rtol=1e-9)
    np.testing.assert_allclose(lp_masked, ref_each, rtol=1e-9)
    assert np.all(steps[~mask] == 0.0)
    np.testing.assert_allclose(steps.sum(axis=1), ref_each, rtol=1e-9)

    # float32: parameters and computation in float32 (no x64).
    params32 = hmm.init(jax.random.key(0), initial_probs=pi, transition_matrix=a, emission_probs=b)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params32))
    lp32 = np.asarray(probseq.log_prob(hmm, params32, seqs))
    assert lp32.dtype == np.float32
    np.testing.assert_allclose(lp32, ref_each, rtol=1e-5)
    np.testing.assert_allclose(lp32.astype(np.float64).sum(), ref_total, rtol=1e-5)


# ------------------------------------------------------------- 2. brute force
BRUTE_CASES = {
    "K2V2": lambda: _random_hmm(np.random.default_rng(7), 2, 2),
    "K3V3": lambda: _random_hmm(np.random.default_rng(8), 3, 3),
    "K3V3-zeros": _left_to_right_hmm,
}


@pytest.mark.parametrize("case", list(BRUTE_CASES))
def test_categorical_matches_brute_force_enumeration(case):
    pi, a, b = BRUTE_CASES[case]()
    k, v = b.shape
    max_t = 5
    # Every sequence of every length T = 1..5, as one padded batch with a prefix mask.
    rows, lengths, ref = [], [], []
    for t in range(1, max_t + 1):
        xs = np.array(list(itertools.product(range(v), repeat=t)))
        ref.append(_brute_force_log_prob(pi, a, b, xs))
        rows.append(np.pad(xs, ((0, 0), (0, max_t - t))))
        lengths.append(np.full(len(xs), t))
    x, lengths, ref = np.concatenate(rows), np.concatenate(lengths), np.concatenate(ref)
    mask = np.arange(max_t)[None] < lengths[:, None]
    hmm = probseq.CategoricalHMM(num_states=k, vocab_size=v)
    with jax.enable_x64(True):
        params = _init_categorical64(hmm, pi, a, b)
        lp = np.asarray(probseq.log_prob(hmm, params, x, mask))
    possible = np.isfinite(ref)
    if case == "K3V3-zeros":
        assert (~possible).any() and possible.any()
    # Impossible sequences get exactly -inf (never NaN or a finite value).
    np.testing.assert_array_equal(lp[~possible], -np.inf)
    np.testing.assert_allclose(lp[possible], ref[possible], rtol=1e-12, atol=1e-14)
    # For each T, the probabilities of all sequences of that length sum to one.
    for t in range(1, max_t + 1):
        np.testing.assert_allclose(np.exp(lp[lengths == t]).sum(), 1.0, rtol=1e-12)


# ----------------------------------------------------------------- 3. dynamax
@pytest.fixture(scope="module")
def dynamax_hmm():
    """dynamax's HMM module. Importing dynamax runs
    ``jax.config.update('jax_default_matmul_precision', 'float32')`` (dynamax/__init__.py);
    the previous value is restored so the rest of the session is unaffected."""
    return _import_dynamax("dynamax.hidden_markov_model")


@pytest.mark.parametrize("k,v", [(2, 3), (4, 6), (7, 3)], ids=lambda z: str(z))
def test_categorical_matches_dynamax_float64(dynamax_hmm, k, v):
    rng = np.random.default_rng(300 + 10 * k + v)
    pi, a, b = _random_hmm(rng, k, v)
    seqs = _ragged_tokens(rng, v, [1, 30, 113])  # few lengths: dynamax compiles per length
    hmm = probseq.CategoricalHMM(num_states=k, vocab_size=v)
    dyn = dynamax_hmm.CategoricalHMM(num_states=k, emission_dim=1, num_classes=v)
    with jax.enable_x64(True):
        dparams, _ = dyn.initialize(
            initial_probs=jnp.asarray(pi, jnp.float64),
            transition_matrix=jnp.asarray(a, jnp.float64),
            emission_probs=jnp.asarray(b[:, None, :], jnp.float64),
        )
        ref = np.array(
            [float(dyn.marginal_log_prob(dparams, jnp.asarray(s[:, None]))) for s in seqs]
        )
        params = _init_categorical64(hmm, pi, a, b)
        lp = np.asarray(probseq.log_prob(hmm, params, seqs))
    np.testing.assert_allclose(lp, ref, rtol=1e-9)


# ---------------------------------------------------------- 4. hmmlearn, Gaussian
@pytest.mark.parametrize("k,d", [(2, 1), (3, 2), (5, 3)], ids=lambda z: str(z))
def test_gaussian_matches_hmmlearn_ragged(k, d):
    rng = np.random.default_rng(400 + 10 * k + d)
    pi, a, means, scales = _random_gaussian_hmm(rng, k, d, 3.0, (0.3, 2.0))
    seqs = [rng.normal(scale=3.0, size=(n, d)) for n in LENGTHS]
    ref = _hmmlearn_gaussian(pi, a, means, scales)
    ref_each = np.array([ref.score(s) for s in seqs])
    ref_total = ref.score(np.concatenate(seqs), lengths=LENGTHS)
    hmm = probseq.GaussianHMM(num_states=k, obs_dim=d)
    with jax.enable_x64(True):
        params = _init_gaussian64(hmm, pi, a, means, scales)
        lp = np.asarray(probseq.log_prob(hmm, params, seqs))
    assert lp.dtype == np.float64
    np.testing.assert_allclose(lp, ref_each, rtol=1e-9)
    np.testing.assert_allclose(lp.sum(), ref_total, rtol=1e-9)


# ------------------------------------------- 5. generic path == fast path == NumPy
def _categorical_case():
    rng = np.random.default_rng(500)
    pi = np.array([0.5, 0.5, 0.0, 0.0])  # structural zeros in pi and A
    a = rng.dirichlet(np.ones(4), size=4)
    a[0, 3] = 0.0
    a[2, 1] = 0.0
    a /= a.sum(axis=1, keepdims=True)
    b = rng.dirichlet(np.ones(5), size=4)
    hmm = probseq.CategoricalHMM(num_states=4, vocab_size=5)
    xs = rng.integers(0, 5, size=60)

    def make():
        return _init_categorical64(hmm, pi, a, b)

    loglik = np.log(b[:, xs].T)
    return hmm, make, xs, pi, a, loglik


def _gaussian_case():
    rng = np.random.default_rng(501)
    pi, a, means, scales = _random_gaussian_hmm(rng, 3, 2, 2.0, (0.5, 1.5))
    xs = rng.normal(scale=2.0, size=(60, 2))
    xs[17] = [45.0, -60.0]  # far in every state's tail: exp(loglik) underflows unshifted
    hmm = probseq.GaussianHMM(num_states=3, obs_dim=2)

    def make():
        return _init_gaussian64(hmm, pi, a, means, scales)

    return hmm, make, xs, pi, a, _gauss_loglik(xs, means, scales)


@pytest.mark.parametrize(
    "case", [_categorical_case, _gaussian_case], ids=["categorical", "gaussian"]
)
def test_generic_path_equals_fast_path_and_numpy_forward(case):
    hmm, make, xs, pi, a, loglik = case()
    ref_total, ref_steps, ref_pred, _ = _forward_np(pi, a, loglik)
    assert np.isfinite(ref_steps).all()
    with jax.enable_x64(True):
        params = make()
        xs = jnp.asarray(xs)  # float64 for the Gaussian case: created with x64 on
        h0 = hmm.initial_state(params)
        generic_lps, generic_after = SequenceModel.sequence_log_probs(hmm, params, h0, xs)
        fast_lps, fast_after = hmm.sequence_log_probs(params, h0, xs)
        filt = hmm_filter(jnp.asarray(pi), jnp.asarray(a), jnp.asarray(loglik))
        res = probseq.score(hmm, params, xs)
        # To NumPy while x64 is on (a JAX float64 array used with NumPy functions
        # outside the context would be dispatched to JAX and truncated to float32).
        generic_lps, generic_after, fast_lps, fast_after, filt, res = jax.tree.map(
            np.asarray, (generic_lps, generic_after, fast_lps, fast_after, filt, res)
        )
    # The two paths of the model agree with each other...
    np.testing.assert_allclose(generic_lps, fast_lps, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(generic_after, fast_after, rtol=1e-12, atol=1e-14)
    # ...and with the float64 NumPy recursion: per-step terms and predictive messages
    # p(z_{t+1} | x_{1:t}) after every step (normalized, structural zeros kept).
    for lps, after in [(generic_lps, generic_after), (fast_lps, fast_after)]:
        np.testing.assert_allclose(lps, ref_steps, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(after, ref_pred[1:], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.sum(after, axis=-1), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(np.asarray(after)[ref_pred[1:] == 0], 0.0)
    np.testing.assert_allclose(float(res.log_prob), ref_total, rtol=1e-12)
    np.testing.assert_allclose(res.final_state, ref_pred[-1], rtol=1e-12, atol=1e-14)
    # The pure kernel exposes the same quantities.
    np.testing.assert_allclose(float(filt.marginal_loglik), ref_total, rtol=1e-12)
    np.testing.assert_allclose(filt.log_normalizers, ref_steps, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(filt.predicted_probs, ref_pred[:-1], rtol=1e-12, atol=1e-14)
    filtered_ref = ref_pred[:-1] * np.exp(loglik - ref_steps[:, None])
    np.testing.assert_allclose(filt.filtered_probs, filtered_ref, rtol=1e-9, atol=1e-14)


# ------------------------------------------------- 6. init / probabilities / checks
def test_categorical_init_probabilities_round_trip_keeps_structural_zeros():
    pi, a, b = _left_to_right_hmm()
    hmm = probseq.CategoricalHMM(num_states=3, vocab_size=3)
    with jax.enable_x64(True):
        params = _init_categorical64(hmm, pi, a, b)
        got = [np.asarray(p) for p in hmm.probabilities(params)]
    for g, want in zip(got, (pi, a, b), strict=True):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(g[want == 0], 0.0)  # exactly zero, not tiny


def test_gaussian_init_probabilities_round_trip():
    rng = np.random.default_rng(600)
    pi = np.array([0.2, 0.8, 0.0])
    a = np.array([[0.0, 1.0, 0.0], [0.3, 0.3, 0.4], [0.5, 0.0, 0.5]])
    means = rng.normal(size=(3, 2))
    scales = rng.uniform(0.1, 3.0, size=(3, 2))
    hmm = probseq.GaussianHMM(num_states=3, obs_dim=2)
    with jax.enable_x64(True):
        params = _init_gaussian64(hmm, pi, a, means, scales)
        got_pi, got_a, (got_means, got_scales) = (
            jax.tree.map(np.asarray, p) for p in hmm.probabilities(params)
        )
    for g, want in [(got_pi, pi), (got_a, a), (got_means, means), (got_scales, scales)]:
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(got_pi[pi == 0], 0.0)
    np.testing.assert_array_equal(got_a[a == 0], 0.0)


def test_init_rejects_rows_that_do_not_sum_to_one():
    hmm = probseq.CategoricalHMM(num_states=3, vocab_size=2)
    bad_a = np.array([[0.5, 0.5, 0.0], [0.2, 0.2, 0.5], [0.0, 0.0, 1.0]])  # row 1: 0.9
    with pytest.raises(ValueError, match=r"transition_matrix row \(?1\b"):
        hmm.init(jax.random.key(0), transition_matrix=bad_a)
    bad_b = np.array([[0.5, 0.5], [1.0, 0.0], [0.7, 0.2]])  # row 2: 0.9
    with pytest.raises(ValueError, match=r"emission_probs row \(?2\b"):
        hmm.init(jax.random.key(0), emission_probs=bad_b)
    with pytest.raises(ValueError, match="initial_probs"):
        hmm.init(jax.random.key(0), initial_probs=np.array([0.5, 0.4, 0.0]))
    with pytest.raises(ValueError, match="transition_matrix"):
        hmm.init(jax.random.key(0), transition_matrix=np.array([[1.2, -0.2, 0.0]] * 3))
    ghmm = probseq.GaussianHMM(num_states=2, obs_dim=1)
    with pytest.raises(ValueError, match=r"transition_matrix row \(?0\b"):
        ghmm.init(jax.random.key(0), transition_matrix=np.array([[0.6, 0.6], [0.5, 0.5]]))


# ------------------------------------------------ 7. long sequence, float32 accuracy
def _sample_categorical_hmm(rng, pi, a, b, t):
    """Sample z_{1:T}, x_{1:T}. The next state for every possible previous state is
    drawn vectorised (inverse CDF of one uniform per step), so the sequential part is a
    pure-Python list lookup (~0.2 us/step)."""
    k = a.shape[0]
    u = rng.random(t)
    cum_a = np.cumsum(a, axis=1)
    cum_a[:, -1] = 1.0
    nxt = np.stack([np.searchsorted(cum_a[i], u, side="right") for i in range(k)], axis=1)
    table = nxt.tolist()
    z = [0] * t
    s = int(rng.choice(k, p=pi))
    z[0] = s
    for i in range(1, t):
        s = table[i][s]
        z[i] = s
    z = np.asarray(z)
    cum_b = np.cumsum(b, axis=1)
    cum_b[:, -1] = 1.0
    x = (rng.random(t)[:, None] >= cum_b[z]).sum(axis=1)
    return z, x


def _tree_reference_log_prob(pi, a, b, x):
    """Float64 log p(x_{1:T}) = log (pi*B[:,x1]) A D_2 A D_3 ... A D_T 1 with D_t =
    diag(B[:, x_t]), multiplying the T-1 matrices A D_t pairwise in a balanced tree
    (vectorised NumPy, ~0.7 s for T = 1e6), each product rescaled by its max entry
    with the log scale carried separately. Independent of JAX and of probseq."""
    k = a.shape[0]
    mats = a[None] * b[:, x[1:]].T[:, None, :]  # (T-1, K, K): A @ diag(B[:, x_t])
    scale = np.zeros(len(mats))
    while len(mats) > 1:
        if len(mats) % 2:
            mats = np.concatenate([mats, np.eye(k)[None]])
            scale = np.append(scale, 0.0)
        prod = mats[0::2] @ mats[1::2]
        s = prod.max(axis=(1, 2))
        mats = prod / s[:, None, None]
        scale = scale[0::2] + scale[1::2] + np.log(s)
    v0 = pi * b[:, x[0]]
    tail = mats[0] @ np.ones(k) if len(mats) else np.ones(k)
    return float(np.log(v0 @ tail) + (scale[0] if len(scale) else 0.0))


# Measured on this problem (K=4, V=6, T=1e6, seed 2024, CPU, jax 0.10.2): probseq float32
# relative error 8.5e-8. dynamax 1.0.3 CategoricalHMM.marginal_log_prob with float32
# parameters: 3.3e-4 (the same dynamax call in float64 agrees with the reference to 1.5e-14).
@pytest.mark.slow
def test_long_sequence_float32_accuracy():
    rng = np.random.default_rng(2024)
    k, v, t = 4, 6, 1_000_000
    pi = rng.dirichlet(np.ones(k))
    a = 0.5 * np.eye(k) + 0.5 * rng.dirichlet(np.ones(k), size=k)
    b = rng.dirichlet(np.ones(v), size=k)
    _, x = _sample_categorical_hmm(rng, pi, a, b, t)
    assert np.bincount(x, minlength=v).min() > 0

    hmm = probseq.CategoricalHMM(num_states=k, vocab_size=v)
    params32 = hmm.init(jax.random.key(0), initial_probs=pi, transition_matrix=a, emission_probs=b)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params32))
    lp32 = probseq.log_prob(hmm, params32, x)
    assert lp32.dtype == jnp.float32

    # The reference is the exact model the float32 parameters define: softmax of the
    # float32 logits evaluated in float64 (so only the computation's error is measured).
    pi64, a64, b64 = (
        _softmax64(p)
        for p in (params32.initial_logits, params32.transition_logits, params32.emission["logits"])
    )
    ref = _tree_reference_log_prob(pi64, a64, b64, x)

    # Cross-check the tree reference against the plain float64 forward loop on a
    # 20,000-step prefix, against hmmlearn (float64, compiled, ~0.3 s) and against
    # probseq in float64 on the whole sequence.
    n = 20_000
    loop_total = _forward_np(pi64, a64, np.log(b64[:, x[:n]].T)).total
    np.testing.assert_allclose(
        _tree_reference_log_prob(pi64, a64, b64, x[:n]), loop_total, rtol=1e-12
    )
    np.testing.assert_allclose(
        _hmmlearn_categorical(pi64, a64, b64).score(x[:, None]), ref, rtol=1e-9
    )
    with jax.enable_x64(True):
        params64 = _init_categorical64(hmm, pi64, a64, b64)
        lp64 = float(probseq.log_prob(hmm, params64, x))
    np.testing.assert_allclose(lp64, ref, rtol=1e-12)

    rel = abs(float(lp32) - ref) / abs(ref)
    assert rel < 1e-6, f"float32 relative error {rel:.3g} over T={t}"
