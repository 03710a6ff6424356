"""How EM fits an LDS's initial distribution: ``fit_lds_em(initial=...)``.

The stationary distribution against a long float64 NumPy iteration of the Lyapunov
recursion; "fixed" leaves the initial parameters bit-identical and, like "learn", never
decreases the log-likelihood; on one simulated long sequence "stationary" (the default)
scores held-out continuation windows as well as the true model while "learn" (the
maximum-likelihood update from one sequence, dynamax's) is far worse; bad values are
refused by name, in Python and in a spec.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import lds_ragged_batch

import probseq
from probseq.data.splits import Split
from probseq.lds_inference import stationary_distribution


def _lyapunov_by_iteration(a, q, b, num_steps=5000):
    """P <- A P A^T + Q and m <- A m + b from zero, in float64 NumPy (independent)."""
    p, m = np.zeros_like(q), np.zeros_like(b)
    for _ in range(num_steps):
        p, m = a @ p @ a.T + q, a @ m + b
    return m, p


def _stable_matrices():
    rng = np.random.default_rng(0)
    # non-normal: spectral radius 0.9 but ||A|| > 1, so A^k grows before it decays
    a = np.array([[0.9, 2.0, 0.0], [0.0, 0.5, 1.0], [0.0, 0.0, -0.7]])
    g = rng.normal(size=(3, 3))
    q = g @ g.T + 0.1 * np.eye(3)
    return a, q, rng.normal(size=3)


def test_stationary_distribution_solves_the_lyapunov_equation():
    """float64: against 5000 NumPy steps (0.9**10000 ~ 1e-458: converged exactly) to 1e-10
    relative, and the residual of P = A P A^T + Q ~ 1e-13 relative; float32 to 1e-4
    (the doubling's QR steps each carry ~1e-7 rounding on a P with entries up to ~300)."""
    a, q, b = _stable_matrices()
    want_m, want_p = _lyapunov_by_iteration(a, q, b)
    with jax.enable_x64(True):
        st = stationary_distribution(jnp.asarray(a), jnp.asarray(np.linalg.cholesky(q)),
                                     jnp.asarray(b))  # fmt: skip
        p = np.asarray(st.scale @ st.scale.T)
        assert bool(st.stable)
        np.testing.assert_allclose(p, want_p, rtol=1e-10, atol=1e-10 * np.abs(want_p).max())
        np.testing.assert_allclose(np.asarray(st.mean), want_m, rtol=1e-10, atol=1e-12)
        resid = a @ p @ a.T + q - p
        assert np.abs(resid).max() <= 1e-12 * np.abs(p).max()
        assert np.allclose(np.asarray(st.scale), np.tril(np.asarray(st.scale)))
    st32 = stationary_distribution(jnp.asarray(a, jnp.float32),
                                   jnp.asarray(np.linalg.cholesky(q), jnp.float32))  # fmt: skip
    assert bool(st32.stable)
    p32 = np.asarray(st32.scale @ st32.scale.T, np.float64)
    np.testing.assert_allclose(p32, want_p, rtol=1e-4, atol=1e-4 * np.abs(want_p).max())


@pytest.mark.parametrize("radius", [1.0, 1.05, -1.0])
def test_no_stationary_distribution_is_flagged(radius):
    a = np.diag([0.5, radius])
    st = stationary_distribution(jnp.asarray(a, jnp.float32), jnp.eye(2))
    assert not bool(st.stable)


def _ragged_batch_with_inputs():
    model, _, y, mask, u = lds_ragged_batch(3, 40, 30)
    return model, y, mask, u


def test_fixed_keeps_the_initial_parameters_and_fixed_and_learn_never_decrease():
    """float64; "fixed" is EM on the other parameters with m_0, S_0 held (a coordinate
    block of the M-step), "learn" the full EM: both monotone to 1e-9 relative."""
    with jax.enable_x64(True):
        model, y, mask, u = _ragged_batch_with_inputs()
        start = model.init(jax.random.key(30), initial_mean=np.array([0.3, -1.0]),
                           initial_covariance=np.array([[2.0, 0.5], [0.5, 1.0]]))  # fmt: skip
        for initial in ("fixed", "learn"):
            fit = probseq.fit_lds_em(model, start, y, mask=mask, inputs=u, num_iters=20,
                                     tol=0.0, initial=initial)  # fmt: skip
            ll = fit.history["log_likelihood"]
            assert len(ll) == 20 and fit.info["initial"] == initial
            assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[:-1])), (initial, np.diff(ll))
            names = ("initial_mean", "initial_log_scale", "initial_scale_lower")
            same = [np.array_equal(fit.params[k], start[k]) for k in names]
            assert all(same) if initial == "fixed" else not all(same)
            assert not np.array_equal(fit.params["dynamics"], start["dynamics"])


