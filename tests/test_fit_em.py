"""EM for HMMs: autodiff expected statistics and M-steps against hmmlearn, monotone
objective, priors, restarts, recovery of a known HMM, compilation reuse.

Tolerances: float64 statistics and parameters agree with hmmlearn to 1e-8 / 1e-6
relative; both compute the same sums in a different order (scaled forward vs log
space), so differences are a few ulps per step, amplified by at most the iteration
count.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_logs import compiled_messages
from references import hmmlearn_categorical as _hmmlearn_categorical
from references import hmmlearn_gaussian as _hmmlearn_gaussian
from references import init_categorical64 as _init_categorical64
from references import init_gaussian64 as _init_gaussian64
from references import ragged_tokens as _ragged
from references import random_hmm as _random_hmm

import probseq
from probseq.fit import DirichletPrior, expected_statistics, fit_em
from probseq.fit import em as emmod


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _random_problem(seed, k, v, lengths):
    """A random K-state, V-symbol CategoricalHMM, float64 params set to it, ragged tokens."""
    rng = np.random.default_rng(seed)
    pi, a, b = _random_hmm(rng, k, v)
    xs = _ragged(rng, v, lengths)
    model = probseq.CategoricalHMM(k, v)
    return (pi, a, b), xs, model, _init_categorical64(model, pi, a, b)


def _emission_counts(gamma, xs, v):
    """Expected emission counts (K, V) from posteriors gamma (N, T, K) of ragged tokens."""
    counts = np.zeros((gamma.shape[-1], v))
    for i, x in enumerate(xs):
        np.add.at(counts.T, x, gamma[i, : len(x)])
    return counts


def _fit_ten_iterations_and_compare_with_hmmlearn(model, params, xs, lengths, pi, a, b):
    """Ten EM iterations from params equal hmmlearn's from the same start; returns the fit."""
    fit = fit_em(model, params, xs, num_iters=10, tol=0.0)
    ref = _hmmlearn_categorical(pi, a, b, params="ste", n_iter=10, tol=0.0)
    ref.fit(np.concatenate(xs)[:, None], lengths)
    got = [np.asarray(p) for p in model.probabilities(fit.params)]
    for g, r in zip(got, (ref.startprob_, ref.transmat_, ref.emissionprob_), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(fit.history["log_likelihood"], ref.monitor_.history, rtol=1e-9)
    assert (np.diff(fit.history["log_likelihood"]) >= -1e-9).all()
    return fit


@pytest.mark.parametrize("k, v, seed", [(2, 3, 0), (4, 6, 1), (7, 5, 2)])
def test_autodiff_statistics_equal_hmmlearn_estep(k, v, seed):
    lengths = [1, 9, 40, 23]
    (pi, a, b), xs, model, params = _random_problem(seed, k, v, lengths)
    stats = expected_statistics(model, params, xs)
    gamma = np.asarray(stats.posteriors)
    counts = _emission_counts(gamma, xs, v)
    ref, ref_ll = _hmmlearn_categorical(pi, a, b)._do_estep(np.concatenate(xs)[:, None], lengths)
    np.testing.assert_allclose(float(stats.log_likelihood), ref_ll, rtol=1e-10)
    np.testing.assert_allclose(stats.initial_counts, ref["start"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(stats.transition_counts, ref["trans"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(counts, ref["obs"], rtol=1e-8, atol=1e-12)
    # posteriors are distributions on valid steps and exactly 0 on padding
    mask = np.arange(gamma.shape[1])[None] < np.array(lengths)[:, None]
    np.testing.assert_allclose(gamma.sum(-1), mask.astype(float), atol=1e-12)


def test_autodiff_statistics_equal_brute_force():
    """E[transitions] by enumerating all K**T paths of a tiny HMM with a structural zero."""
    pi = np.array([0.6, 0.4, 0.0])
    a = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5], [0.3, 0.3, 0.4]])
    b = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    x = np.array([0, 1, 1, 0, 1])
    model = probseq.CategoricalHMM(3, 2)
    params = _init_categorical64(model, pi, a, b)
    stats = expected_statistics(model, params, x)
    trans, first, z_total = np.zeros((3, 3)), np.zeros(3), 0.0
    for path in itertools.product(range(3), repeat=len(x)):
        p = pi[path[0]] * b[path[0], x[0]]
        for t in range(1, len(x)):
            p *= a[path[t - 1], path[t]] * b[path[t], x[t]]
        z_total += p
        first[path[0]] += p
        for t in range(1, len(x)):
            trans[path[t - 1], path[t]] += p
    np.testing.assert_allclose(float(stats.log_likelihood), np.log(z_total), rtol=1e-12)
    np.testing.assert_allclose(stats.transition_counts, trans / z_total, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(stats.initial_counts, first / z_total, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("k, v, seed", [(3, 5, 0), (5, 8, 3)])
def test_ten_iterations_equal_hmmlearn_fit(k, v, seed):
    lengths = [50, 80, 33, 7]
    (pi, a, b), xs, model, params = _random_problem(seed, k, v, lengths)
    fit = _fit_ten_iterations_and_compare_with_hmmlearn(model, params, xs, lengths, pi, a, b)
    assert fit.info["num_iters"] == 10


def test_gaussian_em_equals_hmmlearn_maximum_likelihood():
    rng = np.random.default_rng(5)
    k, d = 3, 2
    pi, a = rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k) * 3, size=k)
    means, scales = rng.normal(size=(k, d)) * 2, rng.uniform(0.5, 1.5, (k, d))
    lengths = [60, 45, 90]
    xs = [rng.normal(size=(n, d)) * 1.5 for n in lengths]
    model = probseq.GaussianHMM(k, d)
    params = _init_gaussian64(model, pi, a, means, scales)
    fit = fit_em(model, params, xs, num_iters=8, tol=0.0)
    # hmmlearn without its default variance prior: pure maximum likelihood
    ref = _hmmlearn_gaussian(
        pi, a, means, scales, params="stmc", n_iter=8, tol=0.0, covars_prior=0.0, covars_weight=0.0
    )
    ref.fit(np.concatenate(xs), lengths)
    got_pi, got_a, (got_mu, got_sd) = model.probabilities(fit.params)
    np.testing.assert_allclose(got_pi, ref.startprob_, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(got_a, ref.transmat_, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(got_mu, ref.means_, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(got_sd) ** 2, np.diagonal(ref.covars_, axis1=1, axis2=2), rtol=1e-6
    )
    assert (np.diff(fit.history["log_likelihood"]) >= -1e-9).all()


def test_map_step_is_normalized_counts_plus_pseudocounts_and_objective_rises():
    rng = np.random.default_rng(1)
    k, v = 3, 4
    model = probseq.CategoricalHMM(k, v)
    params = model.init(jax.random.key(1), dtype=jnp.float64)
    xs = _ragged(rng, v, [30, 12, 25])
    prior = DirichletPrior(initial=2.0, transition=np.full((k, k), 1.5) + np.eye(k), emission=3.0)
    stats = expected_statistics(model, params, xs)
    counts = _emission_counts(np.asarray(stats.posteriors), xs, v)
    one = fit_em(model, params, xs, num_iters=1, prior=prior)
    expect_pi = np.asarray(stats.initial_counts) + 1.0
    expect_a = np.asarray(stats.transition_counts) + np.full((k, k), 0.5) + np.eye(k)
    expect_b = counts + 2.0
    got = model.probabilities(one.params)
    for g, e in zip(got, (expect_pi, expect_a, expect_b), strict=True):
        np.testing.assert_allclose(g, e / e.sum(-1, keepdims=True), rtol=1e-10)
    many = fit_em(model, params, xs, num_iters=30, tol=0.0, prior=prior)
    assert (np.diff(many.history["objective"]) >= -1e-9).all()


def test_log_likelihood_never_decreases_float32():
    """float32 (the default): monotone up to float32 rounding of a ~1e4 total."""
    with jax.enable_x64(False):
        rng = np.random.default_rng(2)
        model = probseq.CategoricalHMM(4, 6)
        params = model.init(jax.random.key(3))
        xs = _ragged(rng, 6, [500, 300, 800])
        fit = fit_em(model, params, xs, num_iters=40, tol=0.0)
        ll = fit.history["log_likelihood"]
        assert jax.tree.leaves(fit.params)[0].dtype == np.float32  # computed in float32
        assert ll.dtype == np.float64  # FitHistory's fields are float64 whatever the fit's
        assert (np.diff(ll) >= -1e-5 * np.abs(ll[:-1])).all()


def test_convergence_by_relative_tolerance():
    rng = np.random.default_rng(4)
    model = probseq.CategoricalHMM(2, 3)
    params = model.init(jax.random.key(0), dtype=jnp.float64)
    xs = _ragged(rng, 3, [200, 150])
    fit = fit_em(model, params, xs, num_iters=500, tol=1e-6)
    ll = fit.history["log_likelihood"]
    assert fit.info["converged"] and fit.info["num_iters"] == len(ll) < 500
    assert abs(ll[-1] - ll[-2]) <= 1e-6 * abs(ll[-2])
    assert (np.abs(np.diff(ll[:-1])) > 1e-6 * np.abs(ll[:-2])).all()


def test_restarts_keep_the_best():
    rng = np.random.default_rng(6)
    true = probseq.CategoricalHMM(3, 4)
    tp = true.init(
        jax.random.key(0),
        emission_probs=np.array(
            [[0.85, 0.05, 0.05, 0.05], [0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.45, 0.45]]
        ),
        dtype=jnp.float64,
    )
    xs = np.asarray(
        probseq.sample(true, tp, jax.random.key(rng.integers(1 << 30)), 100, num_samples=8)
    )
    start = true.init(jax.random.key(11), dtype=jnp.float64)
    single = fit_em(true, start, xs, num_iters=50)
    multi = fit_em(true, start, xs, num_iters=50, num_restarts=4, key=jax.random.key(2))
    finals = multi.info["restart_objectives"]
    assert finals.shape == (4,)
    assert multi.info["best_restart"] == int(np.argmax(finals))
    np.testing.assert_allclose(finals[0], single.history["objective"][-1], rtol=1e-9)
    assert multi.history["objective"][-1] >= single.history["objective"][-1] - 1e-9


# A known 3-state, 5-symbol HMM with distinct emissions (recovery and SGD-vs-EM tests).
THREE_STATE_A = np.array([[0.90, 0.05, 0.05], [0.10, 0.85, 0.05], [0.05, 0.15, 0.80]])
THREE_STATE_B = np.array(
    [
        [0.60, 0.20, 0.10, 0.05, 0.05],
        [0.05, 0.10, 0.70, 0.10, 0.05],
        [0.05, 0.05, 0.10, 0.20, 0.60],
    ]
)


def _match_states(est, true):
    """Best permutation of estimated states onto true ones (by transition error)."""
    k = true.shape[0]
    return min(
        itertools.permutations(range(k)), key=lambda p: np.abs(est[np.ix_(p, p)] - true).max()
    )


def test_recovers_a_known_three_state_hmm():
    a, b = THREE_STATE_A, THREE_STATE_B
    model = probseq.CategoricalHMM(3, 5)
    truth = _init_categorical64(model, np.full(3, 1 / 3), a, b)
    xs = probseq.sample(model, truth, jax.random.key(1), 500, num_samples=60)  # 30,000 steps
    fit = fit_em(
        model,
        model.init(jax.random.key(2), dtype=jnp.float64),
        xs,
        num_iters=300,
        tol=1e-8,
        num_restarts=3,
        key=jax.random.key(3),
    )
    _, est_a, est_b = (np.asarray(p) for p in model.probabilities(fit.params))
    perm = list(_match_states(est_a, a))
    assert np.abs(est_a[np.ix_(perm, perm)] - a).max() < 0.05
    assert np.abs(est_b[perm] - b).max() < 0.05
    true_ll = float(probseq.log_prob(model, truth, xs).sum())
    assert fit.history["log_likelihood"][-1] >= true_ll - 1.0  # ML fit at least as good


def test_second_fit_does_not_recompile():
    model = probseq.CategoricalHMM(3, 4)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 4, (5, 40))
    with compiled_messages() as first:
        fit_em(model, model.init(jax.random.key(0), dtype=jnp.float64), xs, num_iters=3)
    assert [m for m in first if "_em_iterations" in m], first  # the check below can fail
    with compiled_messages() as compiled:
        fit_em(model, model.init(jax.random.key(1), dtype=jnp.float64), xs + 0, num_iters=13)
    assert not [m for m in compiled if "_em_" in m], compiled


def test_poisson_hmm_em_is_monotone():
    model = probseq.HMM(2, probseq.heads.PoissonHead(obs_dim=1))
    rng = np.random.default_rng(0)
    z = (rng.uniform(size=400) < 0.5).astype(int)
    x = rng.poisson(np.where(z, 8.0, 1.0))[:, None].astype(float)
    fit = fit_em(model, model.init(jax.random.key(0), dtype=jnp.float64), x, num_iters=50)
    assert (np.diff(fit.history["log_likelihood"]) >= -1e-9).all()
    rates = np.sort(np.exp(np.asarray(fit.params.emission["log_rate"]).ravel()))
    np.testing.assert_allclose(rates, [1.0, 8.0], rtol=0.2)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m, p, x: fit_em(probseq.GRU(vocab_size=4, hidden_size=3), p, x),
            "fit_em fits hidden Markov models",
        ),
        (
            lambda m, p, x: fit_em(m, p, x, prior={"emissions": 2.0}),
            r"unknown key\(s\) \['emissions'\]",
        ),
        (lambda m, p, x: fit_em(m, p, x, prior={"transition": -1.0}), "finite concentrations > 0"),
        (
            lambda m, p, x: fit_em(m, p, x, prior={"transition": np.ones(5)}),
            r"broadcast to \(3, 3\)",
        ),
        (lambda m, p, x: fit_em(m, p, x, num_iters=0), "num_iters must be a positive int"),
        (lambda m, p, x: fit_em(m, p, x, num_restarts=3), "pass key="),
        (lambda m, p, x: fit_em(m, p, np.array([0, 7])), r"token id 7 at index \(0, 1\)"),
    ],
)
def test_bad_input(call, message):
    model = probseq.CategoricalHMM(3, 4)
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match=message):
        call(model, params, np.array([0, 1, 2, 3]))


