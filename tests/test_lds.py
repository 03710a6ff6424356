"""probseq.LDS: the marginal likelihood against dynamax's LinearGaussianSSM and statsmodels'
local-level model on the Nile series, the filter and RTS smoother against dynamax and a
float64 NumPy recursion, the square-root update in float32 over 1e5 steps, the exact
predictive against statsmodels' forecast and against samples, EM and its autodiff E-step.

Tolerances: 1e-8 relative against dynamax / statsmodels in float64 (the same recursions
in different algebra; measured differences ~1e-11 on log-likelihoods, ~1e-9 absolute on
smoothed moments of size ~1-10, which come from dynamax's covariance-form update).
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import statsmodels.api as sm
from references import lds_ragged_batch

import probseq
from probseq.families.lds import LDSState
from tests.references import import_dynamax


def _nile():
    return sm.datasets.nile.load_pandas().data["volume"].to_numpy(np.float64)


def _dynamax_params(model, params, lg, with_inputs=False):
    """dynamax parameters for the same model. dynamax's input u_t acts on z_t and y_t, ours
    on z_{t+1} and y_t: with dynamax inputs (u_t, u_{t-1}) and weights [0 B], [D 0] the
    two are the same model (see :func:`_dynamax_inputs`)."""
    mats = model.matrices(params)
    n, p, m = model.state_dim, model.obs_dim, model.input_dim
    kwargs = {}
    if with_inputs:
        kwargs = {
            "dynamics_input_weights": jnp.concatenate([jnp.zeros((n, m)), mats.dynamics_input], 1),
            "emission_input_weights": jnp.concatenate([mats.emission_input, jnp.zeros((p, m))], 1),
        }
    ssm = lg.LinearGaussianSSM(n, p, 2 * m if with_inputs else 0)
    dp, _ = ssm.initialize(
        jax.random.key(0),
        initial_mean=mats.initial_mean,
        initial_covariance=mats.initial_covariance,
        dynamics_weights=mats.dynamics,
        dynamics_bias=jnp.zeros(n),
        dynamics_covariance=mats.dynamics_covariance,
        emission_weights=mats.emission,
        emission_bias=jnp.zeros(p),
        emission_covariance=mats.emission_covariance,
        **kwargs,
    )
    return ssm, dp


def _dynamax_inputs(u):
    return jnp.concatenate([u, jnp.concatenate([jnp.zeros_like(u[:1]), u[:-1]])], axis=1)


def _numpy_rts(mats, y):
    """Textbook covariance-form Kalman filter + RTS smoother in float64 NumPy."""
    m0, s0, a, _, q, c, _, r = (np.asarray(v, np.float64) for v in mats)
    num_steps, n = len(y), len(m0)
    mp, pp = m0, s0
    fm, fp, pm, ppred, ll = [], [], [], [], 0.0
    for t in range(num_steps):
        s = c @ pp @ c.T + r
        k = pp @ c.T @ np.linalg.inv(s)
        e = y[t] - c @ mp
        ll += -0.5 * (e @ np.linalg.solve(s, e) + np.linalg.slogdet(2 * np.pi * s)[1])
        mf, pf = mp + k @ e, (np.eye(n) - k @ c) @ pp
        fm.append(mf), fp.append(pf), pm.append(mp), ppred.append(pp)
        mp, pp = a @ mf, a @ pf @ a.T + q
    sm_, sp = [fm[-1]], [fp[-1]]
    for t in range(num_steps - 2, -1, -1):
        g = fp[t] @ a.T @ np.linalg.inv(ppred[t + 1])
        sm_.insert(0, fm[t] + g @ (sm_[0] - pm[t + 1]))
        sp.insert(0, fp[t] + g @ (sp[0] - ppred[t + 1]) @ g.T)
    return ll, np.array(sm_), np.array(sp)


def test_log_prob_and_smoother_equal_dynamax():
    lg = import_dynamax("dynamax.linear_gaussian_ssm")
    with jax.enable_x64(True):
        model = probseq.LDS(state_dim=3, obs_dim=2)
        params = model.init(jax.random.key(0))
        y = probseq.sample(model, params, jax.random.key(1), 60)
        ssm, dp = _dynamax_params(model, params, lg)
        ref = float(ssm.marginal_log_prob(dp, y))
        np.testing.assert_allclose(float(probseq.log_prob(model, params, y)), ref, rtol=1e-8)
        post = model.smoother(params, y)
        rp = lg.lgssm_smoother(dp, y)
        np.testing.assert_allclose(post.log_likelihood, ref, rtol=1e-8)
        np.testing.assert_allclose(post.smoothed_means, rp.smoothed_means, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(post.smoothed_covariances, rp.smoothed_covariances,
                                   rtol=1e-6, atol=1e-8)  # fmt: skip
        # dynamax's "cross covariances" are E[z_t z_{t+1}^T], the means' product included
        cross = post.smoothed_cross_covariances + jnp.einsum(
            "ti,tj->tij", post.smoothed_means[:-1], post.smoothed_means[1:]
        )
        np.testing.assert_allclose(cross, rp.smoothed_cross_covariances, rtol=1e-6, atol=1e-8)
        filt = model.filter(params, y)
        np.testing.assert_allclose(filt.filtered_means, rp.filtered_means, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(filt.filtered_covariances, rp.filtered_covariances,
                                   rtol=1e-6, atol=1e-8)  # fmt: skip
        # and the textbook float64 NumPy recursion
        ll, means, covs = _numpy_rts(model.matrices(params), np.asarray(y))
        np.testing.assert_allclose(float(post.log_likelihood), ll, rtol=1e-10)
        np.testing.assert_allclose(post.smoothed_means, means, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(post.smoothed_covariances, covs, rtol=1e-8, atol=1e-10)


def test_inputs_match_dynamax_with_shifted_inputs():
    lg = import_dynamax("dynamax.linear_gaussian_ssm")
    with jax.enable_x64(True):
        model = probseq.LDS(state_dim=2, obs_dim=2, input_dim=3)
        params = model.init(jax.random.key(2))
        u = jax.random.normal(jax.random.key(3), (50, 3), jnp.float64)
        y = probseq.sample(model, params, jax.random.key(4), 50, inputs=u)
        ssm, dp = _dynamax_params(model, params, lg, with_inputs=True)
        ref = float(ssm.marginal_log_prob(dp, y, _dynamax_inputs(u)))
        got = float(probseq.log_prob(model, params, y, inputs=u))
        np.testing.assert_allclose(got, ref, rtol=1e-8)
        post = model.smoother(params, y, inputs=u)
        rp = lg.lgssm_smoother(dp, y, _dynamax_inputs(u))
        np.testing.assert_allclose(post.smoothed_means, rp.smoothed_means, rtol=1e-6, atol=1e-8)


def _nile_model(s2e=15099.0, s2n=1469.1):
    model = probseq.LDS(state_dim=1, obs_dim=1)
    params = model.init(
        jax.random.key(0),
        initial_mean=[1000.0],
        initial_covariance=[[1e4]],
        dynamics=[[1.0]],
        dynamics_covariance=[[s2n]],
        emission=[[1.0]],
        emission_covariance=[[s2e]],
        dtype=jnp.float64,
    )
    return model, params


def _statsmodels_llevel(y, s2e=15099.0, s2n=1469.1):
    mod = sm.tsa.UnobservedComponents(y, "llevel")
    mod.ssm.initialize_known(np.array([1000.0]), np.array([[1e4]]))
    mod.ssm.loglikelihood_burn = 0  # every step scored, as probseq does
    return mod, mod.smooth([s2e, s2n])


def test_nile_local_level_equals_statsmodels():
    y = _nile()
    mod, res = _statsmodels_llevel(y)
    with jax.enable_x64(True):
        model, params = _nile_model()
        lp = float(probseq.log_prob(model, params, y[:, None]))
        np.testing.assert_allclose(lp, res.llf, rtol=1e-8)
        post = model.smoother(params, y[:, None])
        np.testing.assert_allclose(post.smoothed_means[:, 0], res.smoothed_state[0], rtol=1e-8)
        np.testing.assert_allclose(post.smoothed_covariances[:, 0, 0],
                                   res.smoothed_state_cov[0, 0], rtol=1e-8)  # fmt: skip
        # exact forecast bands: statsmodels' predictive mean and variance
        horizon = 6
        pred = res.get_forecast(horizon)
        state = probseq.score(model, params, y[:, None]).final_state
        mean, cov = model.predict(params, state, horizon)
        np.testing.assert_allclose(mean[:, 0], pred.predicted_mean, rtol=1e-8)
        np.testing.assert_allclose(cov[:, 0, 0], pred.var_pred_mean, rtol=1e-8)
        fc = probseq.forecast(model, params, jax.random.key(0), y[:, None], horizon, 10,
                              quantiles=(0.05, 0.95))  # fmt: skip
        frame = pred.summary_frame(alpha=0.1)
        np.testing.assert_allclose(fc.mean[:, 0], pred.predicted_mean, rtol=1e-8)
        np.testing.assert_allclose(fc.quantiles[0, :, 0], frame["mean_ci_lower"], rtol=1e-6)
        np.testing.assert_allclose(fc.quantiles[1, :, 0], frame["mean_ci_upper"], rtol=1e-6)


def test_kernel_equals_the_generic_contract_path_and_ragged_batches():
    with jax.enable_x64(True):
        model = probseq.LDS(state_dim=2, obs_dim=2, input_dim=1)
        params = model.init(jax.random.key(5))
        u1 = jax.random.normal(jax.random.key(6), (30, 1), jnp.float64)
        y = probseq.sample(model, params, jax.random.key(7), 30, num_samples=2, inputs=u1)
        u = jnp.stack([u1, -u1])
        h0 = model.initial_state(params)
        fast, after = model.sequence_log_probs(params, h0, y[0], u[0])
        slow, after_slow = probseq.SequenceModel.sequence_log_probs(model, params, h0, y[0], u[0])
        np.testing.assert_allclose(fast, slow, rtol=1e-10)
        np.testing.assert_allclose(after.mean, after_slow.mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(after.scale, after_slow.scale, rtol=1e-10, atol=1e-12)
        # a ragged batch: each row scores as its own sequence; the padded tail of the
        # smoother leaves the valid steps unchanged
        mask = np.ones((2, 30), bool)
        mask[1, 17:] = False
        lp = probseq.log_prob(model, params, y, mask, inputs=u)
        one = probseq.log_prob(model, params, y[1, :17], inputs=u[1, :17])
        np.testing.assert_allclose(lp[1], one, rtol=1e-10)
        post = model.smoother(params, y, mask, inputs=u)
        alone = model.smoother(params, y[1, :17], inputs=u[1, :17])
        np.testing.assert_allclose(post.smoothed_means[1, :17], alone.smoothed_means, rtol=1e-9)
        np.testing.assert_allclose(post.log_likelihood[1], alone.log_likelihood, rtol=1e-10)


def test_samples_match_the_exact_predictive():
    """predict from the initial state is the marginal of y_1..y_H: the mean and covariance
    of many sampled paths agree within Monte Carlo error (4000 paths: ~5 standard errors)."""
    model = probseq.LDS(state_dim=2, obs_dim=2)
    params = model.init(jax.random.key(8), dtype=jnp.float32)
    draws = np.asarray(probseq.sample(model, params, jax.random.key(9), 4, num_samples=4000))
    mean, cov = model.predict(params, model.initial_state(params), 4)
    sd = np.sqrt(np.diagonal(np.asarray(cov), axis1=-2, axis2=-1))
    err = np.abs(draws.mean(0) - np.asarray(mean)) / (sd / np.sqrt(4000))
    assert err.max() < 5, err
    emp = np.einsum("stp,stq->tpq", draws - draws.mean(0), draws - draws.mean(0)) / 4000
    np.testing.assert_allclose(emp, cov, rtol=0.15, atol=0.1 * float(np.max(sd) ** 2))


def _long_run(dtype, num_steps):
    model = probseq.LDS(state_dim=3, obs_dim=2)
    rng = np.random.default_rng(0)
    orth = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    # well-conditioned: slow modes (spectral radius 0.98), small process noise
    params = model.init(
        jax.random.key(10),
        dynamics=0.98 * orth,
        emission=rng.normal(size=(2, 3)),
        dynamics_covariance=0.01 * np.eye(3),
        emission_covariance=0.1 * np.eye(2),
        dtype=dtype,
    )
    return model, params


@pytest.mark.slow
def test_float32_stays_positive_definite_over_1e5_steps():
    num_steps = 100_000
    with jax.enable_x64(True):
        model, p64 = _long_run(jnp.float64, num_steps)
        y = probseq.sample(model, p64, jax.random.key(11), num_steps)
        ref = model.filter(p64, y)
        lps64 = probseq.step_log_probs(model, p64, y)
    model, p32 = _long_run(jnp.float32, num_steps)
    y32 = np.asarray(y, np.float32)
    got = model.filter(p32, y32)
    lps32 = np.asarray(probseq.step_log_probs(model, p32, y32))
    covs = np.asarray(got.filtered_covariances, np.float64)
    assert np.all(np.isfinite(covs)) and np.all(np.isfinite(lps32))
    assert np.linalg.eigvalsh(covs).min() > 0
    np.testing.assert_allclose(covs, ref.filtered_covariances, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(lps32, lps64, atol=1e-3)
    np.testing.assert_allclose(float(got.log_likelihood), float(ref.log_likelihood), rtol=1e-5)


def test_float32_square_root_filter_short_run():
    """The fast sibling of the 1e5-step test: 2,000 steps, same checks."""
    with jax.enable_x64(True):
        model, p64 = _long_run(jnp.float64, 2000)
        y = probseq.sample(model, p64, jax.random.key(12), 2000)
        ref = model.filter(p64, y)
    model, p32 = _long_run(jnp.float32, 2000)
    got = model.filter(p32, np.asarray(y, np.float32))
    covs = np.asarray(got.filtered_covariances, np.float64)
    assert np.linalg.eigvalsh(covs).min() > 0
    np.testing.assert_allclose(covs, ref.filtered_covariances, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(float(got.log_likelihood), float(ref.log_likelihood), rtol=1e-5)


def test_bad_input_raises():
    model = probseq.LDS(state_dim=2, obs_dim=1, input_dim=1)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="not positive definite"):
        model.init(key, dynamics_covariance=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="not symmetric"):
        model.init(key, emission_covariance=[[1.0]], initial_covariance=[[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="shape"):
        model.init(key, dynamics=np.eye(3))
    with pytest.raises(ValueError, match="unknown keyword"):
        model.init(key, transition=np.eye(2))
    with pytest.raises(ValueError, match="state_dim"):
        probseq.LDS(state_dim=0)
    params = model.init(key)
    state = LDSState(*model.initial_state(params))
    with pytest.raises(ValueError, match="future_inputs"):
        model.predict(params, state, 3)
    with pytest.raises(ValueError, match=r"future_inputs must have shape \(3, 1\); got \(2, 1\)"):
        model.predict(params, state, 3, np.zeros((2, 1)))
    plain = probseq.LDS(state_dim=2, obs_dim=1)
    q = plain.init(key)
    with pytest.raises(ValueError, match="takes no conditioning inputs .* got future_inputs="):
        plain.predict(q, LDSState(*plain.initial_state(q)), 3, np.zeros((3, 1)))
    with pytest.raises(ValueError):
        model.smoother(params, np.zeros((5, 1)))  # inputs missing


# ------------------------------------------------------------------------------ EM
def _ragged_batch_with_inputs():
    return lds_ragged_batch(20, 25, 18)


def test_autodiff_estep_equals_the_rts_smoother_statistics():
    """The gradient of the information-form log-partition in the natural parameters equals
    the sums of the smoother's moments (float64: agreement ~1e-14 measured; 1e-9 asked)."""
    from probseq.fit.lds_em import lds_expected_statistics

    with jax.enable_x64(True):
        model, params, y, mask, u = _ragged_batch_with_inputs()
        st = lds_expected_statistics(model, params, y, jnp.asarray(mask), u)
        np.testing.assert_allclose(st.log_likelihood,
                                   probseq.log_prob(model, params, y, mask, inputs=u).sum(),
                                   rtol=1e-10)  # fmt: skip
        post = model.smoother(params, y, mask, inputs=u)
        ez = post.smoothed_means
        ezz = post.smoothed_covariances + jnp.einsum("bti,btj->btij", ez, ez)
        cross = jnp.swapaxes(post.smoothed_cross_covariances, -1, -2) + jnp.einsum(
            "bti,btj->btij", ez[:, 1:], ez[:, :-1]
        )
        w = jnp.asarray(mask, jnp.float64)
        pairs = w[:, 1:]
        want = {
            "initial_mean": ez[:, 0].sum(0),
            "initial_second": ezz[:, 0].sum(0),
            "state_second": jnp.einsum("bt,btij->ij", w, ezz),
            "state_obs": jnp.einsum("bt,bti,btj->ij", w, ez, y),
            "state_input": jnp.einsum("bt,bti,btj->ij", w, ez, u),
            "prev_second": jnp.einsum("bt,btij->ij", pairs, ezz[:, :-1]),
            "next_second": jnp.einsum("bt,btij->ij", pairs, ezz[:, 1:]),
            "cross": jnp.einsum("bt,btij->ij", pairs, cross),
            "prev_input": jnp.einsum("bt,bti,btj->ij", pairs, ez[:, :-1], u[:, :-1]),
            "next_input": jnp.einsum("bt,bti,btj->ij", pairs, ez[:, 1:], u[:, :-1]),
        }
        for name, value in want.items():
            np.testing.assert_allclose(getattr(st, name), value, rtol=1e-9, atol=1e-9,
                                       err_msg=name)  # fmt: skip
        assert float(st.num_pairs) == 24 + 17 and float(st.num_steps) == 25 + 18