def test_stationary_ties_the_start_to_the_fitted_dynamics_with_inputs():
    """After a "stationary" fit, S_0 = A S_0 A^T + Q (scipy's Lyapunov solver as the
    reference, 1e-8 relative in float64) and m_0 = (I - A)^-1 B u-bar."""
    import scipy.linalg

    with jax.enable_x64(True):
        model, y, mask, u = _ragged_batch_with_inputs()
        fit = probseq.fit_lds_em(model, model.init(jax.random.key(30)), y, mask=mask,
                                 inputs=u, num_iters=5)  # fmt: skip
        assert fit.info["initial"] == "stationary"
        assert fit.info["nonstationary_iterations"] == []
        mats = model.matrices(fit.params)
    a = np.asarray(mats.dynamics)
    s0 = scipy.linalg.solve_discrete_lyapunov(a, np.asarray(mats.dynamics_covariance))
    np.testing.assert_allclose(np.asarray(mats.initial_covariance), s0, rtol=1e-8)
    u_bar = np.asarray(u)[np.asarray(mask)].mean(0)
    m0 = np.linalg.solve(np.eye(2) - a, np.asarray(mats.dynamics_input) @ u_bar)
    np.testing.assert_allclose(np.asarray(mats.initial_mean), m0, rtol=1e-8, atol=1e-12)


def test_stationary_keeps_the_start_where_the_dynamics_have_no_stationary_distribution():
    """A random walk started from A = 1.02: no stationary distribution at the start, so
    iteration 0 is listed and the first E-step runs with the starting m_0, S_0 (its
    log-likelihood is the start's own: 1e-5 relative, the float32 rounding of the
    information-form E-step against the square-root filter, 2e-6 measured); the
    M-step's A = 0.99 has one, so later iterations are not listed. The helper itself
    leaves unstable parameters bit-identical."""
    from probseq.fit.lds_em import _stationary_initial

    model = probseq.LDS(state_dim=1, obs_dim=1)
    y = np.cumsum(np.random.default_rng(0).normal(size=(200, 1)), axis=0)
    start = model.init(jax.random.key(0), dynamics=np.array([[1.02]]))
    fit = probseq.fit_lds_em(model, start, y, num_iters=3, tol=0.0)
    assert fit.info["nonstationary_iterations"] == [0]
    ll = fit.history["log_likelihood"]
    np.testing.assert_allclose(ll[0], float(probseq.log_prob(model, start, y)), rtol=1e-5)
    assert abs(float(fit.params["dynamics"][0, 0])) < 1
    same, stable = _stationary_initial(model, start, jnp.zeros((0,)))
    assert not bool(stable)
    for name, value in start.items():
        assert np.array_equal(same[name], value), name