def test_a_head_without_a_closed_form_m_step_points_to_fit_sgd():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class NoMStepHead(probseq.heads.MixtureNormalHead):
        has_m_step = False  # every built-in head has one (issue 23)

    model = probseq.HMM(2, NoMStepHead(obs_dim=1, num_components=2))
    message = "NoMStepHead emissions have no closed-form M-step.*fit_sgd"
    with pytest.raises(ValueError, match=message):
        fit_em(model, model.init(jax.random.key(0)), np.zeros((5, 1)))


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_autodiff_estep_equals_forward_backward(kind):
    """The gradient identity and the classic smoother give the same statistics."""
    rng = np.random.default_rng(8)
    if kind == "categorical":
        model = probseq.CategoricalHMM(4, 5)
        xs = _ragged(rng, 5, [17, 3, 40])
    else:
        model = probseq.GaussianHMM(3, 2)
        xs = [rng.normal(size=(n, 2)) * 2 for n in (17, 3, 40)]
    params = model.init(jax.random.key(4), dtype=jnp.float64)
    auto = expected_statistics(model, params, xs, estep="autodiff")
    fb = expected_statistics(model, params, xs, estep="forward_backward")
    for a, b in zip(auto, fb, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-12)
    fit_a = fit_em(model, params, xs, num_iters=5, tol=0.0, estep="autodiff")
    fit_b = fit_em(model, params, xs, num_iters=5, tol=0.0, estep="forward_backward")
    np.testing.assert_allclose(
        fit_a.history["log_likelihood"], fit_b.history["log_likelihood"], rtol=1e-10
    )
    with pytest.raises(ValueError, match="estep must be one of"):
        fit_em(model, params, xs, estep="viterbi")


