"""The HMM zoo (issue 23): Poisson, Bernoulli, Gaussian-mixture and full / tied /
spherical Gaussian emissions, against independent references.

References: brute-force enumeration of all K**T state paths with scipy.stats emission
densities (log_prob and smoothed marginals, every family); hmmlearn's PoissonHMM,
GMMHMM and GaussianHMM (log-likelihood, posteriors, one EM iteration from the same
start); a float64 NumPy M-step for the Bernoulli HMM (hmmlearn has none). Float64
checks run inside ``jax.enable_x64(True)``.

Tolerances (one line of reason each):
* brute force vs probseq, float64: 1e-11 relative -- the same sums over <= 81 paths in
  another order; a few ulps.
* hmmlearn vs probseq, float64: log p 1e-10 relative, posteriors 1e-9 absolute, one EM
  iteration's parameters 1e-8 relative -- two exact float64 forward-backward passes
  (log space vs scaled), then the same normalised moments; the covariances go through
  a Cholesky factor and back (~1e-15 relative).
* EM never decreases: each step's change >= -1e-10 |log p| (float64 rounding only).
* generic operations, float32: finite values and consistent sums to 1e-5 relative.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import probseq
from probseq import io, spec, workflow
from probseq.heads import MultivariateNormalHead

hmmlearn_hmm = pytest.importorskip("hmmlearn.hmm")

K, D, M = 3, 2, 2
LENGTHS = (4, 2, 3)  # tiny: brute force enumerates 3**4 paths


# ------------------------------------------------------------ random true parameters
def _markov(rng, k=K):
    return rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k), size=k)


def _spd(rng, d=D):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.5 * np.eye(d)


class Case:
    """One emission family: the model, float64 parameters set exactly, scipy's
    log p(x | z = k) (T, K), hmmlearn's model with the same parameters (or None)
    and data drawn from the truth."""

    def __init__(self, name, rng):
        self.name = name
        pi, a = _markov(rng)
        self.pi, self.a = pi, a
        if name == "poisson":
            rates = rng.uniform(0.5, 6.0, size=(K, D))
            self.model = probseq.PoissonHMM(K, D)
            self.kw = {"rates": rates}
            self.loglik = lambda x: stats.poisson.logpmf(x[:, None, :], rates[None]).sum(-1)
            self.draw = lambda z: rng.poisson(rates[z]).astype(float)
            self.truth = rates
        elif name == "bernoulli":
            probs = rng.uniform(0.1, 0.9, size=(K, D + 1))
            self.model = probseq.BernoulliHMM(K, D + 1)
            self.kw = {"emission_probs": probs}
            self.loglik = lambda x: stats.bernoulli.logpmf(x[:, None, :], probs[None]).sum(-1)
            self.draw = lambda z: (rng.uniform(size=probs[z].shape) < probs[z]).astype(float)
            self.truth = probs
        elif name == "gmm":
            w = rng.dirichlet(np.ones(M), size=K)
            means = rng.normal(scale=2.0, size=(K, M, D))
            scales = rng.uniform(0.5, 1.5, size=(K, M, D))
            self.model = probseq.GaussianMixtureHMM(K, D, M)
            self.kw = {"weights": w, "means": means, "scales": scales}

            def loglik(x):
                comp = stats.norm.logpdf(x[:, None, None, :], means[None], scales[None]).sum(-1)
                return logsumexp(np.log(w)[None] + comp, axis=-1)

            def draw(z):
                m = rng.choice(M, p=w[z])
                return rng.normal(means[z, m], scales[z, m])

            self.loglik, self.draw, self.truth = loglik, draw, (w, means, scales)
        else:  # full, tied, spherical Gaussians
            means = rng.normal(scale=2.0, size=(K, D))
            if name == "full":
                covs = np.stack([_spd(rng) for _ in range(K)])
                compact = covs
            elif name == "tied":
                compact = _spd(rng)
                covs = np.broadcast_to(compact, (K, D, D))
            else:
                compact = rng.uniform(0.3, 2.0, size=K)
                covs = compact[:, None, None] * np.eye(D)
            self.model = probseq.GaussianHMM(K, D, covariance_type=name)
            self.kw = {"means": means, "covariances": compact}
            self.loglik = lambda x: np.stack(
                [stats.multivariate_normal.logpdf(x, means[k], covs[k]) for k in range(K)], -1
            )
            self.draw = lambda z: rng.multivariate_normal(means[z], covs[z])
            self.truth, self.covs, self.compact = means, covs, compact

    def params64(self):
        return self.model.init(
            jax.random.key(0),
            initial_probs=self.pi,
            transition_matrix=self.a,
            dtype=jnp.float64,
            **self.kw,
        )

    def sample(self, rng, lengths):
        out = []
        for n in lengths:
            z = [rng.choice(K, p=self.pi)]
            for _ in range(n - 1):
                z.append(rng.choice(K, p=self.a[z[-1]]))
            out.append(np.stack([self.draw(k) for k in z]))
        return out

    def hmmlearn(self, **kwargs):
        """hmmlearn's model with these parameters (None for Bernoulli)."""
        common = {"n_components": K, "init_params": "", **kwargs}
        if self.name == "poisson":
            m = hmmlearn_hmm.PoissonHMM(**common)
            m.lambdas_ = self.kw["rates"]
        elif self.name == "gmm":
            m = hmmlearn_hmm.GMMHMM(n_mix=M, covariance_type="diag", **common)
            m.weights_, m.means_ = self.kw["weights"], self.kw["means"]
            m.covars_ = self.kw["scales"] ** 2
        elif self.name in ("full", "tied", "spherical"):
            m = hmmlearn_hmm.GaussianHMM(
                covariance_type=self.name, covars_prior=0.0, covars_weight=0.0, **common
            )
            m.means_, m.covars_ = self.kw["means"], self.compact
        else:
            return None
        m.startprob_, m.transmat_ = self.pi, self.a
        return m