def test_stationary_scores_held_out_windows_like_the_true_model_and_learn_does_not():
    """One sequence of 1000 steps from a 2-D rotating system (float64, 30 EM iterations
    from a start near the truth), then 500 further steps cut into 10 windows of 50, each
    scored from the fitted initial distribution (as the CLI scores valid/test parts).
    Measured over seeds 1-5, held-out nats/step minus the true model's: "stationary"
    -0.004..+0.002, "fixed" (S_0 = I) -0.016..+0.001, "learn" -2.1..-0.32 (its S_0 is
    the smoothed covariance of one z_1, so each window's first step costs tens of
    nats). Asked: "stationary" within 0.02 nats/step of the truth (the estimation
    error of ~9 parameters from 1000 steps is ~9 / 2000 per step), "learn" worse by
    at least 0.2."""
    theta = 0.4
    a = 0.97 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    q, c, r = 0.1 * np.eye(2), np.array([[1.0, 0.3]]), np.array([[0.05]])
    with jax.enable_x64(True):
        model = probseq.LDS(state_dim=2, obs_dim=1)
        st = stationary_distribution(jnp.asarray(a), jnp.asarray(np.linalg.cholesky(q)))
        s0 = st.scale @ st.scale.T
        true = model.init(jax.random.key(0), dynamics=a, dynamics_covariance=q, emission=c,
                          emission_covariance=r, initial_covariance=s0)  # fmt: skip
        y = np.asarray(probseq.sample(model, true, jax.random.key(1), 1500))
        train, held = y[:1000], y[1000:].reshape(10, 50, 1)
        start = model.init(jax.random.key(2), dynamics=0.8 * a, dynamics_covariance=2 * q,
                           emission=0.8 * c, emission_covariance=4 * r)  # fmt: skip

        def held_out(params):
            return float(probseq.log_prob(model, params, held).sum()) / 500

        want = held_out(true)

        def fitted(**initial):
            fit = probseq.fit_lds_em(model, start, train, num_iters=30, tol=0.0, **initial)
            return held_out(fit.params)

        got = {init: fitted(initial=init) for init in ("stationary", "learn")}
        got["default"] = fitted()
    assert abs(got["stationary"] - want) <= 0.02, (got, want)
    assert got["learn"] <= want - 0.2, (got, want)
    assert got["default"] == got["stationary"]


def test_bad_initial_is_refused_by_name(tmp_path):
    from probseq import spec

    model = probseq.LDS(state_dim=1, obs_dim=1)
    params = model.init(jax.random.key(0))
    y = np.zeros((10, 1))
    with pytest.raises(ValueError, match=r"initial.*'stationary'.*'learn'.*'fixed'.*'diffuse'"):
        probseq.fit_lds_em(model, params, y, initial="diffuse")
    with pytest.raises(ValueError, match=r"initial.*'stationary'.*'learn'.*'fixed'"):
        probseq.fit_em(model, params, y, initial="diffuse")
    hmm = probseq.GaussianHMM(num_states=2, obs_dim=1)
    with pytest.raises(ValueError, match="initial= is a setting of an LDS"):
        probseq.fit_em(hmm, hmm.init(jax.random.key(0)), y, initial="learn")

    text = pathlib.Path("models/lds_series.toml").read_text().split("[fit]")[0]
    base = {"data": {"kind": "series"}, "model": {"family": "lds", "state_dim": 2}}
    with pytest.raises(spec.SpecError, match=r"\[fit\] \(method 'em'\)\.initial must be one "
                       r"of 'stationary', 'learn', 'fixed'; got 'diffuse'"):  # fmt: skip
        spec.parse_spec({**base, "fit": {"method": "em", "initial": "diffuse"}})
    with pytest.raises(spec.SpecError, match="unknown key 'initial'"):
        spec.parse_spec({**base, "fit": {"method": "sgd", "initial": "learn"}})
    hmm_spec = {"data": {"kind": "series"}, "model": {"family": "hmm", "num_states": 2}}
    with pytest.raises(spec.SpecError, match="unknown key 'initial'"):
        spec.parse_spec({**hmm_spec, "fit": {"method": "em", "initial": "learn"}})
    good = tmp_path / "lds.toml"
    good.write_text(text + '[fit]\nmethod = "em"\nnum_iters = 2\ninitial = "fixed"\n')
    s = spec.load_spec(good)
    assert s.fit["initial"] == "fixed"
    model = s.build_model(obs_dim=1)
    train = Split(np.random.default_rng(0).normal(size=(1, 12, 1)), np.ones((1, 12), bool))
    fit = s.fit_model(model, s.init_params(model), train, progress=False)
    assert fit.info["initial"] == "fixed"


def test_family_fit_keys_are_checked():
    from probseq.families.lds import SPEC
    from probseq.families.registry import POSITIVE_INT

    assert "initial" in SPEC.fit_keys["em"]
    with pytest.raises(ValueError, match=r"fit_keys for methods \['ls'\]"):
        SPEC._replace(fit_keys={"ls": {"x": POSITIVE_INT}}).check()
    with pytest.raises(ValueError, match="every fit key's check must be a Key"):
        SPEC._replace(fit_keys={"em": {"initial": "learn"}}).check()