def test_sgd_on_the_same_hmm_reaches_em_held_out_likelihood():
    """fit_sgd (Adam on the logits) vs fit_em on data from a known 3-state HMM:
    held-out log-likelihood per token within 1% (measured: 0.03%)."""
    with jax.enable_x64(False):
        a, b = THREE_STATE_A, THREE_STATE_B
        model = probseq.CategoricalHMM(3, 5)
        truth = model.init(
            jax.random.key(0),
            initial_probs=np.full(3, 1 / 3),
            transition_matrix=a,
            emission_probs=b,
        )
        train = np.asarray(probseq.sample(model, truth, jax.random.key(1), 500, num_samples=40))
        test = np.asarray(probseq.sample(model, truth, jax.random.key(5), 500, num_samples=20))
        start = model.init(jax.random.key(2))
        em = probseq.fit_em(
            model, start, train, num_iters=200, num_restarts=3, key=jax.random.key(3)
        )
        sgd = probseq.fit_sgd(
            model,
            start,
            train,
            key=jax.random.key(4),
            num_epochs=80,
            batch_size=4,
            learning_rate=0.1,
            progress=False,
        )
        per_token = {
            name: float(probseq.log_prob(model, p, test).sum()) / test.size
            for name, p in [("truth", truth), ("em", em.params), ("sgd", sgd.params)]
        }
        assert abs(per_token["sgd"] - per_token["em"]) < 0.01 * abs(per_token["em"]), per_token
        assert per_token["em"] > per_token["truth"] - 0.005, per_token


