"""SequenceDistribution: numpyro's shape contract, log_prob against probseq.log_prob,
sampling, gradients, pytree use, and NUTS with Dirichlet priors."""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS

import probseq
from probseq.distribution import SequenceDistribution

MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], bool)


def _models():
    lstm = probseq.LSTM(vocab_size=4, hidden_size=5)
    hmm = probseq.CategoricalHMM(2, 4)
    ghmm = probseq.GaussianHMM(3, 2)
    return [
        (lstm, lstm.init(jax.random.key(0))),
        (hmm, hmm.init(jax.random.key(1))),
        (ghmm, ghmm.init(jax.random.key(2))),
    ]


MODELS = _models()
IDS = ["LSTM", "CategoricalHMM", "GaussianHMM"]


def _data(model, shape, seed=0):
    rng = np.random.default_rng(seed)
    if model.head.is_token:
        return rng.integers(0, model.head.vocab_size, shape).astype(np.int32)
    return rng.normal(size=shape + model.head.event_shape).astype(np.float32)


@pytest.mark.parametrize(("model", "params"), MODELS, ids=IDS)
def test_log_prob_matches_probseq_with_mask_and_sample_dims(model, params):
    d = SequenceDistribution(model, params, mask=MASK)
    assert d.batch_shape == (3,) and d.event_shape == (5,) + model.head.event_shape
    x = _data(model, (2, 3, 5))  # sample_shape (2,) + batch (3,) + event
    lp = d.log_prob(x)
    assert lp.shape == (2, 3)
    for s in range(2):
        np.testing.assert_allclose(lp[s], probseq.log_prob(model, params, x[s], MASK), rtol=1e-6)
    # A value shaped like one batch only, and padding that holds garbage (ignored).
    bad_pad = x[0].copy()
    bad_pad[~MASK] = 3 if model.head.is_token else np.nan
    np.testing.assert_allclose(d.log_prob(bad_pad), lp[0], rtol=1e-6)


@pytest.mark.parametrize(("model", "params"), MODELS, ids=IDS)
def test_no_mask_has_empty_batch_shape_and_broadcasts(model, params):
    d = SequenceDistribution(model, params, num_timesteps=6)
    assert d.batch_shape == () and d.event_shape == (6,) + model.head.event_shape
    x = _data(model, (4, 6), seed=1)
    np.testing.assert_allclose(d.log_prob(x), probseq.log_prob(model, params, x), rtol=1e-6)
    assert d.log_prob(x[0]).shape == ()


def test_support_and_discreteness():
    lstm, p = MODELS[0]
    d = SequenceDistribution(lstm, p, num_timesteps=3)
    assert d.is_discrete and d.support.event_dim == 1
    assert bool(d.support(jnp.array([0, 3, 1]))) and not bool(d.support(jnp.array([0, 4, 1])))
    ghmm, q = MODELS[2]
    g = SequenceDistribution(ghmm, q, num_timesteps=3)
    assert not g.is_discrete and g.support.event_dim == 2
    assert isinstance(g.support, constraints.independent)


@pytest.mark.parametrize(("model", "params"), MODELS, ids=IDS)
def test_sample_shapes(model, params):
    d = SequenceDistribution(model, params, mask=MASK)
    x = d.sample(jax.random.key(0), (7,))
    assert x.shape == (7, 3, 5) + model.head.event_shape
    assert np.all(np.asarray(x)[:, ~MASK] == 0)  # masked steps are 0
    if model.head.is_token:
        assert jnp.issubdtype(x.dtype, jnp.integer) and ((x >= 0) & (x < 4)).all()
    assert d.sample(jax.random.key(0)).shape == (3, 5) + model.head.event_shape
    plain = SequenceDistribution(model, params, num_timesteps=4)
    assert plain.sample(jax.random.key(1), (2, 3)).shape == (2, 3, 4) + model.head.event_shape