def test_em_never_decreases_with_inputs_and_ragged_batches():
    with jax.enable_x64(True):
        model, _, y, mask, u = _ragged_batch_with_inputs()
        start = model.init(jax.random.key(30))
        fit = probseq.fit_lds_em(
            model, start, y, mask=mask, inputs=u, num_iters=25, tol=0.0, initial="learn"
        )
        ll = fit.history["log_likelihood"]
        assert len(ll) == 25
        assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[:-1])), np.diff(ll)
        final = float(probseq.log_prob(model, fit.params, y, mask, inputs=u).sum())
        assert final >= ll[-1] - 1e-9 * abs(ll[-1])


def _autocovariance(mats, lag):
    """Cov(y_{t+lag}, y_t) of the stationary model: C A^lag S C^T (+ R at lag 0), with
    S = A S A^T + Q; invariant under a change of basis of the state."""
    import scipy.linalg

    a, q, c = (np.asarray(v) for v in (mats.dynamics, mats.dynamics_covariance, mats.emission))
    s = scipy.linalg.solve_discrete_lyapunov(a, q)
    out = c @ np.linalg.matrix_power(a, lag) @ s @ c.T
    return out + (np.asarray(mats.emission_covariance) if lag == 0 else 0.0)


def test_em_recovers_a_simulated_2d_system():
    """4 x 1000 steps of a rotating 2-D system seen through 3 noisy outputs. The state's
    basis is not identifiable, so compare what is: the eigenvalues of A (0.95 e^{+-0.3i};
    measured error 3e-3) and the output autocovariances at lags 0..3 (measured error
    <= 0.085 on entries up to 1.5), and the fitted likelihood beats the true parameters'."""
    theta = 0.3
    a = 0.95 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    c = np.array([[1.0, 0.5], [-0.3, 1.0], [0.8, -0.7]])
    with jax.enable_x64(True):
        model = probseq.LDS(state_dim=2, obs_dim=3)
        true = model.init(jax.random.key(0), dynamics=a, emission=c,
                          dynamics_covariance=0.1 * np.eye(2),
                          emission_covariance=0.2 * np.eye(3))  # fmt: skip
        y = probseq.sample(model, true, jax.random.key(1), 1000, num_samples=4)
        fit = probseq.fit_lds_em(model, model.init(jax.random.key(2)), y, num_iters=300,
                                 tol=1e-9)  # fmt: skip
        assert fit.info["converged"]
        assert fit.history["log_likelihood"][-1] > float(probseq.log_prob(model, true, y).sum())
        got, want = model.matrices(fit.params), model.matrices(true)
    eig = np.sort_complex(np.linalg.eigvals(np.asarray(got.dynamics)))
    np.testing.assert_allclose(eig, np.sort_complex(np.linalg.eigvals(a)), atol=0.02)
    for lag in range(4):
        np.testing.assert_allclose(_autocovariance(got, lag), _autocovariance(want, lag),
                                   atol=0.15)  # fmt: skip


