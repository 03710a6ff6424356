"""HMM state inference: filter, smoother, Viterbi and posterior path sampling.

References: hmmlearn (``predict_proba``, ``decode``), dynamax (``hmm_smoother``),
brute-force enumeration of all K**T state paths, and a float64 NumPy forward
recursion (references.py). Float64 checks run inside ``jax.enable_x64(True)``; results
are converted to NumPy inside that block.

Tolerances (reason in one line each):
* float64 vs hmmlearn / dynamax / NumPy: 1e-8 absolute on probabilities, 1e-9
  relative on log-probabilities -- exact float64 recursions in a different order
  (log space vs scaled), which differ by O(T) ulps.
* float64 vs brute force: 1e-12 -- the same finite sums over K**T paths.
* sampling frequencies: 4 standard errors sqrt(p (1 - p) / N) per path.
* float32 vs float64 transition counts over 100,000 steps: 1e-6 relative -- the
  compensated sum measures ~1e-7; a plain float32 running sum is ~3e-6 off.
* chunked vs sequential smoother: float64 1e-10 relative, float32 1e-5 relative -- the
  fix-ups stop when messages agree to 8 ulps (relative, per entry), which bounds the
  difference (Hilbert-metric contraction); the rest is rounding order.
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
from probseq.families import hmm as hmm_module
from probseq.hmm_inference import (
    ChunkLayout,
    chunked_statistics,
    default_chunk_size,
    hmm_filter,
    hmm_masked_filter,
    hmm_posterior_sample,
    hmm_smoother,
    hmm_smoother_batch,
    hmm_smoother_chunked,
    hmm_viterbi,
)

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")


# ------------------------------------------------------------------------ helpers
def _joint_log_prob(pi, a, loglik, z):
    """log p(x_{1:T}, z_{1:T}) of one path."""
    with np.errstate(divide="ignore"):
        return (
            np.log(pi[z[0]]) + np.log(a[z[:-1], z[1:]]).sum() + loglik[np.arange(len(z)), z].sum()
        )


def _brute_force(pi, a, loglik):
    """All K**T paths and their posterior probabilities; expected transition counts,
    smoothed marginals and log p(x) from them."""
    k, t = a.shape[0], loglik.shape[0]
    paths = np.array(list(itertools.product(range(k), repeat=t)))
    log_w = np.array([_joint_log_prob(pi, a, loglik, z) for z in paths])
    m = log_w[np.isfinite(log_w)].max()
    w = np.exp(log_w - m)
    post = w / w.sum()
    counts = np.zeros((k, k))
    np.add.at(counts, (paths[:, :-1].ravel(), paths[:, 1:].ravel()), np.repeat(post, t - 1))
    smoothed = np.stack([np.bincount(paths[:, s], post, minlength=k) for s in range(t)])
    return paths, post, counts, smoothed, m + np.log(w.sum())


def _to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


LENGTHS = [1, 9, 40]


def _categorical_case(rng):
    k, v = 3, 4
    pi, a, b = _random_hmm(rng, k, v)
    seqs = _ragged_tokens(rng, v, LENGTHS)
    hmm = probseq.CategoricalHMM(num_states=k, vocab_size=v)

    def make():
        return _init_categorical64(hmm, pi, a, b)

    lls = [np.log(b[:, s].T) for s in seqs]
    return hmm, make, seqs, pi, a, lls, _hmmlearn_categorical(pi, a, b), [s[:, None] for s in seqs]


def _gaussian_case(rng):
    k, d = 3, 2
    pi, a, means, scales = _random_gaussian_hmm(rng, k, d, 2.0, (0.5, 1.5))
    seqs = [rng.normal(scale=2.0, size=(n, d)) for n in LENGTHS]
    seqs[2][17] = [45.0, -60.0]  # far in every state's tail: exp(loglik) underflows
    hmm = probseq.GaussianHMM(num_states=k, obs_dim=d)

    def make():
        return _init_gaussian64(hmm, pi, a, means, scales)

    lls = [_gauss_loglik(s, means, scales) for s in seqs]
    return hmm, make, seqs, pi, a, lls, _hmmlearn_gaussian(pi, a, means, scales), seqs


@pytest.fixture(scope="module")
def dynamax_inference():
    """dynamax's HMM inference module. Importing dynamax runs
    ``jax.config.update('jax_default_matmul_precision', 'float32')``; the previous
    value is restored so the rest of the session is unaffected."""
    return _import_dynamax("dynamax.hidden_markov_model.inference")


# ------------------------------------------------ 1. model methods vs references
@pytest.mark.parametrize("case", [_categorical_case, _gaussian_case], ids=["cat", "gauss"])
def test_filter_smoother_viterbi_match_references(case):
    hmm, make, seqs, pi, a, lls, ref, ref_seqs = case(np.random.default_rng(1))
    with jax.enable_x64(True):
        params = make()
        filtered, smoothed, paths = _to_numpy(
            (
                hmm.filter(params, seqs),
                hmm.smoother(params, seqs),
                hmm.most_likely_states(params, seqs),
            )
        )
        # The same calls one sequence at a time (no batch axis, no padding).
        each = [
            _to_numpy(
                (hmm.filter(params, s), hmm.smoother(params, s), hmm.most_likely_states(params, s))
            )
            for s in seqs
        ]
    t_max = max(LENGTHS)
    k = a.shape[0]
    assert filtered.shape == smoothed.shape == (len(seqs), t_max, k)
    assert paths.shape == (len(seqs), t_max) and paths.dtype == np.int32
    for i, (s, ll, rs) in enumerate(zip(seqs, lls, ref_seqs, strict=True)):
        n = len(s)
        np.testing.assert_allclose(smoothed[i, :n], ref.predict_proba(rs), atol=1e-8)
        np.testing.assert_allclose(filtered[i, :n], _forward_np(pi, a, ll).filtered, atol=1e-8)
        ref_logp, ref_path = ref.decode(rs, algorithm="viterbi")
        np.testing.assert_array_equal(paths[i, :n], ref_path)
        np.testing.assert_allclose(_joint_log_prob(pi, a, ll, paths[i, :n]), ref_logp, rtol=1e-9)
        # Padding: zero probabilities and state -1.
        assert np.all(filtered[i, n:] == 0) and np.all(smoothed[i, n:] == 0)
        assert np.all(paths[i, n:] == -1)
        # Ragged batch == one sequence at a time.
        f1, s1, p1 = each[i]
        assert f1.shape == (n, k) and p1.shape == (n,)
        np.testing.assert_allclose(filtered[i, :n], f1, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(smoothed[i, :n], s1, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(paths[i, :n], p1)


def test_filter_kernel_is_hmm_filter():
    """hmm_filter's filtered_probs are the causal state probabilities; the masked
    variant agrees on valid steps and zeroes the rest."""
    rng = np.random.default_rng(2)
    pi, a, b = _random_hmm(rng, 4, 5)
    x = rng.integers(0, 5, size=12)
    ll = np.log(b[:, x].T)
    mask = np.arange(15) < 12
    ll_pad = np.concatenate([ll, rng.normal(size=(3, 4))])
    with jax.enable_x64(True):
        full = _to_numpy(hmm_filter(jnp.asarray(pi), jnp.asarray(a), jnp.asarray(ll)))
        masked = _to_numpy(hmm_masked_filter(pi, a, jnp.asarray(ll_pad), jnp.asarray(mask)))
    np.testing.assert_allclose(full.filtered_probs, _forward_np(pi, a, ll).filtered, atol=1e-12)
    np.testing.assert_allclose(masked.filtered_probs[:12], full.filtered_probs, rtol=1e-14)
    np.testing.assert_allclose(masked.marginal_loglik, full.marginal_loglik, rtol=1e-14)
    assert np.all(masked.filtered_probs[12:] == 0) and np.all(masked.log_normalizers[12:] == 0)


# ------------------------------------------------------------ 2. brute force
BRUTE_CASES = {
    "K2T5": lambda rng: (*_random_hmm(rng, 2, 3)[:2], rng.normal(size=(5, 2))),
    "K3T4": lambda rng: (*_random_hmm(rng, 3, 3)[:2], rng.normal(size=(4, 3))),
    "K3T5-zeros": lambda rng: (*_left_to_right_hmm()[:2], _log_b_of([0, 1, 1, 2, 2])),
}


def _log_b_of(x):
    with np.errstate(divide="ignore"):
        return np.log(_left_to_right_hmm()[2][:, x].T)


@pytest.mark.parametrize("case", list(BRUTE_CASES))
def test_smoother_and_viterbi_match_brute_force(case, dynamax_inference):
    pi, a, ll = BRUTE_CASES[case](np.random.default_rng(3))
    paths, post, counts, smoothed, log_z = _brute_force(pi, a, ll)
    with jax.enable_x64(True):
        args = (jnp.asarray(pi), jnp.asarray(a), jnp.asarray(ll))
        res = _to_numpy(hmm_smoother(*args))
        path = np.asarray(hmm_viterbi(*args))
        dyn = dynamax_inference.hmm_smoother(*args)
        dyn_counts, dyn_smoothed = np.asarray(dyn.trans_probs), np.asarray(dyn.smoothed_probs)
    np.testing.assert_allclose(res.marginal_loglik, log_z, rtol=1e-12)
    np.testing.assert_allclose(res.smoothed_probs, smoothed, atol=1e-12)
    np.testing.assert_allclose(res.expected_transitions, counts, atol=1e-12)
    np.testing.assert_allclose(res.expected_transitions.sum(), len(ll) - 1, rtol=1e-12)
    np.testing.assert_array_equal(path, paths[np.argmax(post)])
    # dynamax normalizes with an eps of 1e-15, hence a looser (still tight) bound.
    np.testing.assert_allclose(res.expected_transitions, dyn_counts, atol=1e-8)
    np.testing.assert_allclose(res.smoothed_probs, dyn_smoothed, atol=1e-8)
    if case.endswith("zeros"):
        assert np.all(res.expected_transitions[a == 0] == 0)


# ------------------------------------------------------------------ 3. masks
def test_padding_changes_nothing_on_valid_steps():
    rng = np.random.default_rng(4)
    pi, a, _ = _random_hmm(rng, 3, 2)
    ll = rng.normal(scale=3.0, size=(10, 3))
    # Padding carries garbage, including NaN and -inf: none of it may leak.
    garbage = np.array([[np.nan, 1e30, -np.inf]] * 6)
    ll_pad = np.concatenate([ll, garbage])
    mask = np.arange(16) < 10
    key = jax.random.key(7)
    with jax.enable_x64(True):
        alone = _to_numpy(hmm_smoother(pi, a, jnp.asarray(ll)))
        padded = _to_numpy(hmm_smoother(pi, a, jnp.asarray(ll_pad), jnp.asarray(mask)))
        vit = [np.asarray(hmm_viterbi(pi, a, jnp.asarray(ll)))]
        vit.append(np.asarray(hmm_viterbi(pi, a, jnp.asarray(ll_pad), jnp.asarray(mask))))
        draw = [np.asarray(hmm_posterior_sample(key, pi, a, jnp.asarray(ll)))]
        draw.append(np.asarray(hmm_posterior_sample(key, pi, a, jnp.asarray(ll_pad), mask)))
    assert not any(np.isnan(z).any() for z in jax.tree.leaves(padded))
    np.testing.assert_allclose(padded.marginal_loglik, alone.marginal_loglik, rtol=1e-14)
    for name in ("filtered_probs", "predicted_probs", "smoothed_probs"):
        np.testing.assert_allclose(getattr(padded, name)[:10], getattr(alone, name), rtol=1e-14)
        assert np.all(getattr(padded, name)[10:] == 0), name
    # No transition into or out of a padded step is counted.
    np.testing.assert_allclose(
        padded.expected_transitions, alone.expected_transitions, rtol=1e-14, atol=1e-16
    )
    np.testing.assert_allclose(padded.expected_transitions.sum(), 9.0, rtol=1e-14)
    np.testing.assert_array_equal(vit[1][:10], vit[0])
    np.testing.assert_array_equal(draw[1][:10], draw[0])  # fold_in(key, t) per step
    assert np.all(vit[1][10:] == -1) and np.all(draw[1][10:] == -1)


def test_impossible_sequence_gives_minus_inf_not_nan():
    pi, a, b = _left_to_right_hmm()
    with np.errstate(divide="ignore"):
        # 0 then 2 force states 0, 1; 0 then forces state 2, which cannot emit 1.
        ll = np.log(b[:, [0, 2, 0, 1]].T)
    res = _to_numpy(hmm_smoother(pi, a, jnp.asarray(ll)))
    assert res.marginal_loglik == -np.inf
    assert np.isfinite(res.filtered_probs[:3]).all() and np.all(res.filtered_probs[3] == 0)
    for leaf in jax.tree.leaves(res):
        assert not np.isnan(leaf).any()
    assert not np.isnan(np.asarray(hmm_viterbi(pi, a, jnp.asarray(ll)))).any()


# ----------------------------------------------------- 4. posterior sampling
def _path_frequencies(draws, paths):
    k = paths.max() + 1
    codes = draws @ (k ** np.arange(draws.shape[1])[::-1])
    return np.bincount(codes, minlength=len(paths)) / len(draws)


def test_posterior_samples_match_brute_force_frequencies():
    rng = np.random.default_rng(5)
    pi, a, _ = _random_hmm(rng, 2, 2)
    ll = rng.normal(size=(4, 2))
    paths, post, *_ = _brute_force(pi, a, ll)
    n = 20_000
    keys = jax.random.split(jax.random.key(11), n)
    sampler = jax.jit(jax.vmap(hmm_posterior_sample, in_axes=(0, None, None, None)))
    with jax.enable_x64(True):
        draws = np.asarray(sampler(keys, pi, a, jnp.asarray(ll)))
    freq = _path_frequencies(draws, paths)  # paths are in itertools.product order
    se = np.sqrt(post * (1 - post) / n)
    assert np.all(np.abs(freq - post) <= 4 * se), (freq, post)


def test_sample_states_structural_zeros_never_drawn():
    pi, a, b = _left_to_right_hmm()
    x = np.array([0, 1, 1, 2])
    ll = _log_b_of(x)
    paths, post, *_ = _brute_force(pi, a, ll)
    assert (post == 0).sum() > 0
    hmm = probseq.CategoricalHMM(num_states=3, vocab_size=3)
    n = 20_000
    with jax.enable_x64(True):
        params = _init_categorical64(hmm, pi, a, b)
        draws = np.asarray(hmm.sample_states(params, jax.random.key(3), x, num_samples=n))
    assert draws.shape == (n, 4) and draws.dtype == np.int32
    freq = _path_frequencies(draws, paths)
    assert np.all(freq[post == 0] == 0)
    se = np.sqrt(post * (1 - post) / n)
    assert np.all(np.abs(freq - post) <= 4 * se), (freq, post)


def test_sample_states_shapes_padding_and_ragged():
    rng = np.random.default_rng(6)
    pi, a, b = _random_hmm(rng, 3, 4)
    hmm = probseq.CategoricalHMM(num_states=3, vocab_size=4)
    params = hmm.init(jax.random.key(0), initial_probs=pi, transition_matrix=a, emission_probs=b)
    seqs = _ragged_tokens(rng, 4, (3, 6))
    key = jax.random.key(9)
    z = np.asarray(hmm.sample_states(params, key, seqs, num_samples=5))
    assert z.shape == (5, 2, 6)
    assert np.all(z[:, 0, 3:] == -1) and np.all((z[:, 0, :3] >= 0) & (z[:, 0, :3] < 3))
    # More padding, same draws (per-step and per-sequence keys come from fold_in).
    padded = np.zeros((2, 9), int)
    padded[0, :3], padded[1, :6] = seqs
    mask = np.arange(9) < np.array([[3], [6]])
    z_pad = np.asarray(hmm.sample_states(params, key, padded, mask, num_samples=5))
    np.testing.assert_array_equal(z_pad[..., :6], z)
    assert np.all(z_pad[..., 6:] == -1)
    assert hmm.sample_states(params, key, seqs[0]).shape == (3,)
    # Compiled once per (model, shapes): a second call with new values reuses it.
    hmm.smoother(params, seqs)
    size = hmm_module._smoother_kernel._cache_size()
    hmm.smoother(params, [s[::-1] for s in seqs])
    assert hmm_module._smoother_kernel._cache_size() == size
    assert hmm.sample_states(params, key, np.stack([seqs[1]] * 2)).shape == (2, 6)


# ---------------------------------------------------------- 5. Viterbi zeros
def test_viterbi_left_to_right_gives_a_valid_path():
    pi, a, b = _left_to_right_hmm()
    hmm = probseq.CategoricalHMM(num_states=3, vocab_size=3)
    params = hmm.init(jax.random.key(0), initial_probs=pi, transition_matrix=a, emission_probs=b)
    x = np.array([0, 0, 1, 1, 2, 1, 2, 2, 0, 2])  # a possible sequence (ends in state 2)
    path = np.asarray(hmm.most_likely_states(params, x))
    assert pi[path[0]] > 0
    assert np.all(a[path[:-1], path[1:]] > 0) and np.all(b[path, x] > 0)
    assert np.all(np.diff(path) >= 0)
    assert np.isfinite(_joint_log_prob(pi, a, _log_b_of(x), path))
    logp, ref_path = _hmmlearn_categorical(pi, a, b).decode(x[:, None], algorithm="viterbi")
    np.testing.assert_array_equal(path, ref_path)


# ------------------------------------------------------- 6. float32, long
def test_float32_long_sequence_counts_and_path():
    rng = np.random.default_rng(8)
    pi, a, b = _random_hmm(rng, 3, 4)
    a = 0.7 * np.eye(3) + 0.3 * a
    x = rng.integers(0, 4, size=100_000)
    ll = np.log(b[:, x].T)
    f32 = [np.float32(z) for z in (pi, a, ll)]
    res32 = _to_numpy(hmm_smoother(*f32))
    path32 = np.asarray(hmm_viterbi(*f32))
    with jax.enable_x64(True):
        res64 = _to_numpy(hmm_smoother(pi, a, jnp.asarray(ll)))
        path64 = np.asarray(hmm_viterbi(pi, a, jnp.asarray(ll)))
    assert res32.expected_transitions.dtype == np.float32
    np.testing.assert_allclose(res32.expected_transitions, res64.expected_transitions, rtol=1e-6)
    # Scores are re-centred every step, so float32 keeps the resolution between states.
    np.testing.assert_array_equal(path32, path64)
    np.testing.assert_allclose(res32.marginal_loglik, res64.marginal_loglik, rtol=1e-6)


# ------------------------------------------------------------- 7. validation
def test_bad_input_raises_value_error():
    hmm = probseq.CategoricalHMM(num_states=2, vocab_size=3)
    params = hmm.init(jax.random.key(0))
    key = jax.random.key(0)
    for method in (hmm.filter, hmm.smoother, hmm.most_likely_states):
        with pytest.raises(ValueError, match="outside"):
            method(params, np.array([0, 1, 3]))
        with pytest.raises(ValueError, match="after a masked step"):
            method(params, np.array([[0, 1, 2]]), np.array([[True, False, True]]))
        with pytest.raises(ValueError, match="shape"):
            method(params, np.zeros((2, 3, 4), int))
    with pytest.raises(ValueError, match="outside"):
        hmm.sample_states(params, key, [np.array([0, 1]), np.array([-1])])
    with pytest.raises(ValueError, match="num_samples"):
        hmm.sample_states(params, key, np.array([0, 1]), num_samples=0)
    with pytest.raises(ValueError, match="PRNG key"):
        hmm.sample_states(params, 0, np.array([0, 1]))
    g = probseq.GaussianHMM(num_states=2, obs_dim=2)
    with pytest.raises(ValueError, match="non-finite"):
        g.smoother(g.init(key), np.array([[0.0, 1.0], [np.nan, 0.0]]))
    with pytest.raises(ValueError, match="params"):
        g.filter(params, np.zeros((3, 2)))


# ------------------------------------------------- 8. chunked smoother == sequential
_chunked = jax.jit(hmm_smoother_chunked, static_argnames="chunk_size")
_sequential = jax.jit(jax.vmap(hmm_smoother, in_axes=(None, None, 0, 0)))


def _sequential_batch(pi, a, ll, mask):
    return _to_numpy(_sequential(pi, a, ll, mask))


def _assert_posteriors_close(got, ref, rtol, atol):
    for name, g, r in zip(ref._fields, got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=name)


def _chunk_case(rng, k, b, t, sticky=0.0, ragged=True):
    pi, a, _ = _random_hmm(rng, k, 2)
    a = (1 - sticky) * a + sticky * np.eye(k)
    ll = rng.normal(scale=2.0, size=(b, t, k))
    lengths = rng.integers(1, t + 1, size=b) if ragged else np.full(b, t)
    lengths[0] = t
    mask = np.arange(t)[None] < lengths[:, None]
    ll[~mask] = np.nan  # padding holds garbage: none of it may leak
    return pi, a, ll, mask


CHUNK_CASES = {
    # (K, B, T, chunk size, stickiness): T not a multiple of L, T < L, K=1, L=1.
    "K4-ragged-L7": (4, 5, 100, 7, 0.0),
    "K3-T<L": (3, 3, 20, 64, 0.0),
    "K1": (1, 3, 50, 8, 0.0),
    "K5-L1": (5, 2, 30, 1, 0.0),
    "K8-T1000-L37": (8, 3, 1000, 37, 0.0),
    "K6-default-L": (6, 4, 3000, None, 0.0),
    # Nearly reducible: the filter forgets its start over ~1000s of steps, so the
    # fix-ups run whole chunks and many rounds; still the same answer.
    "K3-sticky": (3, 4, 1200, 16, 0.9995),
}


@pytest.mark.parametrize("case", list(CHUNK_CASES))
def test_chunked_smoother_equals_sequential_float64(case):
    k, b, t, chunk, sticky = CHUNK_CASES[case]
    pi, a, ll, mask = _chunk_case(np.random.default_rng(len(case)), k, b, t, sticky)
    with jax.enable_x64(True):
        args = (jnp.asarray(pi), jnp.asarray(a), jnp.asarray(ll), jnp.asarray(mask))
        ref = _sequential_batch(*args)
        got = _to_numpy(_chunked(*args, chunk_size=chunk))
        batch = _to_numpy(jax.jit(hmm_smoother_batch)(*args))
    assert got.smoothed_probs.shape == (b, t, k) and got.expected_transitions.shape == (b, k, k)
    assert not any(np.isnan(z).any() for z in got)
    _assert_posteriors_close(got, ref, rtol=1e-10, atol=1e-12)
    _assert_posteriors_close(batch, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.expected_transitions.sum((1, 2)), mask.sum(1) - 1, rtol=1e-10)
    assert np.all(got.smoothed_probs[~mask] == 0)


@pytest.mark.parametrize("case", list(CHUNK_CASES))
def test_chunked_statistics_equal_the_sequential_sums(case):
    """EM's E-step in the chunks' own (time-major) layout: log p per sequence, initial
    and transition counts summed over sequences, and the posteriors in row order
    (``layout.rows_of``) equal the sequential smoother's (float64, 1e-10), with
    garbage (NaN) in the padding's likelihoods."""
    from probseq.hmm_inference import _shifted_likelihoods

    k, b, t, chunk, sticky = CHUNK_CASES[case]
    pi, a, ll, mask = _chunk_case(np.random.default_rng(len(case) + 7), k, b, t, sticky)
    with jax.enable_x64(True):
        args = (jnp.asarray(pi), jnp.asarray(a), jnp.asarray(ll), jnp.asarray(mask))
        ref = _sequential_batch(*args)
        lik, shift = _shifted_likelihoods(jnp.asarray(ll), args[0], args[1])
        layout = ChunkLayout.of(t, b, k, chunk)
        assert layout.num_chunks == -(-t // layout.length)
        loglik, n_init, n_trans, gamma = jax.jit(chunked_statistics, static_argnums=5)(
            args[0],
            args[1],
            layout.rows_of(lik, jnp.nan),
            layout.rows_of(shift, jnp.nan),
            layout.rows_of(args[3], False),
            layout,
        )
        rows = np.asarray(layout.rows_of(jnp.asarray(ref.smoothed_probs), 0.0)).reshape(-1, k)
        starts = np.asarray(layout.starts())
    np.testing.assert_allclose(loglik, ref.marginal_loglik, rtol=1e-10)
    np.testing.assert_allclose(n_init, ref.smoothed_probs[:, 0].sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(n_trans, ref.expected_transitions.sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gamma, rows, rtol=1e-10, atol=1e-12)
    # each sequence's first step is where ``starts`` says, in the flattened rows
    np.testing.assert_allclose(np.asarray(gamma)[starts], ref.smoothed_probs[:, 0], rtol=1e-10)


def test_chunked_smoother_float32_and_single_sequence():
    rng = np.random.default_rng(12)
    pi, a, ll, mask = _chunk_case(rng, 8, 3, 5000, ragged=True)
    f32 = [np.float32(z) for z in (pi, a)] + [np.float32(ll), mask]
    with jax.enable_x64(True):
        ref = _sequential_batch(*(jnp.asarray(z) for z in (pi, a, ll, mask)))
    got = _to_numpy(_chunked(*f32, chunk_size=100))
    assert got.smoothed_probs.dtype == np.float32
    np.testing.assert_allclose(got.marginal_loglik, ref.marginal_loglik, rtol=1e-5)
    np.testing.assert_allclose(got.smoothed_probs, ref.smoothed_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        got.expected_transitions, ref.expected_transitions, rtol=1e-5, atol=1e-4
    )
    # No batch axis: one (T, K) sequence, as hmm_smoother takes.
    one = _to_numpy(_chunked(f32[0], f32[1], f32[2][0], chunk_size=64))
    np.testing.assert_allclose(one.marginal_loglik, ref.marginal_loglik[0], rtol=1e-5)
    assert one.smoothed_probs.shape == (5000, 8)


def test_chunked_smoother_brute_force_and_impossible_sequence():
    """Structural zeros (left-to-right chain) and a sequence that becomes impossible in
    its second chunk: -inf, zeros afterwards, never NaN, as the sequential kernel."""
    pi, a, _ = _left_to_right_hmm()
    x = [0, 1, 1, 2, 2]
    ll = _log_b_of(x)
    _, _, counts, smoothed, log_z = _brute_force(pi, a, ll)
    with jax.enable_x64(True):
        res = _to_numpy(_chunked(pi, a, jnp.asarray(ll), chunk_size=2))
        bad = _log_b_of([0, 2, 0, 1, 0, 0])
        got = _to_numpy(_chunked(pi, a, jnp.asarray(bad), chunk_size=2))
        ref = _to_numpy(hmm_smoother(pi, a, jnp.asarray(bad)))
    np.testing.assert_allclose(res.marginal_loglik, log_z, rtol=1e-12)
    np.testing.assert_allclose(res.smoothed_probs, smoothed, atol=1e-12)
    np.testing.assert_allclose(res.expected_transitions, counts, atol=1e-12)
    assert got.marginal_loglik == -np.inf
    for leaf in got:
        assert not np.isnan(leaf).any()
    _assert_posteriors_close(got, ref, rtol=1e-12, atol=1e-14)


def test_default_chunk_size_bounds():
    assert default_chunk_size(1000, 10, 4) == 73
    assert default_chunk_size(1000, 64, 32) == 250  # at most T / 4
    assert default_chunk_size(100, 1, 2) == 32  # at least 32
    assert default_chunk_size(1_000_000, 1, 8) == 1461


def test_model_smoother_uses_chunks_for_long_sequences():
    """HMM.smoother picks the chunked kernel for T >= 128, K <= 64: same values."""
    rng = np.random.default_rng(13)
    pi, a, b = _random_hmm(rng, 3, 4)
    seqs = _ragged_tokens(rng, 4, (300, 129, 1))
    hmm = probseq.CategoricalHMM(num_states=3, vocab_size=4)
    with jax.enable_x64(True):
        params = _init_categorical64(hmm, pi, a, b)
        smoothed = np.asarray(hmm.smoother(params, seqs))
    ref = _hmmlearn_categorical(pi, a, b)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(smoothed[i, : len(s)], ref.predict_proba(s[:, None]), atol=1e-8)
        assert np.all(smoothed[i, len(s) :] == 0)