def test_chunked_estep_equals_hmmlearn_and_forward_backward():
    """Sequences long enough for "auto" to cut them into time chunks (T >= 128): the
    chunked E-step's statistics and ten EM iterations equal hmmlearn's and the
    sequential smoother's; restarts (one E-step per restart, lax.map) too."""
    k, v = 4, 6
    lengths = [300, 129, 7, 450]
    (pi, a, b), xs, model, params = _random_problem(9, k, v, lengths)
    assert emmod._resolve_estep("auto", len(xs), max(lengths), k) == "chunked"
    chunked = expected_statistics(model, params, xs, estep="chunked")
    fb = expected_statistics(model, params, xs, estep="forward_backward")
    for got, ref in zip(chunked, fb, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-10, atol=1e-12)
    ref_stats, ref_ll = _hmmlearn_categorical(pi, a, b)._do_estep(
        np.concatenate(xs)[:, None], lengths
    )
    np.testing.assert_allclose(float(chunked.log_likelihood), ref_ll, rtol=1e-10)
    np.testing.assert_allclose(chunked.transition_counts, ref_stats["trans"], rtol=1e-8)
    # fit_em's estep="auto" is chunked here
    _fit_ten_iterations_and_compare_with_hmmlearn(model, params, xs, lengths, pi, a, b)
    multi = fit_em(model, params, xs, num_iters=3, tol=0.0, num_restarts=2, key=jax.random.key(1))
    single = fit_em(model, params, xs, num_iters=3, tol=0.0, estep="forward_backward")
    np.testing.assert_allclose(
        multi.info["restart_objectives"][0], single.history["objective"][-1], rtol=1e-10
    )


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("family", ["categorical", "gaussian"])
def test_fit_em_chunked_equals_forward_backward(family, groups, monkeypatch):
    """fit_em's chunked E-step runs in the chunks' own layout (time-major rows; the
    observations reordered to meet their posteriors, the first step of each sequence
    found among the rows) and its sums skip the (B, T) order: five EM iterations equal
    the sequential E-step's (float64, 1e-9), with ragged lengths, many chunks per
    sequence, categorical and 2-D Gaussian emissions, and padding that holds garbage;
    also when the batch runs in groups of sequences (CPU's working-set rule, here
    forced to 3 groups of 2, the last one padded with an empty sequence)."""
    if groups > 1:
        monkeypatch.setattr(probseq.auto, "CPU_ESTEP_BYTES", 120_000)
        jax.clear_caches()  # the E-step's group count is fixed when it is traced
    rng = np.random.default_rng(11)
    k, lengths = 3, [300, 129, 7, 450, 61]
    pi, a = rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k) * 2, size=k)
    mask = np.arange(max(lengths))[None, :] < np.asarray(lengths)[:, None]
    if family == "categorical":
        v = 5
        model = probseq.CategoricalHMM(k, v)
        params = _init_categorical64(model, pi, a, rng.dirichlet(np.ones(v), size=k))
        x = np.where(mask, rng.integers(0, v, mask.shape), 3)
    else:
        d = 2
        model = probseq.GaussianHMM(k, d)
        params = _init_gaussian64(
            model, pi, a, rng.normal(size=(k, d)) * 2, rng.uniform(0.5, 1.5, (k, d))
        )
        x = np.where(mask[..., None], rng.normal(size=mask.shape + (d,)) * 1.5, 1e3)
    assert emmod._resolve_estep("auto", len(lengths), max(lengths), k) == "chunked"
    assert probseq.auto.estep_groups(len(lengths), max(lengths), k, 8, backend="cpu") == groups
    fits = {
        estep: fit_em(model, params, x, mask=mask, num_iters=5, tol=0.0, estep=estep)
        for estep in ("chunked", "forward_backward")
    }
    got, ref = fits["chunked"], fits["forward_backward"]
    np.testing.assert_allclose(
        got.history["log_likelihood"], ref.history["log_likelihood"], rtol=1e-10
    )
    for g, r in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-9, atol=1e-12)


