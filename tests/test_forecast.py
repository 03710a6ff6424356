"""probseq.forecast: next-step predictive distributions against scoring, the
one-step mean of a Gaussian HMM against its closed form, shapes, errors."""

import jax
import numpy as np
import pytest

import probseq


def test_next_step_probs_equal_scoring_every_continuation():
    """p(x_{T+1} = v | history) from forecast == exp(log p(history, v) - log p(history))."""
    model = probseq.GRU(vocab_size=5, hidden_size=6)
    params = model.init(jax.random.key(0))
    history = np.array([1, 4, 0, 2])
    fc = probseq.forecast(model, params, jax.random.key(1), history, 3, 7)
    base = float(probseq.log_prob(model, params, history))
    extended = np.stack([np.append(history, v) for v in range(5)])
    expected = np.exp(np.asarray(probseq.log_prob(model, params, extended)) - base)
    np.testing.assert_allclose(fc.next_step_probs, expected, rtol=1e-5)
    np.testing.assert_allclose(fc.history_log_prob, base, rtol=1e-6)
    assert fc.samples.shape == (7, 3) and fc.mean is None and fc.quantiles is None


def test_hmm_next_step_is_the_filtered_mixture():
    hmm = probseq.CategoricalHMM(2, 3)
    params = hmm.init(
        jax.random.key(0),
        initial_probs=[0.6, 0.4],
        transition_matrix=[[0.9, 0.1], [0.2, 0.8]],
        emission_probs=[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]],
    )
    history = np.array([0, 2, 2])
    fc = probseq.forecast(hmm, params, jax.random.key(1), history, 1, 2)
    pi, a, b = (np.asarray(m, np.float64) for m in hmm.probabilities(params))
    alpha = pi * b[:, history[0]]
    for x in history[1:]:
        alpha = (alpha @ a) * b[:, x]
    predictive = (alpha / alpha.sum()) @ a @ b
    np.testing.assert_allclose(fc.next_step_probs, predictive, rtol=1e-5)


def test_gaussian_hmm_bands_match_the_closed_form_one_step_predictive():
    hmm = probseq.GaussianHMM(2, 1)
    params = hmm.init(
        jax.random.key(0),
        initial_probs=[0.5, 0.5],
        transition_matrix=[[0.95, 0.05], [0.1, 0.9]],
        means=[[-2.0], [3.0]],
        scales=[[0.5], [1.0]],
    )
    history = np.array([[-2.1], [-1.7], [2.5]])
    fc = probseq.forecast(hmm, params, jax.random.key(2), history, 1, 40_000)
    predicted = np.asarray(hmm.filter(params, history))[-1]  # p(z_T | x_{1:T})
    w = predicted @ np.asarray(hmm.transition_matrix(params))
    mean = w @ np.array([-2.0, 3.0])
    second = w @ (np.array([-2.0, 3.0]) ** 2 + np.array([0.5, 1.0]) ** 2)
    sd = np.sqrt(second - mean**2)
    # Monte Carlo with 40k draws: the mean is within 5 standard errors.
    assert abs(fc.mean[0, 0] - mean) < 5 * sd / np.sqrt(40_000)
    q = fc.quantiles[:, 0, 0]
    assert np.all(np.diff(q) > 0)
    assert fc.samples.shape == (40_000, 1, 1) and fc.next_step_probs is None


def test_batched_histories_and_custom_levels():
    lstm = probseq.LSTM(obs_dim=2, hidden_size=4)
    params = lstm.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    histories = [rng.normal(size=(5, 2)), rng.normal(size=(3, 2))]
    fc = probseq.forecast(lstm, params, jax.random.key(1), histories, 4, 11, quantiles=(0.1, 0.9))
    assert fc.samples.shape == (11, 2, 4, 2)
    assert fc.mean.shape == (2, 4, 2) and fc.quantiles.shape == (2, 2, 4, 2)
    assert fc.quantile_levels == (0.1, 0.9) and fc.history_log_prob.shape == (2,)
    # each row continues from its own history: the same as forecasting it alone
    alone = probseq.forecast(lstm, params, jax.random.key(1), histories[1], 4, 11)
    state = jax.tree.map(lambda s: s[1], fc.final_state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(alone.final_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_greedy_forecast_is_deterministic():
    model = probseq.LSTM(vocab_size=6, hidden_size=5)
    params = model.init(jax.random.key(0))
    history = np.array([1, 2, 3])
    a = probseq.forecast(model, params, jax.random.key(1), history, 8, 3, temperature=0.0)
    b = probseq.forecast(model, params, jax.random.key(2), history, 8, 3, temperature=0.0)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert (a.samples == a.samples[0]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"horizon": 0}, "horizon must be a positive int"),
        ({"num_samples": 0}, "num_samples must be a positive int"),
        ({"quantiles": (0.5, 1.0)}, "strictly between 0 and 1"),
        ({"quantiles": (0.9, 0.1)}, "distinct and increasing"),
        ({"quantiles": "abc"}, "quantiles must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    hmm = probseq.GaussianHMM(2, 1)
    params = hmm.init(jax.random.key(0))
    args = {"horizon": 3, "num_samples": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        probseq.forecast(hmm, params, jax.random.key(1), np.zeros((5, 1)), **args)


def test_bad_history_is_reported_before_any_work():
    model = probseq.GRU(vocab_size=4, hidden_size=3)
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="outside"):
        probseq.forecast(model, params, jax.random.key(1), np.array([0, 9]), 2, 2)


def test_an_impossible_history_is_refused_not_continued():
    """A history with probability 0 (an HMM that never emits a symbol it contains)
    leaves no defined state: forecast and sample say so instead of returning draws
    from an all-zero message (which used to give token 0 forever)."""
    hmm = probseq.CategoricalHMM(2, 3)
    params = hmm.init(
        jax.random.key(0), emission_probs=np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    )
    history = np.array([0, 2, 1])
    with pytest.raises(ValueError, match="impossible under the model .* at step 1"):
        probseq.forecast(hmm, params, jax.random.key(1), history, horizon=3, num_samples=2)
    with pytest.raises(ValueError, match="sequence 1 of the prefix is impossible"):
        probseq.sample(hmm, params, jax.random.key(1), 3, prefix=[np.array([0, 1]), history])
    # a possible history still forecasts
    fc = probseq.forecast(hmm, params, jax.random.key(1), np.array([0, 1]), 3, 2)
    assert np.isfinite(np.asarray(fc.next_step_probs)).all()
