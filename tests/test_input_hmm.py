"""Input-driven HMMs: CategoricalHMM / GaussianHMM(..., input_dim=m), whose transition
out of step t is A_t = softmax(transition_logits + input_weights @ u_t) row-wise.

References: the plain HMM (zero input weights: the same model), a float64 NumPy forward
recursion with a matrix per step, a NumPy simulator of the model. Tolerances: 1e-5
relative on float32 log-likelihoods (a few hundred steps of float32 rounding); EM's
log-likelihood may not decrease by more than 1e-5 relative (L-BFGS's Q is checked, the
E-step rounds); recovery to 0.08 in transition probabilities from 8000 simulated steps
(the sampling error of ~1000 transitions per state and input region is ~0.03).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq
from probseq.fit.em import expected_statistics


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _forward_np(pi, logits, w, b_emit, x, u):
    """log p(x_{1:T} | u) in float64 with A_t = softmax(logits + w @ u_t)."""
    alpha = pi * b_emit[:, x[0]]
    total = np.log(alpha.sum())
    alpha /= alpha.sum()
    for t in range(1, len(x)):
        a = _softmax(logits + np.einsum("ijm,m->ij", w, u[t - 1]))
        alpha = (alpha @ a) * b_emit[:, x[t]]
        total += np.log(alpha.sum())
        alpha /= alpha.sum()
    return total


def _model(rng, k=3, v=4, m=2, scale=1.0):
    hmm = probseq.CategoricalHMM(k, v, input_dim=m)
    pi = rng.dirichlet(np.ones(k))
    a = rng.dirichlet(np.ones(k), size=k)
    b = rng.dirichlet(np.ones(v), size=k)
    params = hmm.init(jax.random.key(0), initial_probs=pi, transition_matrix=a, emission_probs=b)
    w = scale * rng.normal(size=(k, k, m))
    return hmm, params._replace(input_weights=jnp.asarray(w, jnp.float32)), (pi, a, b, w)


def test_zero_input_weights_is_the_plain_hmm():
    rng = np.random.default_rng(0)
    hmm, params, _ = _model(rng, scale=0.0)
    plain = probseq.CategoricalHMM(3, 4)
    plain_params = params._replace(input_weights=None)
    x = rng.integers(0, 4, size=(5, 40))
    u = rng.normal(size=(5, 40, 2)).astype(np.float32)
    np.testing.assert_allclose(
        probseq.log_prob(hmm, params, x, inputs=u),
        probseq.log_prob(plain, plain_params, x),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        probseq.step_log_probs(hmm, params, x, inputs=u),
        probseq.step_log_probs(plain, plain_params, x),
        atol=1e-6,
    )


def test_log_prob_equals_float64_reference_ragged():
    rng = np.random.default_rng(1)
    hmm, params, (pi, a, b, w) = _model(rng)
    lengths = [30, 7, 1]
    xs = [rng.integers(0, 4, size=n) for n in lengths]
    us = [rng.normal(size=(n, 2)).astype(np.float32) for n in lengths]
    got = probseq.log_prob(hmm, params, xs, inputs=us)
    logits = np.log(a)
    ref = [_forward_np(pi, logits, w, b, x, u) for x, u in zip(xs, us, strict=True)]
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_expected_transitions_per_step_sum_to_smoothed_marginals():
    rng = np.random.default_rng(2)
    hmm, params, _ = _model(rng)
    x = rng.integers(0, 4, size=(2, 12))
    u = rng.normal(size=(2, 12, 2)).astype(np.float32)
    stats = expected_statistics(hmm, params, x, inputs=u)
    xi, gamma = np.asarray(stats.transition_counts), np.asarray(stats.posteriors)
    assert xi.shape == (2, 12, 3, 3)
    np.testing.assert_allclose(xi[:, :-1].sum(-1), gamma[:, :-1], atol=1e-5)
    np.testing.assert_allclose(xi[:, :-1].sum(-2), gamma[:, 1:], atol=1e-5)
    np.testing.assert_allclose(xi[:, -1], 0.0, atol=1e-7)  # no step after the last


def _simulate(rng, pi, logits, w, b, u):
    n, t, _ = u.shape
    x = np.zeros((n, t), int)
    for s in range(n):
        z = rng.choice(len(pi), p=pi)
        for step in range(t):
            x[s, step] = rng.choice(b.shape[1], p=b[z])
            z = rng.choice(len(pi), p=_softmax(logits[z] + w[z] @ u[s, step]))
    return x


def test_em_recovers_a_simulated_input_driven_hmm_and_never_decreases():
    rng = np.random.default_rng(3)
    k, v, m = 2, 3, 1
    pi = np.array([0.5, 0.5])
    logits = np.log(np.array([[0.8, 0.2], [0.3, 0.7]]))
    w = np.zeros((k, k, m))
    w[0, 1, 0], w[1, 0, 0] = 2.5, -2.5  # u > 0 pushes 0 -> 1, u < 0 pushes 1 -> 0
    b = np.array([[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]])
    u = rng.normal(size=(40, 200, m))
    x = _simulate(rng, pi, logits, w, b, u)

    hmm = probseq.CategoricalHMM(k, v, input_dim=m)
    start = hmm.init(
        jax.random.key(1),
        emission_probs=np.array([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]]),
        transition_matrix=np.full((k, k), 0.5),
    )
    res = probseq.fit_em(hmm, start, x, inputs=u.astype(np.float32), num_iters=40, tol=0.0)
    ll = np.asarray(res.history["log_likelihood"])
    assert np.all(np.diff(ll) >= -1e-5 * np.abs(ll[1:])), np.diff(ll).min()
    assert ll[-1] > ll[0] + 100
    fitted = res.params
    for value in (-1.5, 0.0, 1.5):
        got = np.asarray(hmm.transition_matrices(fitted, jnp.full((m,), value, jnp.float32)))
        want = _softmax(logits + np.einsum("ijm,m->ij", w, np.full(m, value)))
        np.testing.assert_allclose(got, want, atol=0.08)
    np.testing.assert_allclose(
        np.asarray(jax.nn.softmax(fitted.emission["logits"], -1)), b, atol=0.05
    )


def test_fit_sgd_and_sample_take_inputs():
    rng = np.random.default_rng(4)
    hmm, params, _ = _model(rng)
    x = rng.integers(0, 4, size=(8, 30))
    u = rng.normal(size=(8, 30, 2)).astype(np.float32)
    res = probseq.fit_sgd(
        hmm, params, x, inputs=u, key=jax.random.key(0), num_epochs=3, batch_size=4
    )
    moved = np.abs(np.asarray(res.params.input_weights) - np.asarray(params.input_weights))
    assert np.isfinite(moved).all() and moved.max() > 0  # the gradient reaches the weights
    draws = probseq.sample(hmm, params, jax.random.key(1), 6, inputs=u[0, :6])
    assert draws.shape == (6,)


def test_what_an_input_driven_hmm_refuses():
    hmm = probseq.CategoricalHMM(2, 3, input_dim=1)
    params = hmm.init(jax.random.key(0))
    x = jnp.zeros((1, 5), int)
    u = jnp.zeros((1, 5, 1))
    with pytest.raises(ValueError, match="input_dim"):
        probseq.log_prob(hmm, params, x)  # inputs missing
    with pytest.raises(ValueError, match="autodiff"):
        probseq.fit_em(hmm, params, x, inputs=u, estep="chunked")
    for method in (hmm.filter, hmm.smoother, hmm.most_likely_states):
        with pytest.raises(ValueError, match="input_dim"):
            method(params, x)  # inputs missing
        with pytest.raises(ValueError, match="shape"):
            method(params, x, inputs=jnp.zeros((1, 4, 1)))  # one step short
    with pytest.raises(ValueError, match="input_dim"):
        hmm.sample_states(params, jax.random.key(0), x)
    with pytest.raises(ValueError, match="takes no conditioning inputs"):
        probseq.CategoricalHMM(2, 3).smoother(params._replace(input_weights=None), x, inputs=u)
    with pytest.raises(ValueError, match="sequentially"):
        probseq.CategoricalHMM(2, 3, input_dim=1, scan="parallel")
    with pytest.raises(ValueError, match="input_dim"):
        probseq.CategoricalHMM(2, 3, input_dim=-1)


# ------------------------------------------------ state posteriors given inputs
def _enumerate(pi, logits, w, b, x, u):
    """p(z_{1:T}, x_{1:T} | u) of every path (float64 brute force): (paths (P, T), p (P,))."""
    import itertools

    k, t = len(pi), len(x)
    paths = np.array(list(itertools.product(range(k), repeat=t)))
    a = np.stack([_softmax(logits + np.einsum("ijm,m->ij", w, u[s])) for s in range(t)])
    joint = pi[paths[:, 0]] * b[paths[:, 0], x[0]]
    for s in range(1, t):
        joint = joint * a[s - 1][paths[:, s - 1], paths[:, s]] * b[paths[:, s], x[s]]
    return paths, joint


def test_filter_smoother_viterbi_equal_enumeration_with_inputs():
    rng = np.random.default_rng(5)
    hmm, params, (pi, a, b, w) = _model(rng, k=3, v=4, m=2, scale=1.5)
    lengths = [6, 4]
    xs = [rng.integers(0, 4, size=n) for n in lengths]
    us = [rng.normal(size=(n, 2)).astype(np.float32) for n in lengths]
    filt = np.asarray(hmm.filter(params, xs, inputs=us))
    smooth = np.asarray(hmm.smoother(params, xs, inputs=us))
    path = np.asarray(hmm.most_likely_states(params, xs, inputs=us))
    logits = np.log(a)
    for i, (x, u) in enumerate(zip(xs, us, strict=True)):
        n = len(x)
        paths, joint = _enumerate(pi, logits, w, b, x, u.astype(np.float64))
        post = joint / joint.sum()
        want_smooth = np.stack([np.bincount(paths[:, s], post, minlength=3) for s in range(n)])
        np.testing.assert_allclose(smooth[i, :n], want_smooth, atol=2e-6)
        for s in range(n):  # p(z_s | x_{1:s}): enumerate the prefix
            pp, jj = _enumerate(pi, logits, w, b, x[: s + 1], u[: s + 1].astype(np.float64))
            want = np.bincount(pp[:, s], jj / jj.sum(), minlength=3)
            np.testing.assert_allclose(filt[i, s], want, atol=2e-6)
        np.testing.assert_array_equal(path[i, :n], paths[np.argmax(joint)])
        assert (path[i, n:] == -1).all() and (smooth[i, n:] == 0).all()


def test_one_sequence_and_zero_weights_match_the_plain_hmm_posteriors():
    rng = np.random.default_rng(6)
    hmm, params, _ = _model(rng, scale=0.0)
    plain, plain_params = probseq.CategoricalHMM(3, 4), params._replace(input_weights=None)
    x = rng.integers(0, 4, size=25)
    u = rng.normal(size=(25, 2)).astype(np.float32)
    for name in ("filter", "smoother", "most_likely_states"):
        got = getattr(hmm, name)(params, x, inputs=u)
        want = getattr(plain, name)(plain_params, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=name)
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        hmm.sample_states(params, key, x, num_samples=4, inputs=u),
        plain.sample_states(plain_params, key, x, num_samples=4),
    )


def test_sample_states_with_inputs_draws_the_exact_posterior():
    rng = np.random.default_rng(7)
    hmm, params, (pi, a, b, w) = _model(rng, k=2, v=3, m=1, scale=2.0)
    x = rng.integers(0, 3, size=4)
    u = rng.normal(size=(4, 1)).astype(np.float32)
    paths, joint = _enumerate(pi, np.log(a), w, b, x, u.astype(np.float64))
    post = joint / joint.sum()
    n = 20000
    z = np.asarray(hmm.sample_states(params, jax.random.key(0), x, num_samples=n, inputs=u))
    code = (z * (2 ** np.arange(3, -1, -1))).sum(-1)  # path -> index in product order
    freq = np.bincount(code, minlength=len(post)) / n
    # 4 standard errors of a frequency from n draws, per path.
    np.testing.assert_array_less(np.abs(freq - post), 4 * np.sqrt(post * (1 - post) / n) + 1e-3)


def test_smoother_counts_with_a_matrix_per_step_equal_the_autodiff_estep():
    from probseq.hmm_inference import hmm_smoother

    rng = np.random.default_rng(8)
    hmm, params, _ = _model(rng, scale=1.0)
    x = rng.integers(0, 4, size=(1, 15))
    u = rng.normal(size=(1, 15, 2)).astype(np.float32)
    stats = expected_statistics(hmm, params, x, inputs=u)
    a_t = hmm.transition_matrices(params, jnp.asarray(u[0]))
    ll = hmm.emission_log_likelihoods(params, jnp.asarray(x[0]))
    post = hmm_smoother(hmm.initial_state(params), a_t, ll)
    np.testing.assert_allclose(
        post.expected_transitions, np.asarray(stats.transition_counts)[0].sum(0), atol=1e-5
    )
    np.testing.assert_allclose(post.smoothed_probs, stats.posteriors[0], atol=1e-5)
    np.testing.assert_allclose(
        post.marginal_loglik, probseq.log_prob(hmm, params, x[0], inputs=u[0]), rtol=1e-6
    )


def test_kernels_refuse_a_matrix_per_step_where_they_take_one():
    from probseq.hmm_inference import hmm_filter_batch, hmm_smoother_from_likelihoods

    pi = jnp.array([0.5, 0.5])
    a = jnp.tile(jnp.array([[0.9, 0.1], [0.2, 0.8]]), (1, 6, 1, 1))  # (B, T, K, K)
    ll = jnp.zeros((1, 6, 2))
    for method in ("chunked", "parallel"):
        with pytest.raises(ValueError, match="method='sequential'"):
            hmm_filter_batch(pi, a, ll, method=method)
    with pytest.raises(ValueError, match=r"\(B, T, K, K\)"):
        hmm_filter_batch(pi, a[:, :5], ll)  # one step short
    lik, shift = jnp.ones((1, 6, 2)), jnp.zeros((1, 6))
    with pytest.raises(ValueError, match="one transition matrix"):
        hmm_smoother_from_likelihoods(pi, a, lik, shift, method="chunked")
    with pytest.raises(ValueError, match=r"\(B, T, K, K\)"):
        hmm_smoother_from_likelihoods(pi, a[:, :5], lik, shift)
    # The sequential path with a matrix per step equal to the one matrix: the same filter.
    got = hmm_filter_batch(pi, a, ll).filtered_probs
    np.testing.assert_allclose(got, hmm_filter_batch(pi, a[0, 0], ll).filtered_probs, atol=1e-7)