def test_fit_em_chunked_first_steps_use_the_initial_support():
    """The chunked E-step finds each sequence's first step among its rows: there the
    likelihoods are scaled over the states p(z_1) allows. A state the chain cannot
    start in whose density at x_1 is exp(800) times the others' would, scaled over all
    states, underflow the others to 0 (log p = -inf); here both E-steps agree and stay
    finite."""
    rng = np.random.default_rng(12)
    k, d, lengths = 3, 1, [300, 129, 7, 450]
    pi = np.array([0.0, 0.4, 0.6])
    a = rng.dirichlet(np.ones(k) * 2, size=k)
    mask = np.arange(max(lengths))[None, :] < np.asarray(lengths)[:, None]
    x = rng.normal(size=mask.shape + (d,)) + 40.0
    x[:, 0] = 0.0
    model = probseq.GaussianHMM(k, d)
    params = _init_gaussian64(
        model, pi, a, np.array([[0.0], [40.0], [41.0]]), np.array([[0.01], [1.0], [1.0]])
    )
    lls = {
        estep: fit_em(model, params, x, mask=mask, num_iters=1, tol=0.0, estep=estep).history[
            "log_likelihood"
        ][0]
        for estep in ("chunked", "forward_backward")
    }
    assert np.isfinite(lls["chunked"]), lls
    np.testing.assert_allclose(lls["chunked"], lls["forward_backward"], rtol=1e-10)