def test_samples_mean_log_prob_matches_exact_expectation():
    """E[log p(x)] of a 3-symbol HMM over T=4, by enumerating all 81 sequences,
    against the mean log_prob of 4000 samples (within 4 standard errors)."""
    hmm = probseq.CategoricalHMM(2, 3)
    params = hmm.init(
        jax.random.key(0),
        initial_probs=[0.7, 0.3],
        transition_matrix=[[0.8, 0.2], [0.3, 0.7]],
        emission_probs=[[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]],
    )
    d = SequenceDistribution(hmm, params, num_timesteps=4)
    every = jnp.array(list(itertools.product(range(3), repeat=4)))
    lp_all = np.asarray(d.log_prob(every), np.float64)
    np.testing.assert_allclose(np.exp(lp_all).sum(), 1.0, rtol=1e-5)
    exact = float((np.exp(lp_all) * lp_all).sum())
    lp = np.asarray(d.log_prob(d.sample(jax.random.key(3), (4000,))), np.float64)
    assert abs(lp.mean() - exact) < 4 * lp.std() / np.sqrt(lp.size)


@pytest.mark.parametrize(("model", "params"), MODELS, ids=IDS)
def test_grad_through_log_prob(model, params):
    x = _data(model, (3, 5), seed=2)

    def ours(p):
        return SequenceDistribution(model, p, mask=MASK).log_prob(x).sum()

    def reference(p):
        return probseq.log_prob(model, p, x, MASK).sum()

    got, want = jax.grad(ours)(params), jax.grad(reference)(params)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_is_a_pytree_usable_under_jit():
    hmm, params = MODELS[1]
    d = SequenceDistribution(hmm, params, mask=MASK)
    leaves, tree = jax.tree.flatten(d)
    again = jax.tree.unflatten(tree, leaves)
    assert again.batch_shape == d.batch_shape and again.event_shape == d.event_shape
    x = _data(hmm, (3, 5))
    jitted = jax.jit(lambda d, x: d.log_prob(x))(d, x)
    np.testing.assert_allclose(jitted, d.log_prob(x), rtol=1e-6)


def test_conditional_model_inputs():
    gru = probseq.GRU(vocab_size=4, hidden_size=3, input_dim=2)
    params = gru.init(jax.random.key(0))
    u = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
    d = SequenceDistribution(gru, params, mask=MASK, inputs=u)
    x = _data(gru, (2, 3, 5))
    np.testing.assert_allclose(
        d.log_prob(x)[1], probseq.log_prob(gru, params, x[1], MASK, inputs=u), rtol=1e-6
    )
    assert d.sample(jax.random.key(0), (2,)).shape == (2, 3, 5)
    shared = SequenceDistribution(gru, params, mask=MASK, inputs=u[0])  # broadcast
    np.testing.assert_allclose(
        shared.log_prob(x[0])[2],
        probseq.log_prob(gru, params, x[0, 2], MASK[2], inputs=u[0]),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="is conditioned on inputs"):
        SequenceDistribution(gru, params, mask=MASK)
    with pytest.raises(ValueError, match="does not broadcast to batch_shape"):
        SequenceDistribution(gru, params, 5, inputs=u)


def test_errors():
    hmm, params = MODELS[1]
    with pytest.raises(ValueError, match="needs the sequence length"):
        SequenceDistribution(hmm, params)
    with pytest.raises(ValueError, match="lengths disagree"):
        SequenceDistribution(hmm, params, 4, mask=MASK)
    with pytest.raises(ValueError, match="num_timesteps must be a positive int"):
        SequenceDistribution(hmm, params, 0)
    with pytest.raises(ValueError, match="valid step at t=2 after a masked step"):
        SequenceDistribution(hmm, params, mask=np.array([[1, 0, 1]], bool))
    with pytest.raises(ValueError, match="needs a probseq model"):
        SequenceDistribution("hmm", params, 3)
    with pytest.raises(ValueError, match="params"):
        SequenceDistribution(probseq.CategoricalHMM(3, 4), params, 3)
    with pytest.raises(ValueError, match="takes no conditioning inputs"):
        SequenceDistribution(hmm, params, 3, inputs=np.zeros((3, 1)))
    d = SequenceDistribution(hmm, params, mask=MASK)
    with pytest.raises(ValueError, match=r"event_shape \(5,\); got shape \(3, 4\)"):
        d.log_prob(np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="does not broadcast with batch_shape"):
        d.log_prob(np.zeros((2, 5), int))


