"""probseq.AR: the least-squares fit against statsmodels' AutoReg (conditional MLE) on
the sunspots series, the exact h-step predictive against AutoReg's forecast variance,
the conditional-likelihood convention, a VAR(2) with inputs, SGD, the spec and the CLI.

Tolerances: 1e-6 relative against statsmodels in float64 (both solve the same least
squares problem; the differences are rounding, ~1e-12 measured); SGD within 1% of the
least-squares optimum per step (a short optimisation).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import statsmodels.api as sm
from statsmodels.tsa.ar_model import AutoReg

import probseq
from probseq import cli, spec


def _sunspots():
    return sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)


@pytest.mark.parametrize("order", [1, 3, 9])
def test_least_squares_equals_autoreg_on_sunspots(order):
    y = _sunspots()
    ref = AutoReg(y, lags=order, trend="c").fit()
    model = probseq.AR(order=order)
    with jax.enable_x64(True):
        fit = probseq.fit_ls(model, y[:, None])
        p = fit.params
        got = np.concatenate([np.asarray(p["intercept"]), np.asarray(p["coef"]).reshape(-1)])
        np.testing.assert_allclose(got, ref.params, rtol=1e-6)
        sigma2 = float(jnp.exp(2 * p["log_scale"][0]))
        np.testing.assert_allclose(sigma2, ref.sigma2, rtol=1e-6)
        np.testing.assert_allclose(fit.history["log_likelihood"][0], ref.llf, rtol=1e-6)
        # the contract's log_prob is the same conditional likelihood
        lp = float(probseq.log_prob(model, p, y[:, None]))
        np.testing.assert_allclose(lp, ref.llf, rtol=1e-6)
        assert fit.info["num_regression_steps"] == ref.nobs


def test_predictive_and_forecast_bands_equal_the_closed_form():
    y = _sunspots()
    order, horizon = 3, 8
    ref = AutoReg(y, lags=order, trend="c").fit()
    pred = ref.get_prediction(start=len(y), end=len(y) + horizon - 1)
    model = probseq.AR(order=order)
    with jax.enable_x64(True):
        p = probseq.fit_ls(model, y[:, None]).params
        state = probseq.score(model, p, y[:, None]).final_state
        mean, cov = model.predict(p, state, horizon)
        np.testing.assert_allclose(np.asarray(mean)[:, 0], pred.predicted_mean, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(cov)[:, 0, 0], pred.var_pred_mean, rtol=1e-6)
        levels = (0.05, 0.5, 0.95)
        fc = probseq.forecast(model, p, jax.random.key(0), y[:, None], horizon, 2000,
                              quantiles=levels)  # fmt: skip
    frame = pred.summary_frame(alpha=0.1)  # 90% interval: the 5% and 95% levels
    np.testing.assert_allclose(fc.mean[:, 0], pred.predicted_mean, rtol=1e-6)
    np.testing.assert_allclose(fc.quantiles[0, :, 0], frame["mean_ci_lower"], rtol=1e-6)
    np.testing.assert_allclose(fc.quantiles[2, :, 0], frame["mean_ci_upper"], rtol=1e-6)
    # the sample paths agree with the exact bands (Monte Carlo error ~ sd / sqrt(2000))
    sd = np.sqrt(pred.var_pred_mean)
    assert np.all(np.abs(fc.samples.mean(axis=0)[:, 0] - pred.predicted_mean) < 0.1 * sd)
    np.testing.assert_allclose(fc.samples.std(axis=0)[:, 0], sd, rtol=0.1)


def test_the_first_order_steps_are_conditioned_on():
    model = probseq.AR(order=3, obs_dim=2)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 2))
    mask = np.arange(7)[None] < np.array([[7], [2]])
    steps = probseq.step_log_probs(model, params, x, mask)
    assert np.all(np.asarray(steps[:, :3]) == 0) and np.all(np.asarray(steps[0, 3:]) < 0)
    assert float(probseq.log_prob(model, params, x[1, :2])) == 0.0


def _simulate_var2(rng, t, coef, intercept, input_coef, lower):
    u = rng.normal(size=(t, input_coef.shape[0]))
    x = np.zeros((t, 2))
    for s in range(2, t):
        x[s] = intercept + x[s - 1] @ coef[0] + x[s - 2] @ coef[1] + u[s] @ input_coef
        x[s] += lower @ rng.normal(size=2)
    return x, u


def test_var2_with_inputs_the_fit_is_a_stationary_point_and_recovers_the_system():
    rng = np.random.default_rng(0)
    coef = np.array([[[0.5, 0.1], [-0.2, 0.3]], [[0.1, 0.0], [0.05, -0.2]]])
    intercept, input_coef = np.array([1.0, -0.5]), np.array([[0.7, 0.0], [0.0, -1.2], [0.3, 0.3]])
    lower = np.array([[0.5, 0.0], [0.3, 0.4]])
    x, u = _simulate_var2(rng, 4000, coef, intercept, input_coef, lower)
    model = probseq.AR(order=2, obs_dim=2, input_dim=3)
    with jax.enable_x64(True):
        fit = probseq.fit_ls(model, [x[:2500], x[2500:]], inputs=[u[:2500], u[2500:]])
        p = fit.params

        def nll(q):
            lp = probseq.log_prob(model, q, [x[:2500], x[2500:]], inputs=[u[:2500], u[2500:]])
            return -jnp.sum(lp)

        np.testing.assert_allclose(-float(nll(p)), fit.history["log_likelihood"][0], rtol=1e-10)
        for g in jax.tree.leaves(jax.grad(nll)(p)):  # the MLE: a stationary point
            np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(p["coef"]), coef, atol=0.05)
    np.testing.assert_allclose(np.asarray(p["input_coef"]), input_coef, atol=0.05)
    np.testing.assert_allclose(np.asarray(model.scale_tril(p)), lower, atol=0.05)


def test_fit_sgd_approaches_the_least_squares_optimum():
    rng = np.random.default_rng(1)
    y = np.zeros(400)
    for t in range(2, 400):
        y[t] = 0.5 + 0.6 * y[t - 1] - 0.3 * y[t - 2] + 0.5 * rng.normal()
    model = probseq.AR(order=2)
    best = probseq.fit_ls(model, y[:, None])
    fit = probseq.fit_sgd(model, model.init(jax.random.key(0)), y[None, :, None],
                          key=jax.random.key(1), num_epochs=400, batch_size=1,
                          learning_rate=0.05, progress=False)  # fmt: skip
    per_step = float(probseq.log_prob(model, fit.params, y[:, None])) / 398
    optimum = best.history["log_likelihood"][0] / 398
    assert abs(per_step - optimum) < 0.01 * abs(optimum), (per_step, optimum)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="order"):
        probseq.AR(order=0)
    with pytest.raises(ValueError, match="closed-form"):
        probseq.fit_ls(probseq.GRU(obs_dim=1, hidden_size=2), np.zeros((10, 1)))
    with pytest.raises(ValueError, match="give more data"):
        probseq.fit_ls(probseq.AR(order=3), np.arange(5.0)[:, None])
    with pytest.raises(ValueError, match="singular"):
        probseq.fit_ls(probseq.AR(order=1), np.ones((30, 1)))
    with pytest.raises(ValueError, match="shape"):
        probseq.fit_ls(probseq.AR(order=1, obs_dim=2), np.zeros((30, 1)))
    with pytest.raises(ValueError, match="future_inputs"):
        m = probseq.AR(order=1, input_dim=1)
        p = m.init(jax.random.key(0))
        m.predict(p, m.initial_state(p), 3)


def test_predict_checks_future_inputs():
    """predict says which argument is wrong and what it needs, before any work."""
    m = probseq.AR(order=1, input_dim=2)
    p = m.init(jax.random.key(0))
    state = m.initial_state(p)
    with pytest.raises(ValueError, match=r"future inputs of shape \(3, 2\); pass them as fu"):
        m.predict(p, state, 3)
    with pytest.raises(ValueError, match=r"future_inputs must have shape \(3, 2\); got \(3, 1\)"):
        m.predict(p, state, 3, np.zeros((3, 1)))
    with pytest.raises(ValueError, match="future_inputs must hold real numbers"):
        m.predict(p, state, 3, np.full((3, 2), "a"))
    plain = probseq.AR(order=1)
    q = plain.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"takes no conditioning inputs .* got future_inputs="):
        plain.predict(q, plain.initial_state(q), 3, np.zeros((3, 1)))
    mean, cov = m.predict(p, state, 3, np.ones((3, 2)))
    assert mean.shape == (3, 1) and cov.shape == (3, 1, 1)


def test_spec_and_command_line_fit_sunspots(tmp_path, capsys):
    s = spec.load_spec("models/ar_series.toml")
    assert s.build_model(obs_dim=1) == probseq.AR(order=9)
    with pytest.raises(spec.SpecError, match="models real-valued series, not text"):
        spec.parse_spec({"data": {"kind": "text"}, "model": {"family": "ar", "order": 2},
                         "fit": {"method": "ls"}})  # fmt: skip
    with pytest.raises(spec.SpecError, match="method = 'ls' fits family = 'ar' only"):
        spec.parse_spec({"data": {"kind": "text"}, "model": {"family": "gru"},
                         "fit": {"method": "ls"}})  # fmt: skip
    out = tmp_path / "ar"
    code = cli.main(["fit", "models/ar_series.toml", "--data", "builtin:sunspots",
                     "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    run = probseq.load(out)
    assert run.model == probseq.AR(order=9)
    assert np.isfinite(run.info["test_log_lik"])


def test_compare_scores_every_model_on_the_steps_the_ar_does_not_condition_on():
    y = _sunspots()[:120, None]
    ar, hmm = probseq.AR(order=2), probseq.GaussianHMM(num_states=2, obs_dim=1)
    p_ar = probseq.fit_ls(ar, y).params
    p_hmm = hmm.init(jax.random.key(0))
    table = probseq.compare({"ar": (ar, p_ar), "hmm": (hmm, p_hmm)}, y)
    rows = {r.name: r for r in table.rows}
    assert rows["ar"].num_symbols == rows["hmm"].num_symbols == 118
    hmm_steps = np.asarray(probseq.step_log_probs(hmm, p_hmm, y), np.float64)
    np.testing.assert_allclose(rows["hmm"].log_likelihood, hmm_steps[2:].sum(), rtol=1e-6)
    np.testing.assert_allclose(
        rows["ar"].log_likelihood, float(probseq.log_prob(ar, p_ar, y)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="no step is left to score"):
        probseq.compare({"ar": (ar, p_ar), "hmm": (hmm, p_hmm)}, y[:2])


def test_forecast_fan_speaks_the_series_language():
    from probseq import plots

    series = probseq.data.series("sunspots")
    y = np.asarray(series.values, np.float64).reshape(-1, 1)
    model = probseq.AR(order=2)
    p = probseq.fit_ls(model, y[:250]).params
    fc = probseq.forecast(model, p, jax.random.key(0), y[:250], 10, 50)
    fig = plots.plot_forecast(y[:250], fc, time=series.index[:260], xlabel="year",
                              ylabel=series.name)  # fmt: skip
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("year", "sunspots")
    assert ax.get_xlim()[0] < 1710 and ax.get_xlim()[1] > 1950  # years, not steps
