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
    with pytest.raises(ValueError, match="not implemented"):
        hmm.filter(params, x)
    with pytest.raises(ValueError, match="sequentially"):
        probseq.CategoricalHMM(2, 3, input_dim=1, scan="parallel")
    with pytest.raises(ValueError, match="input_dim"):
        probseq.CategoricalHMM(2, 3, input_dim=-1)