NAMES = ["poisson", "bernoulli", "gmm", "full", "tied", "spherical"]


def _fast(*names):
    """NAMES with those not in ``names`` marked slow (the time budget: every family's
    reference checks run in the fast tier; of the costlier tables, mostly compilation,
    the families whose code paths differ most: a mixture head, a shared covariance,
    a spherical one)."""
    return [n if n in names else pytest.param(n, marks=pytest.mark.slow) for n in NAMES]


def _brute_force(pi, a, ll):
    """(log p(x), smoothed marginals (T, K)) summing over all K**T paths of ll (T, K)."""
    t = ll.shape[0]
    paths = np.array(list(itertools.product(range(K), repeat=t)))
    log_joint = np.log(pi)[paths[:, 0]] + ll[np.arange(t), paths].sum(-1)
    log_joint += np.log(a)[paths[:, :-1], paths[:, 1:]].sum(-1)
    total = logsumexp(log_joint)
    post = np.exp(log_joint - total)
    gamma = np.stack([np.bincount(paths[:, s], weights=post, minlength=K) for s in range(t)])
    xi = np.zeros((K, K))
    for s in range(t - 1):
        np.add.at(xi, (paths[:, s], paths[:, s + 1]), post)
    return total, gamma, xi


@pytest.fixture(autouse=True, scope="module")
def _tight():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_posteriors_and_one_em_iteration_equal_brute_force_and_hmmlearn(name):
    """Brute force on the tiny sequences, hmmlearn on all of them (one padded batch, so
    one compilation), then one EM iteration against hmmlearn's (Bernoulli: below)."""
    rng = np.random.default_rng(NAMES.index(name))
    case = Case(name, rng)
    lengths = list(LENGTHS) + [40, 25]
    xs = case.sample(rng, lengths)
    params = case.params64()
    lp = np.asarray(probseq.log_prob(case.model, params, xs))
    gamma = np.asarray(case.model.smoother(params, xs))
    steps = np.asarray(probseq.step_log_probs(case.model, params, xs))
    np.testing.assert_allclose(steps.sum(-1), lp, rtol=1e-11)
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(gamma[i, len(x) :], 0.0)
        if i < len(LENGTHS):
            total, g, _ = _brute_force(case.pi, case.a, case.loglik(x))
            np.testing.assert_allclose(lp[i], total, rtol=1e-11)
            np.testing.assert_allclose(gamma[i, : len(x)], g, rtol=1e-10, atol=1e-13)
    ref = case.hmmlearn()
    if ref is None:
        return
    x_cat = np.concatenate(xs)
    x_ref = x_cat.astype(int) if name == "poisson" else x_cat
    for i, x in enumerate(xs):
        np.testing.assert_allclose(lp[i], ref.score(x.astype(x_ref.dtype)), rtol=1e-10)
    flat = np.concatenate([gamma[i, :n] for i, n in enumerate(lengths)])
    np.testing.assert_allclose(flat, ref.predict_proba(x_ref, lengths), atol=1e-9)

    fit = probseq.fit_em(case.model, params, xs, num_iters=1, tol=0.0)
    every = {"poisson": "stl", "gmm": "stmcw"}.get(name, "stmc")
    one = case.hmmlearn(params=every, n_iter=1, tol=0.0)
    one.fit(x_ref, lengths)
    pi, a, emission = case.model.probabilities(fit.params)
    np.testing.assert_allclose(pi, one.startprob_, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(a, one.transmat_, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(fit.history["log_likelihood"], one.monitor_.history, rtol=1e-10)
    if name == "poisson":
        np.testing.assert_allclose(emission, one.lambdas_, rtol=1e-8)
    elif name == "gmm":
        w, means, scales = (np.asarray(e) for e in emission)
        np.testing.assert_allclose(w, one.weights_, rtol=1e-8)
        np.testing.assert_allclose(means, one.means_, rtol=1e-8, atol=1e-12)
        # hmmlearn's GMMHMM centres the second moments on the means *before* the
        # M-step (_emissions.py, 'c_n'), so its variances exceed the maximiser of Q
        # by (new mean - old mean)^2: sum r (x - old)^2 / n = var + (new - old)^2.
        shift = (means - case.kw["means"]) ** 2
        np.testing.assert_allclose(scales**2 + shift, one.covars_, rtol=1e-8)
    else:
        np.testing.assert_allclose(emission[0], one.means_, rtol=1e-8, atol=1e-12)
        covs = np.asarray(case.model.covariances(fit.params))
        if name == "spherical":
            # hmmlearn's M-step leaves a spherical _covars_ as (K, D) copies of the
            # per-state variance (and covars_ then misreads it): read the variance.
            var = np.asarray(one._covars_)
            np.testing.assert_allclose(var, var[:, :1] * np.ones(D), rtol=1e-15)
            np.testing.assert_allclose(covs, var[:, :1, None] * np.eye(D), rtol=1e-8)
        else:
            np.testing.assert_allclose(covs, one.covars_, rtol=1e-8, atol=1e-12)
        compact = np.asarray(emission[1])
        assert compact.shape == case.model.covariance_shape()
        np.testing.assert_allclose(
            compact if name != "spherical" else compact[:, None, None] * np.eye(D),
            covs if name != "tied" else covs[0],
            rtol=1e-12,
        )


def test_bernoulli_em_iteration_equals_numpy_m_step_on_brute_force_posteriors():
    rng = np.random.default_rng(20)
    case = Case("bernoulli", rng)
    xs = case.sample(rng, LENGTHS)
    fit = probseq.fit_em(case.model, case.params64(), xs, num_iters=1, tol=0.0)
    n_init, n_trans = np.zeros(K), np.zeros((K, K))
    weighted, total = np.zeros((K, D + 1)), np.zeros(K)
    for x in xs:
        _, g, xi = _brute_force(case.pi, case.a, case.loglik(x))
        n_init += g[0]
        n_trans += xi
        weighted += g.T @ x
        total += g.sum(0)
    pi, a, probs = case.model.probabilities(fit.params)
    np.testing.assert_allclose(pi, n_init / n_init.sum(), rtol=1e-10)
    np.testing.assert_allclose(a, n_trans / n_trans.sum(1, keepdims=True), rtol=1e-10)
    np.testing.assert_allclose(probs, weighted / total[:, None], rtol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_em_never_decreases_and_recovers_the_truth(name):
    rng = np.random.default_rng(30 + NAMES.index(name))
    case = Case(name, rng)
    xs = case.sample(rng, [150] * 4)
    model = case.model
    fit = probseq.fit_em(
        model,
        model.init(jax.random.key(3), dtype=jnp.float64),
        xs,
        num_iters=40,
        tol=0.0,
        num_restarts=4,
        key=jax.random.key(5),
    )
    ll = np.asarray(fit.history["log_likelihood"])
    assert np.isfinite(ll).all()
    assert (np.diff(ll) >= -1e-10 * np.abs(ll[:-1])).all(), np.diff(ll)
    assert ll[-1] > ll[0]
    # The best of 4 random starts explains the 600 steps at least as well as the true
    # parameters, up to 0.5% (the maximum likelihood is above the truth's; with one
    # start the full-covariance and Bernoulli fits stop 1-5% short, at local optima).
    truth = float(np.sum(probseq.log_prob(model, case.params64(), xs)))
    assert ll[-1] > truth - 0.005 * abs(truth), (ll[-1], truth)


def test_full_covariance_m_step_floors_a_degenerate_state():
    """A state that sees one repeated point gets covariance MIN_VARIANCE * I, finite,
    and other states' covariances are exactly the weighted sample covariances."""
    head = MultivariateNormalHead(D, "full")
    rng = np.random.default_rng(40)
    x = np.concatenate([np.tile([[1.0, -2.0]], (5, 1)), rng.normal(size=(20, D))])
    w = np.zeros((25, 2))
    w[:5, 0], w[5:, 1] = 1.0, rng.uniform(0.2, 1.0, size=20)
    raw = head.init_components(jax.random.key(0), 2, jnp.float64)
    out = head.m_step(jnp.asarray(w), jnp.asarray(x), raw)
    chol = (
        np.tril(np.asarray(out["tril"]), -1)
        + np.eye(D) * np.exp(np.diagonal(np.asarray(out["tril"]), axis1=-2, axis2=-1))[..., None]
    )
    cov = chol @ np.swapaxes(chol, -1, -2)
    np.testing.assert_allclose(cov[0], head.MIN_VARIANCE * np.eye(D), rtol=1e-6, atol=1e-12)
    mean = w[:, 1] @ x / w[:, 1].sum()
    ref = ((x - mean).T * w[:, 1]) @ (x - mean) / w[:, 1].sum()
    np.testing.assert_allclose(cov[1], ref, rtol=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: probseq.GaussianHMM(2, 2, covariance_type="banded"), "covariance_type"),
        (
            lambda: probseq.PoissonHMM(2, 1).init(jax.random.key(0), rates=[[1.0], [0.0]]),
            "rates must be positive",
        ),
        (
            lambda: probseq.BernoulliHMM(2, 1).init(
                jax.random.key(0), emission_probs=[[1.0], [0.5]]
            ),
            "strictly between 0 and 1",
        ),
        (
            lambda: probseq.GaussianMixtureHMM(2, 1, 2).init(
                jax.random.key(0), weights=[[0.5, 0.6], [1.0, 0.0]]
            ),
            "weights",
        ),
        (
            lambda: probseq.GaussianHMM(2, 2, covariance_type="full").init(
                jax.random.key(0), covariances=np.ones((2, 2, 2))
            ),
            "positive definite",
        ),
        (
            lambda: probseq.GaussianHMM(2, 2, covariance_type="tied").init(
                jax.random.key(0), covariances=np.eye(2)[None]
            ),
            r"shape \(2, 2\)",
        ),
        (
            lambda: probseq.GaussianHMM(2, 2, covariance_type="full").init(
                jax.random.key(0), scales=np.ones((2, 2))
            ),
            "give covariances",
        ),
        (
            lambda: (
                probseq.PoissonHMM(2, 1).init(jax.random.key(0))
                and probseq.log_prob(
                    probseq.PoissonHMM(2, 1),
                    probseq.PoissonHMM(2, 1).init(jax.random.key(0)),
                    np.array([[1.0], [0.5]]),
                )
            ),
            "non-negative integer counts",
        ),
    ],
)
def test_bad_input_says_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------ the generic code, every family
def _float32_case(name):
    rng = np.random.default_rng(50 + NAMES.index(name))
    case = Case(name, rng)
    xs = np.stack(case.sample(rng, [8, 8]))  # (2, 8, D)
    return case.model, xs


@pytest.mark.parametrize("name", _fast("gmm", "tied", "spherical"))  # ~5-10 s each
def test_every_generic_operation(name):
    with jax.enable_x64(False):
        model, x = _float32_case(name)
        key = jax.random.key(1)
        params = model.init(key)
        lp = np.asarray(probseq.log_prob(model, params, x))
        assert lp.dtype == np.float32 and np.isfinite(lp).all()
        steps = np.asarray(probseq.step_log_probs(model, params, x))
        np.testing.assert_allclose(steps.sum(-1), lp, rtol=1e-5)
        traced = jax.jit(lambda p, x: probseq.log_prob(model, p, x))(params, jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(traced), lp, rtol=1e-5)
        d = probseq.SequenceDistribution(model, params, num_timesteps=x.shape[1])
        np.testing.assert_allclose(np.asarray(d.log_prob(jnp.asarray(x))), lp, rtol=1e-5)

        draws = np.asarray(probseq.sample(model, params, key, 5, num_samples=3, prefix=x))
        assert draws.shape == (3, 2, 5) + model.head.event_shape
        assert np.isfinite(np.asarray(probseq.log_prob(model, params, draws[0]))).all()
        fc = probseq.forecast(model, params, key, x, 3, 4)
        assert fc.samples.shape[:3] == (4, 2, 3)
        np.testing.assert_allclose(fc.history_log_prob, lp, rtol=1e-5)

        em = probseq.fit_em(model, params, x, num_iters=3)
        ll = np.asarray(em.history["log_likelihood"])
        assert (np.diff(ll) >= -1e-4 * np.abs(ll[:-1])).all()
        sgd = probseq.fit_sgd(
            model,
            params,
            x,
            key=key,
            num_epochs=3,
            batch_size=2,
            learning_rate=1e-2,
            progress=False,
        )
        assert np.isfinite(np.asarray(probseq.log_prob(model, sgd.params, x))).all()
        table = probseq.compare({"start": (model, params), "em": (model, em.params)}, x)
        assert "em" in str(table) and "start" in str(table)
        for posterior in (model.filter(params, x), model.smoother(params, x)):
            np.testing.assert_allclose(np.asarray(posterior).sum(-1), 1.0, rtol=1e-5)
        assert model.most_likely_states(params, x).shape == (2, 8)


SPEC_MODEL = {
    "poisson": {"head": "poisson"},
    "bernoulli": {"head": "bernoulli"},
    "gmm": {"head": "mixture_normal", "num_components": 2},
    "full": {"covariance_type": "full"},
    "tied": {"covariance_type": "tied"},
    "spherical": {"covariance_type": "spherical"},
}


@pytest.mark.parametrize(
    "name, method",
    [(n, "em") for n in ("poisson", "gmm", "tied")]
    + [pytest.param(n, "em", marks=pytest.mark.slow) for n in ("bernoulli", "full", "spherical")]
    + [("gmm", "sgd")],
)
def test_spec_fit_save_and_load(name, method, tmp_path):
    rng = np.random.default_rng(60 + NAMES.index(name))
    case = Case(name, rng)
    values = case.sample(rng, [80])[0]
    fit = (
        {"method": "em", "num_iters": 2}
        if method == "em"
        else {"method": "sgd", "num_epochs": 1, "batch_size": 4}
    )
    s = spec.parse_spec(
        {
            "data": {"kind": "series", "sequence_length": 16, "standardize": False},
            "model": {"family": "hmm", "num_states": 2, **SPEC_MODEL[name]},
            "fit": fit,
        }
    )
    source = workflow.Source(
        "series", values=values, names=tuple(f"c{i}" for i in range(values.shape[1]))
    )
    with jax.enable_x64(False):
        run = workflow.fit_spec(s, source, progress=False)
        head = run.model.head
        if name in ("full", "tied", "spherical"):
            assert head == MultivariateNormalHead(values.shape[1], name)
        io.save_run(run, tmp_path / "run")
        back = probseq.load(tmp_path / "run")
        assert back.model == run.model
        x = values[None, :16]
        np.testing.assert_array_equal(np.asarray(back.log_prob(x)), np.asarray(run.log_prob(x)))
    # ... and a float32 run loads under x64 (cast up exactly; the score to float32 rounding)
    up = probseq.load(tmp_path / "run")
    assert {a.dtype for a in jax.tree.leaves(up.params)} == {jnp.dtype(jnp.float64)}
    np.testing.assert_allclose(np.asarray(up.log_prob(x)), np.asarray(run.log_prob(x)), rtol=1e-5)


@pytest.mark.parametrize("name", _fast("poisson", "gmm", "full"))
def test_x64_parameters_of_either_precision_and_data_of_the_other(name):
    """Under x64 (this module's setting): float32 parameters with float64 data keep
    float32 through log_prob, the posteriors and EM, and agree with float64 ones."""
    model, x = _float32_case(name)
    p64 = model.init(jax.random.key(2))
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    lp64 = np.asarray(probseq.log_prob(model, p64, x))
    lp32 = np.asarray(probseq.log_prob(model, p32, x))
    assert lp64.dtype == np.float64 and lp32.dtype == np.float32
    np.testing.assert_allclose(lp32, lp64, rtol=1e-4)
    em = probseq.fit_em(model, p32, x, num_iters=2)
    assert {a.dtype for a in jax.tree.leaves(em.params)} == {jnp.dtype(jnp.float32)}
    assert model.smoother(p32, x).dtype == jnp.float32


def test_spec_covariance_type_needs_a_normal_head():
    s = spec.parse_spec(
        {
            "data": {"kind": "series"},
            "model": {
                "family": "hmm",
                "num_states": 2,
                "head": "poisson",
                "covariance_type": "full",
            },
            "fit": {"method": "em"},
        }
    )
    with pytest.raises(ValueError, match="covariance_type = 'full' needs head = 'normal'"):
        s.build_model(obs_dim=2)
