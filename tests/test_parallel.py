"""Parallel (associative-scan) and sequential paths of the LRU and MinGRU agree.

Tolerance: 1e-5 relative in float32. Both paths compute the same linear recurrence;
they differ only in the order of float32 products and sums (log2(T) levels of the
tree vs T sequential steps), a few ulps per step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq
from probseq.scan import linear_recurrence, pairwise_sum, resolve_scan_mode

FAMILIES = [probseq.MinGRU, probseq.LRU]


def _pair(family, **kw):
    return family(scan="sequential", **kw), family(scan="parallel", **kw)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("obs", ["tokens", "real"])
def test_parallel_equals_sequential(family, obs):
    kw = dict(vocab_size=11) if obs == "tokens" else dict(obs_dim=3)
    seq, par = _pair(family, hidden_size=16, num_layers=2, **kw)
    params = seq.init(jax.random.key(0))
    key = jax.random.key(1)
    if obs == "tokens":
        x = jax.random.randint(key, (4, 200), 0, 11)
    else:
        x = jax.random.normal(key, (4, 200, 3))
    mask = np.arange(200)[None] < np.array([200, 150, 37, 1])[:, None]
    a = probseq.score(seq, params, x, mask)
    b = probseq.score(par, params, x, mask)
    np.testing.assert_allclose(b.step_log_probs, a.step_log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.log_prob, a.log_prob, rtol=1e-5)
    for fa, fb in zip(jax.tree.leaves(a.final_state), jax.tree.leaves(b.final_state), strict=True):
        np.testing.assert_allclose(fb, fa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_parallel_continues_from_nonzero_state(family):
    """The state after a prefix is far from zero; both paths must start from it."""
    seq, par = _pair(family, vocab_size=7, hidden_size=12, num_layers=2)
    params = seq.init(jax.random.key(3))
    x = jax.random.randint(jax.random.key(4), (3, 120), 0, 7)
    h = probseq.score(seq, params, x[:, :60]).final_state
    carries = jax.tree.leaves(h.carries)
    assert min(float(jnp.abs(c).max()) for c in carries) > 0.1  # genuinely non-zero
    a = probseq.score(seq, params, x[:, 60:], initial_state=h)
    b = probseq.score(par, params, x[:, 60:], initial_state=h)
    whole = probseq.score(par, params, x)
    np.testing.assert_allclose(b.step_log_probs, a.step_log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.step_log_probs, whole.step_log_probs[:, 60:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_linear_recurrence_parallel_matches_loop(dtype):
    rng = np.random.default_rng(0)
    t, n = 257, 5
    a = (
        rng.uniform(0.5, 1.0, (t, n))
        * (np.exp(1j * rng.uniform(0, 6, (t, n))) if dtype == jnp.complex64 else 1)
    ).astype(dtype)
    b = (
        rng.normal(size=(t, n)) + (1j * rng.normal(size=(t, n)) if dtype == jnp.complex64 else 0)
    ).astype(dtype)
    h0 = (rng.normal(size=n) * 3).astype(dtype)
    ref = np.zeros((t, n), np.complex128)
    h = h0.astype(np.complex128)
    for i in range(t):
        h = a[i] * h + b[i]
        ref[i] = h
    for parallel in (False, True):
        out = linear_recurrence(jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0), parallel=parallel)
        expected = ref if dtype == jnp.complex64 else ref.real
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)


def test_pairwise_sum_is_accurate_in_float32():
    rng = np.random.default_rng(0)
    x = -rng.uniform(0.5, 2.5, 1_000_003)
    exact = np.sum(x.astype(np.float64))
    got = float(pairwise_sum(jnp.asarray(x, jnp.float32)))
    exact32 = float(np.sum(x.astype(np.float32).astype(np.float64)))
    assert abs(got - exact32) / abs(exact) < 1e-7
    assert float(pairwise_sum(jnp.zeros((0,)))) == 0.0


def test_scan_mode_resolution():
    assert resolve_scan_mode("parallel") == "parallel"
    assert resolve_scan_mode("sequential") == "sequential"
    expected = "sequential" if jax.default_backend() == "cpu" else "parallel"
    assert resolve_scan_mode("auto") == expected
    with pytest.raises(ValueError, match="scan must be one of"):
        probseq.LRU(vocab_size=3, scan="fast")