def test_fit_lds_em_refuses_bad_input():
    model = probseq.LDS(state_dim=1, obs_dim=1)
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="two observed steps"):
        probseq.fit_lds_em(model, params, np.zeros((3, 1, 1)))
    with pytest.raises(ValueError, match="fits a probseq.LDS"):
        probseq.fit_lds_em(probseq.AR(order=1), params, np.zeros((5, 1)))
    with pytest.raises(ValueError, match="num_iters"):
        probseq.fit_lds_em(model, params, np.zeros((5, 1)), num_iters=0)


# ----------------------------------------------------------------- spec and CLI
def test_spec_and_command_line_fit_nile(tmp_path, capsys):
    from probseq import cli, spec

    s = spec.load_spec("models/lds_series.toml")
    assert s.build_model(obs_dim=1) == probseq.LDS(state_dim=2, obs_dim=1)
    short = tmp_path / "lds.toml"
    text = pathlib.Path("models/lds_series.toml").read_text()
    short.write_text(text.replace("num_epochs = 300", "num_epochs = 3"))
    out = tmp_path / "run"
    code = cli.main(["fit", str(short), "--data", "builtin:nile", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    run = probseq.load(out)
    assert run.model == probseq.LDS(state_dim=2, obs_dim=1)
    assert np.isfinite(run.info["test_log_lik"])


def test_fit_em_of_an_lds_is_fit_lds_em_and_a_spec_can_say_em(tmp_path, capsys):
    from probseq import cli

    model = probseq.LDS(state_dim=1, obs_dim=1)
    params = model.init(jax.random.key(0))
    y = np.asarray(probseq.sample(model, params, jax.random.key(1), 60, num_samples=2))
    a = probseq.fit_em(model, params, y, num_iters=4, tol=0.0)
    b = probseq.fit_lds_em(model, params, y, num_iters=4, tol=0.0)
    np.testing.assert_array_equal(a.history["log_likelihood"], b.history["log_likelihood"])
    with pytest.raises(ValueError, match="takes no prior="):
        probseq.fit_em(model, params, y, prior={"transition": 2.0})
    with pytest.raises(ValueError, match="takes no num_restarts="):
        probseq.fit_em(model, params, y, num_restarts=3, key=jax.random.key(0))
    text = pathlib.Path("models/lds_series.toml").read_text()
    em = tmp_path / "lds_em.toml"
    em.write_text(text.split("[fit]")[0] + '[fit]\nmethod = "em"\nnum_iters = 5\n')
    out = tmp_path / "run"
    code = cli.main(["fit", str(em), "--data", "builtin:nile", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert np.isfinite(probseq.load(out).info["test_log_lik"])


# ------------------------------------------------------------- parallel in time
def test_parallel_kernel_equals_the_square_root_filter():
    """The fast sibling of the next test: the two filters, and the two smoothers, on one
    float32 sequence with inputs and a missing tail, every output to 1e-5 (measured
    ~1e-6)."""
    from probseq.families.lds import _scale
    from probseq.lds_inference import (
        kalman_filter,
        parallel_kalman_filter,
        parallel_rts_smoother,
        rts_smoother,
    )

    model = probseq.LDS(state_dim=3, obs_dim=2, input_dim=1)
    p = model.init(jax.random.key(43), dtype=jnp.float32)
    u = jax.random.normal(jax.random.key(44), (50, 1), jnp.float32)
    y = probseq.sample(model, p, jax.random.key(45), 50, inputs=u)
    b, d = model._offsets(p, u)
    mask = jnp.arange(50) < 37
    args = (p["initial_mean"], _scale(p, "initial"), p["dynamics"], _scale(p, "dynamics"),
            p["emission"], _scale(p, "emission"), y, b, d, mask)  # fmt: skip
    seq, par = kalman_filter(*args), parallel_kalman_filter(*args)
    for name in seq._fields:
        np.testing.assert_allclose(getattr(par, name), getattr(seq, name), rtol=1e-5,
                                   atol=1e-5, err_msg=name)  # fmt: skip
    smoothed = rts_smoother(seq, p["dynamics"])
    in_parallel = parallel_rts_smoother(seq, p["dynamics"])
    for name in smoothed._fields:
        np.testing.assert_allclose(getattr(in_parallel, name), getattr(smoothed, name),
                                   rtol=1e-5, atol=1e-5, err_msg=name)  # fmt: skip


@pytest.mark.slow
def test_parallel_filter_equals_sequential_values_and_gradients_float32():
    """The associative-scan filter against the square-root one in float32, through the
    public API, with inputs and a ragged batch: per-step log-likelihoods and the final
    states to 1e-5, gradients of the total to 1e-5 of each leaf's largest entry
    (measured: ~2e-6 and ~3e-6)."""
    seq = probseq.LDS(state_dim=3, obs_dim=2, input_dim=1, scan="sequential")
    par = probseq.LDS(state_dim=3, obs_dim=2, input_dim=1, scan="parallel")
    params = seq.init(jax.random.key(40), dtype=jnp.float32)
    u1 = jax.random.normal(jax.random.key(41), (64, 1), jnp.float32)
    y = probseq.sample(seq, params, jax.random.key(42), 64, num_samples=2, inputs=u1)
    u = jnp.stack([u1, u1])
    mask = np.ones((2, 64), bool)
    mask[1, 41:] = False
    a = probseq.score(seq, params, y, mask, inputs=u)
    b = probseq.score(par, params, y, mask, inputs=u)
    np.testing.assert_allclose(b.step_log_probs, a.step_log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.log_prob, a.log_prob, rtol=1e-5)
    for got, want in zip(
        jax.tree.leaves(b.final_state), jax.tree.leaves(a.final_state), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def total(model, p):
        return jnp.sum(probseq.log_prob(model, p, y, mask, inputs=u))

    ga = jax.grad(functools.partial(total, seq))(params)
    gb = jax.grad(functools.partial(total, par))(params)
    for name in ga:
        scale = float(np.max(np.abs(ga[name]))) or 1.0
        assert float(np.max(np.abs(gb[name] - ga[name]))) <= 1e-5 * scale, name
    ps, pp = seq.smoother(params, y, mask, inputs=u), par.smoother(params, y, mask, inputs=u)
    np.testing.assert_allclose(pp.smoothed_means[1, :41], ps.smoothed_means[1, :41],
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(pp.smoothed_covariances, ps.smoothed_covariances,
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    assert seq.filter_path(10**6) == "sequential"
    auto = probseq.LDS(state_dim=1)
    assert auto.filter_path(10**6) == ("sequential" if jax.default_backend() == "cpu"
                                       else "parallel")  # fmt: skip
    with pytest.raises(ValueError, match="scan"):
        probseq.LDS(state_dim=1, scan="fast")