def test_validate_args_warns_on_out_of_support_valid_steps_only():
    hmm, params = MODELS[1]
    d = SequenceDistribution(hmm, params, mask=MASK, validate_args=True)
    x = _data(hmm, (3, 5))
    x[~MASK] = 99  # padding: not checked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.log_prob(x)
    x[0, 0] = 99
    with pytest.warns(UserWarning, match="Out-of-support"):
        d.log_prob(x)


def test_nuts_with_dirichlet_priors():
    hmm = probseq.CategoricalHMM(2, 3)
    truth = hmm.init(
        jax.random.key(0),
        initial_probs=[0.5, 0.5],
        transition_matrix=[[0.9, 0.1], [0.2, 0.8]],
        emission_probs=[[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]],
    )
    x = np.asarray(probseq.sample(hmm, truth, jax.random.key(1), 12, num_samples=5))
    mask = np.ones(x.shape, bool)
    mask[0, 8:] = False

    def model(x, mask):
        pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(2)))
        a = numpyro.sample("A", dist.Dirichlet(jnp.ones((2, 2))).to_event(1))
        b = numpyro.sample("B", dist.Dirichlet(jnp.ones((2, 3))).to_event(1))
        params = probseq.HMMParams(jnp.log(pi), jnp.log(a), {"logits": jnp.log(b)})
        numpyro.sample("x", SequenceDistribution(hmm, params, mask=mask), obs=x)

    # The joint density numpyro sees is the prior plus probseq's likelihood.
    point = {"pi": jnp.array([0.4, 0.6]), "A": truth_a(), "B": truth_b()}
    joint, _ = numpyro.infer.util.log_density(model, (x, mask), {}, point)
    params = probseq.HMMParams(
        jnp.log(point["pi"]), jnp.log(point["A"]), {"logits": jnp.log(point["B"])}
    )
    prior = (
        dist.Dirichlet(jnp.ones(2)).log_prob(point["pi"])
        + dist.Dirichlet(jnp.ones((2, 2))).log_prob(point["A"]).sum()
        + dist.Dirichlet(jnp.ones((2, 3))).log_prob(point["B"]).sum()
    )
    np.testing.assert_allclose(
        joint, prior + probseq.log_prob(hmm, params, x, mask).sum(), rtol=1e-5
    )

    mcmc = MCMC(NUTS(model), num_warmup=20, num_samples=20, progress_bar=False)
    mcmc.run(jax.random.key(2), x, mask)
    samples = mcmc.get_samples()
    assert samples["pi"].shape == (20, 2) and samples["A"].shape == (20, 2, 2)
    assert samples["B"].shape == (20, 2, 3)
    np.testing.assert_allclose(samples["B"].sum(-1), 1.0, rtol=1e-5)
    assert all(np.isfinite(np.asarray(v)).all() for v in samples.values())


def truth_a():
    return jnp.array([[0.85, 0.15], [0.25, 0.75]])


def truth_b():
    return jnp.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])


def test_mixture_components_have_parameter_free_support():
    # numpyro 0.21 (within the dependency floor) refuses MixtureSameFamily components
    # whose support is a plain independent(real, 1): the Gaussian HMM failed there.
    from probseq.heads import MixtureNormalHead, NormalHead

    raw = {"loc": jnp.zeros((3, 2)), "log_scale": jnp.zeros((3, 2))}
    assert isinstance(NormalHead(2).distribution(raw).support, constraints.ParameterFreeConstraint)
    mix = MixtureNormalHead(obs_dim=2, num_components=3)
    d = mix.distribution(dict(raw, mixture_logits=jnp.zeros(3)))
    assert isinstance(d.component_distribution.support, constraints.ParameterFreeConstraint)
    ghmm = probseq.GaussianHMM(3, 2)
    p = ghmm.init(jax.random.key(0))
    e = ghmm.emission(p, ghmm.initial_state(p))
    assert isinstance(e.component_distribution.support, constraints.ParameterFreeConstraint)
