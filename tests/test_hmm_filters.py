"""The HMM's three filter paths (sequential, time-chunked, parallel associative scan)
and the "auto" choice between them.

References: a float64 NumPy forward recursion (references.forward_np) and the
sequential path itself. Tolerances:
* paths vs each other in float32: 1e-5 relative on totals and gradients (the issue's
  bar); per-step terms 1e-5 absolute -- the chunked fix-ups stop when messages agree to
  8 ulps per entry, the associative scan rounds in a different order (log2 T levels).
* float32 paths vs the float64 recursion: 1e-5 relative on totals.
* memory estimate vs compiled.memory_analysis(): the estimate must cover the
  measured temporaries and be within 2x of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import forward_np, left_to_right_hmm, random_hmm

import probseq
from probseq import auto
from probseq.fit.em import expected_statistics
from probseq.hmm_inference import FILTER_METHODS, hmm_filter_batch, hmm_filter_parallel

PATHS = ("chunked", "parallel")


def _problem(rng, k, b, t, ragged=True):
    pi, a, _ = random_hmm(rng, k, 2)
    ll = np.log(rng.dirichlet(np.ones(k), size=(b, t)))
    lengths = rng.integers(1, t + 1, size=b) if ragged else np.full(b, t)
    lengths[0] = t
    mask = np.arange(t)[None] < lengths[:, None]
    return pi, a, ll, mask


def _run(method, pi, a, ll, mask, **kw):
    f32 = lambda z: jnp.asarray(z, jnp.float32)  # noqa: E731
    return hmm_filter_batch(f32(pi), f32(a), f32(ll), jnp.asarray(mask), method=method, **kw)


@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("k,b,t", [(3, 2, 1), (4, 3, 7), (8, 3, 1009), (5, 2, 257)])
def test_paths_equal_sequential_values(method, k, b, t):
    rng = np.random.default_rng(k * 1000 + t)
    pi, a, ll, mask = _problem(rng, k, b, t)
    ref = _run("sequential", pi, a, ll, mask)
    got = _run(method, pi, a, ll, mask, chunk_size=16 if method == "chunked" else None)
    np.testing.assert_allclose(got.marginal_loglik, ref.marginal_loglik, rtol=1e-5)
    np.testing.assert_allclose(got.log_normalizers, ref.log_normalizers, atol=1e-5)
    np.testing.assert_allclose(got.filtered_probs, ref.filtered_probs, atol=1e-5)
    np.testing.assert_allclose(got.predicted_probs, ref.predicted_probs, atol=1e-5)
    # padded steps are exactly zero
    assert not np.any(np.asarray(got.log_normalizers)[~mask])
    assert not np.any(np.asarray(got.filtered_probs)[~mask])
    # and the float64 reference, sequence by sequence
    for i in range(b):
        n = int(mask[i].sum())
        want = forward_np(pi, a, ll[i, :n]).total
        np.testing.assert_allclose(float(got.marginal_loglik[i]), want, rtol=1e-5)


@pytest.mark.parametrize("method", PATHS)
@pytest.mark.parametrize("t", [1, 7, 1009])
def test_paths_equal_sequential_gradients(method, t):
    rng = np.random.default_rng(t)
    pi, a, ll, mask = _problem(rng, 4, 3, t)

    def total(m):
        def f(pi_, a_, ll_):
            res = hmm_filter_batch(pi_, a_, ll_, jnp.asarray(mask), method=m)
            return jnp.sum(res.marginal_loglik) + 0.1 * jnp.sum(res.filtered_probs[..., 0])

        return jax.grad(f, argnums=(0, 1, 2))

    args = [jnp.asarray(z, jnp.float32) for z in (pi, a, ll)]
    ref = total("sequential")(*args)
    got = total(method)(*args)
    for g, r in zip(got, ref, strict=True):
        scale = max(float(jnp.max(jnp.abs(r))), 1e-30)
        np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(r) / scale, atol=1e-5)


@pytest.mark.parametrize("method", PATHS)
def test_long_sequence_against_float64(method):
    """T = 1e5, float32: every path within 1e-6 relative of the float64 recursion; the
    gradient with respect to the log-likelihoods within 1e-5 of the sequential path's
    over the first 2e4 steps (its rounding does not grow with T: each entry is a
    posterior marginal; the 1e5-step gradient costs most of this test's time)."""
    rng = np.random.default_rng(5)
    pi, a, ll, mask = _problem(rng, 3, 1, 100_000, ragged=False)
    want = forward_np(pi, a, ll[0])
    got = _run(method, pi, a, ll, mask)
    assert abs(float(got.marginal_loglik[0]) - want.total) <= 1e-6 * abs(want.total)
    np.testing.assert_allclose(got.log_normalizers[0], want.steps, atol=2e-5)

    def f(m):
        return jax.grad(lambda z: jnp.sum(hmm_filter_batch(pi, a, z, method=m).marginal_loglik))(
            jnp.asarray(ll[:, :20_000], jnp.float32)
        )

    np.testing.assert_allclose(f(method), f("sequential"), atol=1e-5)


@pytest.mark.parametrize("method", FILTER_METHODS)
def test_impossible_sequence_gives_minus_inf_never_nan(method):
    pi, a, b = left_to_right_hmm()
    x = np.array([[0, 2, 0, 1]])  # 2 then 0: state 2 cannot emit 0 after leaving 0
    ll = np.log(np.where(b[:, x[0]].T > 0, b[:, x[0]].T, 1e-300))
    ll = np.where(b[:, x[0]].T > 0, ll, -np.inf)[None]
    res = _run(method, pi, a, ll, np.ones((1, 4), bool))
    assert float(res.marginal_loglik[0]) == -np.inf
    assert not np.isnan(np.asarray(res.filtered_probs)).any()


def test_parallel_in_groups_equals_all_at_once():
    """group_size bounds the parallel path's memory; B not divisible by it."""
    rng = np.random.default_rng(1)
    pi, a, ll, mask = _problem(rng, 4, 7, 50)
    whole = _run("parallel", pi, a, ll, mask)
    grouped = _run("parallel", pi, a, ll, mask, group_size=3)
    np.testing.assert_allclose(grouped.log_normalizers, whole.log_normalizers, atol=1e-6)
    one = hmm_filter_parallel(pi, a, ll[0])
    np.testing.assert_allclose(one.log_normalizers, whole.log_normalizers[0], atol=1e-6)


def test_per_sequence_initial_probs():
    rng = np.random.default_rng(2)
    _, a, ll, mask = _problem(rng, 4, 3, 40)
    starts = rng.dirichlet(np.ones(4), size=3)
    ref = _run("sequential", starts, a, ll, mask)
    for method in PATHS:
        got = _run(method, starts, a, ll, mask, chunk_size=8 if method == "chunked" else None)
        np.testing.assert_allclose(got.marginal_loglik, ref.marginal_loglik, rtol=1e-5)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        hmm_filter_batch(jnp.ones(2) / 2, jnp.eye(2), jnp.zeros((1, 3, 2)), method="fast")
    with pytest.raises(ValueError, match="scan must be one of"):
        probseq.CategoricalHMM(2, 3, scan="fast")


# ------------------------------------------------------------- through the public API
def _hmms(scan):
    rng = np.random.default_rng(3)
    pi, a, b = random_hmm(rng, 4, 5)
    cat = probseq.CategoricalHMM(4, 5, scan=scan)
    cat_p = cat.init(jax.random.key(0), initial_probs=pi, transition_matrix=a, emission_probs=b)
    gauss = probseq.GaussianHMM(3, 2, scan=scan)
    gauss_p = gauss.init(jax.random.key(1))
    tokens = [rng.integers(0, 5, size=n) for n in (301, 17, 1, 150)]
    reals = [rng.normal(size=(n, 2)).astype(np.float32) for n in (200, 31, 2)]
    return [(cat, cat_p, tokens), (gauss, gauss_p, reals)]


@pytest.mark.parametrize("scan", PATHS)
def test_public_api_agrees_across_paths(scan):
    for (m0, p0, x), (m1, p1, _) in zip(_hmms("sequential"), _hmms(scan), strict=True):
        ref = probseq.score(m0, p0, x)
        got = probseq.score(m1, p1, x)
        np.testing.assert_allclose(got.log_prob, ref.log_prob, rtol=1e-5)
        np.testing.assert_allclose(got.step_log_probs, ref.step_log_probs, atol=1e-5)
        np.testing.assert_allclose(got.final_state, ref.final_state, atol=1e-5)
        np.testing.assert_allclose(m1.filter(p1, x), m0.filter(p0, x), atol=1e-5)
        # continuing from the final states (initial_state=) goes through the same path
        more = [np.asarray(s)[:3] for s in x]
        np.testing.assert_allclose(
            probseq.log_prob(m1, p1, more, initial_state=got.final_state),
            probseq.log_prob(m0, p0, more, initial_state=ref.final_state),
            rtol=1e-5,
        )


def test_fit_sgd_same_parameters_on_every_path():
    """fit_sgd differentiates the filter: a few steps give the same parameters."""
    out = {}
    for scan in FILTER_METHODS:
        model, params, x = _hmms(scan)[0]
        res = probseq.fit_sgd(
            model, params, x, key=jax.random.key(0), num_epochs=3, batch_size=4, progress=False
        )
        out[scan] = res.params
    for scan in PATHS:
        for g, r in zip(
            jax.tree.leaves(out[scan]), jax.tree.leaves(out["sequential"]), strict=True
        ):
            np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------- auto and memory
@pytest.mark.parametrize("b,t,k", [(1, 4096, 8), (4, 1000, 16), (8, 500, 64)])
def test_parallel_memory_estimate_covers_compiled_need(b, t, k):
    """parallel_filter_bytes vs what XLA allocates for the values and gradients."""

    def loss(a, ll):
        return jnp.sum(hmm_filter_batch(jnp.ones(k) / k, a, ll, method="parallel").marginal_loglik)

    args = (jnp.ones((k, k)) / k, jnp.zeros((b, t, k)))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile().memory_analysis()
    value = jax.jit(loss).lower(*args).compile().memory_analysis()
    if grad is None or value is None:
        pytest.skip("this backend reports no memory analysis")
    estimate = auto.parallel_filter_bytes(b, t, k, 4)
    assert estimate >= grad.temp_size_in_bytes >= value.temp_size_in_bytes
    assert estimate <= 2 * grad.temp_size_in_bytes


def test_auto_never_picks_a_path_that_does_not_fit():
    k, t = 64, 1000
    per_seq = auto.parallel_filter_bytes(1, t, k, 4)
    # plenty of memory, little work: parallel, all at once
    assert auto.choose_hmm_filter(64, 1000, 32, backend="gpu", budget=2**40) == ("parallel", None)
    # the K64 B1024 T1000 batch that dynamax's parallel filter runs out of memory on:
    # too much work for the associative scan at once, so chunked
    assert auto.choose_hmm_filter(1024, t, k, backend="gpu", budget=80 * 2**30)[0] == "chunked"
    # a small budget: parallel in groups that fit
    method, group = auto.choose_hmm_filter(16, t, k, backend="gpu", budget=5 * per_seq)
    assert (method, group) == ("parallel", 5)
    assert auto.parallel_filter_bytes(group, t, k, 4) <= 5 * per_seq
    # not even one sequence fits: never parallel
    assert auto.choose_hmm_filter(1, t, k, backend="gpu", budget=per_seq - 1)[0] == "chunked"
    # T = 1e6, K = 8 on an accelerator: parallel (3.5 ms for dynamax on an H100)
    assert auto.choose_hmm_filter(1, 10**6, 8, backend="gpu", budget=2**36)[0] == "parallel"


def test_auto_keeps_the_cpu_choices():
    """CPU: the chunked filter only where it was measured faster (few sequences of
    128-200,000 steps); sequential on the other benchmark workloads."""
    cpu = lambda b, t, k: auto.choose_hmm_filter(b, t, k, backend="cpu")[0]  # noqa: E731
    assert cpu(10, 1000, 4) == "chunked"  # small: 1.6x
    assert cpu(64, 1000, 32) == "sequential"  # medium: chunked 0.8x
    assert cpu(8, 2000, 256) == "sequential"  # largeK
    assert cpu(1, 10**6, 8) == "sequential"  # long: chunked 0.9x
    assert cpu(10, 50, 4) == "sequential"


def test_estep_groups_keep_the_cpu_working_set_small():
    """The chunked E-step runs a batch in groups on CPU only, enough of them that a
    group's ~5 (B, T, K) arrays fit in auto.CPU_ESTEP_BYTES; one group elsewhere."""
    groups = lambda b, t, k, **kw: auto.estep_groups(b, t, k, 4, backend="cpu", **kw)  # noqa: E731
    assert groups(64, 1000, 32) == 2  # medium: 41 MB of arrays -> two groups of 20 MB
    assert groups(10, 1000, 4) == 1  # small
    assert groups(1, 10**6, 8) == 1  # one sequence cannot be split
    assert groups(3, 10**6, 8) == 3  # at most one group per sequence
    for b, t, k in [(64, 1000, 32), (1024, 1000, 64), (7, 5000, 16)]:
        g = groups(b, t, k)
        assert 5 * -(-b // g) * t * k * 4 <= auto.CPU_ESTEP_BYTES or g == b
    assert auto.estep_groups(1024, 1000, 64, 4, backend="gpu") == 1


def test_auto_resolves_on_this_backend():
    model = probseq.CategoricalHMM(8, 4)
    method, _ = model.filter_path(2, 100, jnp.float32)
    assert method in FILTER_METHODS
    assert probseq.CategoricalHMM(8, 4, scan="parallel").filter_path(2, 100, jnp.float32) == (
        "parallel",
        None,
    )


def _far_tail_gaussian_hmm(scan):
    """p(z_1) = [0, 0, 1] (what EM fits when every sequence starts in state 2) and A with
    a column of zeros (state 0 is never re-entered); x_1 is ~15 standard deviations from
    state 2's mean but at state 0's, so the largest log-likelihood over all states
    (-0.9) is ~113 nats above the only possible one: shifting by it underflows float32."""
    hmm = probseq.GaussianHMM(3, 1, scan=scan)
    pi = np.array([0.0, 0.0, 1.0])
    a = np.array([[0.2, 0.4, 0.4], [0.0, 0.5, 0.5], [0.0, 0.3, 0.7]])
    means = np.array([[0.0], [5.0], [15.0]])
    params = hmm.init(
        jax.random.key(0),
        initial_probs=pi,
        transition_matrix=a,
        means=means,
        scales=np.ones((3, 1)),
    )
    x = np.array([[0.0], [0.1], [14.0], [5.5]])
    return hmm, params, x, (pi, a, means[:, 0])


def _gaussian_forward_np(x, pi, a, means):
    ll = -0.5 * (x[:, 0, None] - means[None]) ** 2 - 0.5 * np.log(2 * np.pi)
    with np.errstate(divide="ignore"):
        log_alpha = np.log(pi) + ll[0]
        for t in range(1, len(x)):
            m = log_alpha.max()
            log_alpha = np.log(np.exp(log_alpha - m) @ a) + m + ll[t]
    m = log_alpha.max()
    return m + np.log(np.exp(log_alpha - m).sum())


@pytest.mark.parametrize("scan", FILTER_METHODS)
def test_a_far_likelier_impossible_state_does_not_underflow(scan):
    hmm, params, x, (pi, a, means) = _far_tail_gaussian_hmm(scan)
    ref = _gaussian_forward_np(x, pi, a, means)
    assert np.isfinite(ref) and ref < -100
    np.testing.assert_allclose(float(probseq.log_prob(hmm, params, x[None])[0]), ref, rtol=1e-5)
    # the generic per-step update (condition_on) and the smoother / E-step agree
    steps = probseq.step_log_probs(hmm, params, x[None])
    np.testing.assert_allclose(float(jnp.sum(steps)), ref, rtol=1e-5)
    for estep in ("forward_backward", "chunked", "autodiff"):
        stats = expected_statistics(hmm, params, x[None], estep=estep)
        np.testing.assert_allclose(float(stats.log_likelihood), ref, rtol=1e-5)
        assert np.isfinite(np.asarray(stats.posteriors)).all()
