"""Emission heads against independent references (scipy.stats and float64 NumPy).

Covers every head (Categorical, Normal, MixtureNormal, Poisson, Bernoulli):

1. ``distribution(raw)`` log-densities, single and batched, and the flat readout
   layout (``raw_shapes`` / ``raw_size`` / ``split`` / ``readout``);
2. ``component_log_probs`` and ``mixture`` (the HMM's two uses of a head);
3. each head end to end in a GRU and in ``probseq.HMM(3, head)``, scored against a
   NumPy GRU / forward filter, ragged input, sampling shape, dtype and support, and
   sample moments of a 1-state HMM;
4. observation validation at the API boundary;
5. ``temper`` (temperatures 1, 0 and in between) and unsupported distributions;
6. the closed-form M-steps used by ``fit_em``;
7. bad head configurations.

Exact comparisons run in float64 via ``jax.enable_x64`` (an autouse fixture), never
by changing the global JAX config at import time.
"""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats
from scipy.special import expit, log_softmax, logsumexp, softmax

import probseq
from probseq.heads import (
    BernoulliHead,
    CategoricalHead,
    MixtureNormalHead,
    NormalHead,
    PoissonHead,
    temper,
)

# ----------------------------------------------------------------------------- setup
VOCAB, OBS_DIM, NUM_MIX = 4, 2, 3
HIDDEN = 5
NUM_STATES = 3
# One ragged batch shape everywhere: probseq compiles per (model, shape).
LENGTHS = (6, 3)
T_MAX = max(LENGTHS)
RTOL = 1e-10

HEADS = {
    "categorical": CategoricalHead(VOCAB),
    "normal": NormalHead(OBS_DIM),
    "mixture": MixtureNormalHead(OBS_DIM, NUM_MIX),
    "poisson": PoissonHead(OBS_DIM),
    "bernoulli": BernoulliHead(OBS_DIM),
}
NAMES = list(HEADS)

# The flat readout layout of each head, written out here (not read from probseq).
LAYOUT = {
    "categorical": [("logits", (VOCAB,))],
    "normal": [("loc", (OBS_DIM,)), ("log_scale", (OBS_DIM,))],
    "mixture": [
        ("mixture_logits", (NUM_MIX,)),
        ("loc", (NUM_MIX, OBS_DIM)),
        ("log_scale", (NUM_MIX, OBS_DIM)),
    ],
    "poisson": [("log_rate", (OBS_DIM,))],
    "bernoulli": [("logits", (OBS_DIM,))],
}


@pytest.fixture(autouse=True)
def x64():
    """Float64 for every test of this module, scoped to the test (not global config)."""
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------ references
def ref_log_prob(name: str, raw: dict, x) -> np.ndarray:
    """log p(x) in float64 for raw parameters with any leading batch dims."""
    raw = {k: np.asarray(v, np.float64) for k, v in raw.items()}
    x = np.asarray(x)
    if name == "categorical":
        logits = raw["logits"]
        ids = np.broadcast_to(x, logits.shape[:-1]).astype(int)
        picked = np.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
        return picked - logsumexp(logits, axis=-1)
    x = x.astype(np.float64)
    if name == "normal":
        return stats.norm.logpdf(x, raw["loc"], np.exp(raw["log_scale"])).sum(-1)
    if name == "mixture":
        comp = stats.norm.logpdf(x[..., None, :], raw["loc"], np.exp(raw["log_scale"])).sum(-1)
        return logsumexp(log_softmax(raw["mixture_logits"], axis=-1) + comp, axis=-1)
    if name == "poisson":
        return stats.poisson.logpmf(x, np.exp(raw["log_rate"])).sum(-1)
    if name == "bernoulli":
        return stats.bernoulli.logpmf(x, expit(raw["logits"])).sum(-1)
    raise AssertionError(name)


def np_split(name: str, flat: np.ndarray) -> dict:
    """The flat (..., raw_size) readout cut into the head's raw parameters."""
    out, start = {}, 0
    lead = flat.shape[:-1]
    for key, shape in LAYOUT[name]:
        size = math.prod(shape)
        out[key] = flat[..., start : start + size].reshape(lead + shape)
        start += size
    assert start == flat.shape[-1]
    return out


def random_raw(name: str, lead: tuple, rng, scale=0.7) -> dict:
    return {k: scale * rng.standard_normal(lead + s) for k, s in LAYOUT[name]}


def random_obs(name: str, shape: tuple, rng) -> np.ndarray:
    """Valid observations with batch/time shape ``shape``."""
    if name == "categorical":
        return rng.integers(0, VOCAB, size=shape)
    if name in ("normal", "mixture"):
        return rng.standard_normal(shape + (OBS_DIM,))
    if name == "poisson":
        return rng.poisson(2.0, size=shape + (OBS_DIM,))
    return rng.integers(0, 2, size=shape + (OBS_DIM,))


def to_jax(raw: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in raw.items()}


def jit_log_prob(make_dist, args, x):
    """``make_dist(*args).log_prob(x)`` compiled as one function (numpyro's eager op
    dispatch is slow), with the distribution's (batch_shape, event_shape)."""
    shapes = []

    def f(args, x):
        d = make_dist(*args)
        shapes.append((d.batch_shape, d.event_shape))
        return d.log_prob(x)

    lp = jax.jit(f)(args, jnp.asarray(x))
    return lp, *shapes[0]


def assert_close(actual, expected, rtol=RTOL, atol=1e-12):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


# =================================================================== 1. distribution
def test_raw_shapes_and_size():
    for name, head in HEADS.items():
        assert head.raw_shapes() == dict(LAYOUT[name]), name
        assert head.raw_size == sum(math.prod(s) for _, s in LAYOUT[name]), name
    assert HEADS["mixture"].raw_size == NUM_MIX * (1 + 2 * OBS_DIM)
    assert HEADS["categorical"].event_shape == ()
    assert all(HEADS[n].event_shape == (OBS_DIM,) for n in NAMES if n != "categorical")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["single", "batch", "batch2d"])
def test_distribution_log_prob(name, lead):
    head = HEADS[name]
    rng = np.random.default_rng(10 * NAMES.index(name) + len(lead))
    raw = random_raw(name, lead, rng)
    x = random_obs(name, lead, rng)
    lp, batch_shape, event_shape = jit_log_prob(head.distribution, (to_jax(raw),), x)
    assert batch_shape == lead and event_shape == head.event_shape
    assert lp.shape == lead
    assert_close(lp, ref_log_prob(name, raw, x))


def test_categorical_log_prob_is_log_softmax():
    logits = np.array([[0.3, -1.2, 2.0, 0.0], [5.0, 5.0, -3.0, 1.0]])
    d = HEADS["categorical"].distribution({"logits": jnp.asarray(logits)})
    for v in range(VOCAB):
        assert_close(d.log_prob(jnp.full((2,), v)), log_softmax(logits, axis=-1)[:, v])


@pytest.mark.parametrize("name", NAMES)
def test_split_and_readout(name):
    """readout(features) == distribution(split(features @ kernel + bias)), with the
    flat layout of LAYOUT, in both probseq's split and a NumPy one."""
    head = HEADS[name]
    rng = np.random.default_rng(1)
    n, f = 5, 4
    params = {
        "kernel": rng.standard_normal((f, head.raw_size)) / 2,
        "bias": rng.standard_normal(head.raw_size) / 2,
    }
    feats = rng.standard_normal((n, f))
    flat = feats @ params["kernel"] + params["bias"]
    raw = np_split(name, flat)
    got = head.split(jnp.asarray(flat))
    assert set(got) == set(raw)
    for k in raw:
        assert got[k].shape == raw[k].shape
        np.testing.assert_array_equal(np.asarray(got[k]), raw[k])
    x = random_obs(name, (n,), rng)
    lp, batch_shape, _ = jit_log_prob(head.readout, (to_jax(params), jnp.asarray(feats)), x)
    assert batch_shape == (n,)
    assert_close(lp, ref_log_prob(name, raw, x))


@pytest.mark.parametrize("name", NAMES)
def test_init_readout(name):
    head = HEADS[name]
    p = head.init_readout(jax.random.key(0), 7, jnp.float64)
    assert p["kernel"].shape == (7, head.raw_size) and p["kernel"].dtype == jnp.float64
    bias = np_split(name, np.asarray(p["bias"]))
    for key, value in bias.items():
        if name == "mixture" and key == "loc":
            # Component means are spread over [-1, 1] so they do not start identical.
            expected = np.linspace(-1, 1, NUM_MIX)[:, None] * np.ones((NUM_MIX, OBS_DIM))
            assert_close(value, expected)
        else:
            np.testing.assert_array_equal(value, 0.0)


# ============================================================ 2. components / mixture
@pytest.mark.parametrize("name", NAMES)
def test_component_log_probs(name):
    head = HEADS[name]
    rng = np.random.default_rng(2)
    raw = random_raw(name, (NUM_STATES,), rng)
    xs = random_obs(name, (4,), rng)
    per_step = jax.jit(jax.vmap(head.component_log_probs, in_axes=(None, 0)))
    all_got = per_step(to_jax(raw), jnp.asarray(xs))
    assert all_got.shape == (4, NUM_STATES)
    for x, got in zip(xs, all_got, strict=True):
        expected = [
            ref_log_prob(name, {k: v[i] for k, v in raw.items()}, x) for i in range(NUM_STATES)
        ]
        assert_close(got, np.array(expected))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("probs", [[0.2, 0.5, 0.3], [0.0, 0.25, 0.75]], ids=["dense", "zero"])
def test_mixture_log_prob(name, probs):
    head = HEADS[name]
    rng = np.random.default_rng(3)
    probs = np.array(probs)
    raw = random_raw(name, (NUM_STATES,), rng)
    xs = random_obs(name, (4,), rng)
    lp, batch_shape, event_shape = jit_log_prob(head.mixture, (jnp.asarray(probs), to_jax(raw)), xs)
    assert batch_shape == () and event_shape == head.event_shape
    for x, got in zip(xs, np.asarray(lp), strict=True):
        comps = np.array(
            [ref_log_prob(name, {k: v[i] for k, v in raw.items()}, x) for i in range(NUM_STATES)]
        )
        with np.errstate(divide="ignore"):
            expected = logsumexp(np.log(probs) + comps)
        assert_close(got, expected)


def test_categorical_mixture_collapses_exactly():
    """A mixture of categoricals is the categorical with probs @ softmax(logits)."""
    head = HEADS["categorical"]
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((NUM_STATES, VOCAB))
    probs = np.array([0.1, 0.6, 0.3])
    d = head.mixture(jnp.asarray(probs), {"logits": jnp.asarray(logits)})
    assert isinstance(d, dist.CategoricalProbs)
    expected = probs @ softmax(logits, axis=-1)
    assert_close(d.probs, expected, rtol=1e-14)
    assert abs(float(jnp.sum(d.probs)) - 1.0) < 1e-14
    assert_close(d.log_prob(jnp.arange(VOCAB)), np.log(expected), rtol=1e-13)


# ==================================================================== 3. end to end
def _jitter(tree, seed, scale=0.3):
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        treedef,
        [jnp.asarray(np.asarray(a) + scale * rng.standard_normal(a.shape)) for a in leaves],
    )


@functools.cache
def gru_model(name):
    """A one-layer GRU with the head, float64 params jittered (no exactly-0 bias)."""
    model = probseq.GRU(hidden_size=HIDDEN, head=HEADS[name])
    with jax.enable_x64(True):
        params = _jitter(model.init(jax.random.key(0), dtype=jnp.float64), seed=10)
    return model, params


@functools.cache
def hmm_model(name):
    model = probseq.HMM(NUM_STATES, HEADS[name])
    rng = np.random.default_rng(11)
    with jax.enable_x64(True):
        params = model.init(
            jax.random.key(0),
            emission=random_raw(name, (NUM_STATES,), rng),
            dtype=jnp.float64,
        )
        params = params._replace(
            initial_logits=jnp.asarray(rng.standard_normal(NUM_STATES)),
            transition_logits=jnp.asarray(rng.standard_normal((NUM_STATES, NUM_STATES))),
        )
    return model, params


def _np_gru_step_log_probs(name, params, x):
    """log p(x_t | x_<t) of a one-layer GRU (PyTorch gate convention) in NumPy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    layer = p["layers"][0]
    h = np.zeros(HIDDEN)
    out = []
    for xt in x:
        out.append(
            ref_log_prob(name, np_split(name, h @ p["head"]["kernel"] + p["head"]["bias"]), xt)
        )
        e = p["embed"][xt] if name == "categorical" else np.asarray(xt, np.float64)
        xr, xz, xn = np.split(e @ layer["w_ih"] + layer["b_ih"], 3)
        hr, hz, hn = np.split(h @ layer["w_hh"] + layer["b_hh"], 3)
        r, z = expit(xr + hr), expit(xz + hz)
        n = np.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
    return np.array(out)


def _np_hmm_step_log_probs(name, params, x):
    """The forward filter in NumPy: log p(x_t | x_<t) = log sum_k p(z_t=k|x_<t) p_k(x_t)."""
    pred = softmax(np.asarray(params.initial_logits))
    a = softmax(np.asarray(params.transition_logits), axis=-1)
    raw = {k: np.asarray(v) for k, v in params.emission.items()}
    out = []
    for xt in x:
        ll = ref_log_prob(name, raw, xt)  # (K,)
        joint = pred * np.exp(ll - ll.max())
        out.append(np.log(joint.sum()) + ll.max())
        pred = (joint / joint.sum()) @ a
    return np.array(out)


MODELS = [("GRU", gru_model, _np_gru_step_log_probs), ("HMM", hmm_model, _np_hmm_step_log_probs)]


@pytest.mark.parametrize("family, build, reference", MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize("name", NAMES)
def test_end_to_end_log_prob(name, family, build, reference):
    model, params = build(name)
    rng = np.random.default_rng(12)
    seqs = [random_obs(name, (n,), rng) for n in LENGTHS]
    res = probseq.score(model, params, seqs)
    assert res.log_prob.shape == (2,) and res.step_log_probs.shape == (2, T_MAX)
    assert_close(res.log_prob, np.asarray(res.step_log_probs).sum(-1))
    for i, s in enumerate(seqs):
        n = len(s)
        expected = reference(name, params, s)
        assert_close(res.step_log_probs[i, :n], expected, rtol=1e-9)
        np.testing.assert_array_equal(np.asarray(res.step_log_probs[i, n:]), 0.0)
    # The padded sequence alone gives the same terms as inside the ragged batch (the
    # full-length one is pinned to the reference above; each extra shape compiles).
    short = seqs[1]
    alone = probseq.step_log_probs(model, params, short)
    assert alone.shape == (len(short),)
    assert_close(alone, np.asarray(res.step_log_probs[1, : len(short)]), rtol=1e-12)
    assert_close(probseq.log_prob(model, params, short), float(res.log_prob[1]), rtol=1e-12)


def _assert_in_support(name, x):
    x = np.asarray(x)
    if name == "categorical":
        assert np.issubdtype(x.dtype, np.integer)
        assert ((x >= 0) & (x < VOCAB)).all()
    elif name in ("normal", "mixture"):
        assert x.dtype == np.float64
        assert np.isfinite(x).all()
    elif name == "poisson":
        assert np.issubdtype(x.dtype, np.integer)
        assert (x >= 0).all()
    else:
        assert np.issubdtype(x.dtype, np.integer)
        assert np.isin(x, [0, 1]).all()


@pytest.mark.parametrize(
    "family, build", [(m[0], m[1]) for m in MODELS], ids=[m[0] for m in MODELS]
)
@pytest.mark.parametrize("name", NAMES)
def test_end_to_end_sample(name, family, build):
    model, params = build(name)
    x = probseq.sample(model, params, jax.random.key(3), 7, num_samples=4)  # as below
    assert x.shape == (4, 7) + HEADS[name].event_shape
    _assert_in_support(name, x)
    # Draws pass the head's own observation check.
    HEADS[name].check_observations(np.asarray(x), np.ones((4, 7), bool), "draws")


@pytest.mark.parametrize("name", ["categorical", "poisson", "bernoulli"])
def test_greedy_sample_dtype_matches_sampling(name):
    """temperature=0 returns values of the same dtype as temperature=1 draws.

    Fails for Poisson and Bernoulli heads: ``_mode`` returns floats (floor(rate),
    logits > 0 cast to the logits' dtype) while sampling returns integers.
    """
    model, params = hmm_model(name)
    drawn = probseq.sample(model, params, jax.random.key(3), 7, num_samples=4)  # as above
    greedy = probseq.sample(model, params, jax.random.key(3), 7, num_samples=4, temperature=0.0)
    assert greedy.shape == drawn.shape
    assert greedy.dtype == drawn.dtype
    _assert_in_support(name, greedy)


def _one_state_hmm(head, emission):
    model = probseq.HMM(1, head)
    params = model.init(
        jax.random.key(0),
        emission={k: np.asarray(v)[None] for k, v in emission.items()},
        dtype=jnp.float64,
    )
    return model, params


def test_one_state_mixture_hmm_sample_moments():
    """A 1-state HMM draws iid from its head: mean and variance within 4 standard errors."""
    head = MixtureNormalHead(obs_dim=1, num_components=3)
    w_logits = np.array([0.5, 0.0, -1.0])
    mu = np.array([-2.0, 0.5, 3.0])
    s = np.array([0.5, 1.0, 0.3])
    model, params = _one_state_hmm(
        head, {"mixture_logits": w_logits, "loc": mu[:, None], "log_scale": np.log(s)[:, None]}
    )
    y = np.asarray(probseq.sample(model, params, jax.random.key(1), 50, num_samples=200)).ravel()
    n = y.size
    w = softmax(w_logits)
    mean = w @ mu
    var = w @ (s**2 + mu**2) - mean**2
    d = mu - mean
    mu4 = w @ (d**4 + 6 * d**2 * s**2 + 3 * s**4)
    assert abs(y.mean() - mean) < 4 * math.sqrt(var / n)
    assert abs(y.var(ddof=1) - var) < 4 * math.sqrt((mu4 - var**2) / n)
    # The mass above 1.75 (mostly the third component's).
    p_hi = w @ stats.norm.sf(1.75, mu, s)
    assert abs((y > 1.75).mean() - p_hi) < 4 * math.sqrt(p_hi * (1 - p_hi) / n)


def test_one_state_poisson_hmm_sample_moments():
    rates = np.array([0.7, 4.0])
    model, params = _one_state_hmm(PoissonHead(2), {"log_rate": np.log(rates)})
    y = np.asarray(probseq.sample(model, params, jax.random.key(2), 50, num_samples=200))
    y = y.reshape(-1, 2)
    n = len(y)
    assert (np.abs(y.mean(0) - rates) < 4 * np.sqrt(rates / n)).all()
    assert (np.abs(y.var(0, ddof=1) - rates) < 4 * np.sqrt((rates + 2 * rates**2) / n)).all()
    p0 = np.exp(-rates)
    assert (np.abs((y == 0).mean(0) - p0) < 4 * np.sqrt(p0 * (1 - p0) / n)).all()


# ===================================================================== 4. validation
def _batch(name, seed=20):
    """A valid (2, T_MAX) batch."""
    return random_obs(name, (2, T_MAX), np.random.default_rng(seed))


IDX = (1, 2)  # a valid step of row 1 (length 3)
BAD_VALUES = [
    ("poisson", -1.0, "non-negative integer counts"),
    ("poisson", 1.5, "non-negative integer counts"),
    ("poisson", np.nan, r"non-finite value \(NaN or inf\)"),
    ("bernoulli", 2.0, "0/1 values"),
    ("bernoulli", 0.5, "0/1 values"),
    ("bernoulli", -1.0, "0/1 values"),
    ("normal", np.nan, r"non-finite value \(NaN or inf\)"),
    ("normal", np.inf, r"non-finite value \(NaN or inf\)"),
    ("mixture", np.nan, r"non-finite value \(NaN or inf\)"),
    ("mixture", -np.inf, r"non-finite value \(NaN or inf\)"),
    ("categorical", VOCAB, rf"token id {VOCAB}"),
    ("categorical", -1, "token id -1"),
]


@pytest.mark.parametrize(
    "family, build", [(m[0], m[1]) for m in MODELS], ids=[m[0] for m in MODELS]
)
@pytest.mark.parametrize("name, bad, message", BAD_VALUES, ids=lambda v: str(v))
def test_bad_observation_names_the_index(name, bad, message, family, build):
    model, params = build(name)
    x = _batch(name)
    x = x.astype(np.float64) if name != "categorical" else x
    if name == "categorical":
        x[IDX] = bad
    else:
        x[IDX + (1,)] = bad
    pattern = rf"{message}.*index {re.escape(str(IDX))}"
    with pytest.raises(ValueError, match=pattern):
        probseq.log_prob(model, params, x)


@pytest.mark.parametrize("name, bad, message", BAD_VALUES, ids=lambda v: str(v))
def test_bad_observation_in_padding_is_ignored(name, bad, message):
    model, params = gru_model(name)
    x = _batch(name)
    x = x.astype(np.float64) if name != "categorical" else x
    mask = np.arange(T_MAX)[None] < np.array(LENGTHS)[:, None]
    clean = probseq.log_prob(model, params, x, mask)
    pad = (1, LENGTHS[1] + 1)
    if name == "categorical":
        x[pad] = bad
    else:
        x[pad + (0,)] = bad
    assert_close(probseq.log_prob(model, params, x, mask), np.asarray(clean), rtol=0, atol=0)


def test_categorical_rejects_float_dtype():
    model, params = gru_model("categorical")
    with pytest.raises(ValueError, match=rf"integer token ids in \[0, {VOCAB}\); got dtype float"):
        probseq.log_prob(model, params, _batch("categorical").astype(np.float64))


def test_bernoulli_accepts_bool_and_ints():
    model, params = gru_model("bernoulli")
    x = _batch("bernoulli")
    as_float = probseq.log_prob(model, params, x.astype(np.float64))
    assert_close(probseq.log_prob(model, params, x.astype(bool)), np.asarray(as_float))
    assert_close(probseq.log_prob(model, params, x.astype(np.int32)), np.asarray(as_float))


def test_poisson_accepts_integral_floats():
    model, params = gru_model("poisson")
    x = _batch("poisson")
    assert_close(
        probseq.log_prob(model, params, x.astype(np.float64)),
        np.asarray(probseq.log_prob(model, params, x)),
    )


def test_check_observations_directly():
    """The head method itself: index of the first bad valid step, value cast."""
    valid = np.array([[True, True, True], [True, True, False]])
    x = np.zeros((2, 3, OBS_DIM))
    x[1, 2] = -5.0  # padding: ignored
    assert HEADS["poisson"].check_observations(x, valid, "x") is not None
    x[1, 1, 0] = -5.0
    with pytest.raises(ValueError, match=r"^counts must hold .*at index \(1, 1\)"):
        HEADS["poisson"].check_observations(x, valid, "counts")
    out = HEADS["bernoulli"].check_observations(np.ones((2, 3, OBS_DIM), bool), valid, "x")
    assert np.issubdtype(out.dtype, np.floating) and (out == 1).all()
    tokens = HEADS["categorical"].check_observations(np.array([[1, 2, 9]]), valid[1:], "x")
    assert tokens.dtype == np.int32


# ======================================================================= 5. temper
def test_temperature_one_is_identity():
    rng = np.random.default_rng(30)
    for name, head in HEADS.items():
        d = head.distribution(to_jax(random_raw(name, (), rng)))
        assert temper(d, 1.0) is d
        assert temper(d, 1) is d


@pytest.mark.parametrize("t", [0.3, 2.5])
def test_temper_categorical(t):
    p = np.array([[0.6, 0.25, 0.1, 0.05], [0.05, 0.05, 0.1, 0.8]])
    expected = p ** (1 / t) / (p ** (1 / t)).sum(-1, keepdims=True)
    for d in (dist.CategoricalProbs(jnp.asarray(p)), dist.CategoricalLogits(jnp.log(p) + 3.0)):
        tempered = temper(d, t)
        assert isinstance(tempered, dist.CategoricalLogits | dist.CategoricalProbs)
        assert_close(tempered.probs, expected)
        # logits / t, up to a constant per row
        lp = np.asarray(tempered.logits)
        lp = lp - lp[..., :1]
        assert_close(lp, (np.log(p) - np.log(p[..., :1])) / t)


@pytest.mark.parametrize("t", [0.3, 2.5])
def test_temper_bernoulli(t):
    logits = np.array([-1.5, 0.2, 2.0])
    d = HEADS["bernoulli"].distribution({"logits": jnp.asarray(logits[:2])})
    tempered = temper(d, t)
    assert tempered.event_shape == (OBS_DIM,)
    p = expit(logits[:2])
    expected = p ** (1 / t) / (p ** (1 / t) + (1 - p) ** (1 / t))
    assert_close(tempered.base_dist.probs, expected)
    assert_close(temper(dist.BernoulliProbs(jnp.asarray(expit(logits))), t).logits, logits / t)


@pytest.mark.parametrize("t", [0.3, 2.5])
def test_temper_normal(t):
    rng = np.random.default_rng(31)
    raw = random_raw("normal", (3,), rng)
    x = random_obs("normal", (3,), rng)
    lp, batch_shape, event_shape = jit_log_prob(
        lambda r: temper(HEADS["normal"].distribution(r), t), (to_jax(raw),), x
    )
    assert batch_shape == (3,) and event_shape == (OBS_DIM,)
    scale = np.exp(raw["log_scale"]) * math.sqrt(t)
    assert_close(lp, stats.norm.logpdf(x, raw["loc"], scale).sum(-1))


@pytest.mark.parametrize("t", [0.3, 2.5])
def test_temper_mixture(t):
    """Mixture: weights p^(1/t) renormalized, every component scale * sqrt(t)."""
    rng = np.random.default_rng(32)
    raw = random_raw("mixture", (2,), rng)
    x = random_obs("mixture", (2,), rng)
    lp, _, _ = jit_log_prob(
        lambda r: temper(HEADS["mixture"].distribution(r), t), (to_jax(raw),), x
    )
    expected_raw = dict(
        raw,
        mixture_logits=raw["mixture_logits"] / t,
        log_scale=raw["log_scale"] + 0.5 * math.log(t),
    )
    assert_close(lp, ref_log_prob("mixture", expected_raw, x))


def test_temperature_zero_is_the_mode():
    rng = np.random.default_rng(33)
    logits = rng.standard_normal((3, VOCAB))
    mode = temper(HEADS["categorical"].distribution({"logits": jnp.asarray(logits)}), 0)
    np.testing.assert_array_equal(np.asarray(mode), logits.argmax(-1))
    probs = softmax(rng.standard_normal((2, VOCAB)), axis=-1)
    np.testing.assert_array_equal(
        np.asarray(temper(dist.CategoricalProbs(jnp.asarray(probs)), 0)), probs.argmax(-1)
    )

    raw = random_raw("normal", (3,), rng)
    np.testing.assert_array_equal(
        np.asarray(temper(HEADS["normal"].distribution(to_jax(raw)), 0)), raw["loc"]
    )

    log_rate = np.log(np.array([[0.4, 1.0], [2.7, 5.999], [3.0, 12.2]]))
    mode = temper(HEADS["poisson"].distribution({"log_rate": jnp.asarray(log_rate)}), 0)
    np.testing.assert_array_equal(np.asarray(mode), np.floor(np.exp(log_rate)))

    b_logits = np.array([[-0.1, 0.3], [2.0, -4.0]])
    mode = temper(HEADS["bernoulli"].distribution({"logits": jnp.asarray(b_logits)}), 0)
    np.testing.assert_array_equal(np.asarray(mode), (b_logits > 0).astype(float))


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)], ids=["single", "batch", "batch2d"])
def test_temperature_zero_mixture_is_mode_of_most_probable_component(lead):
    rng = np.random.default_rng(34)
    raw = random_raw("mixture", lead, rng, scale=2.0)
    mode = np.asarray(temper(HEADS["mixture"].distribution(to_jax(raw)), 0))
    assert mode.shape == lead + (OBS_DIM,)
    k = raw["mixture_logits"].argmax(-1)
    expected = np.take_along_axis(raw["loc"], k[..., None, None], axis=-2)[..., 0, :]
    np.testing.assert_array_equal(mode, expected)


def test_temperature_zero_of_hmm_mixture_of_mixtures():
    """An HMM with a MixtureNormalHead emits a mixture (over states) of mixtures."""
    rng = np.random.default_rng(35)
    raw = random_raw("mixture", (NUM_STATES,), rng, scale=2.0)
    probs = np.array([0.2, 0.7, 0.1])
    mode = np.asarray(temper(HEADS["mixture"].mixture(jnp.asarray(probs), to_jax(raw)), 0))
    inner = raw["mixture_logits"][1].argmax()
    np.testing.assert_array_equal(mode, raw["loc"][1, inner])


def test_greedy_sampling_of_one_state_hmms():
    """temperature=0 in probseq.sample repeats the head's mode at every step."""
    rng = np.random.default_rng(36)
    for name in ("normal", "mixture", "poisson", "bernoulli"):
        raw = random_raw(name, (), rng, scale=1.5)
        model, params = _one_state_hmm(HEADS[name], raw)
        x = np.asarray(probseq.sample(model, params, jax.random.key(0), 3, temperature=0.0))
        if name == "normal":
            expected = raw["loc"]
        elif name == "mixture":
            expected = raw["loc"][raw["mixture_logits"].argmax()]
        elif name == "poisson":
            expected = np.floor(np.exp(raw["log_rate"]))
        else:
            expected = (raw["logits"] > 0).astype(float)
        np.testing.assert_allclose(x, np.broadcast_to(expected, (3, OBS_DIM)), rtol=1e-12)


def test_unsupported_temperatures_raise():
    poisson = HEADS["poisson"].distribution({"log_rate": jnp.zeros(OBS_DIM)})
    with pytest.raises(ValueError, match=r"temperature=0.5 is not supported for Poisson"):
        temper(poisson, 0.5)
    gamma = dist.Gamma(2.0, 1.0)
    with pytest.raises(ValueError, match="temperature=0.5 is not supported for Gamma"):
        temper(gamma, 0.5)
    with pytest.raises(ValueError, match=r"temperature=0 \(greedy\) is not supported for Gamma"):
        temper(gamma, 0.0)
    assert temper(gamma, 1.0) is gamma
    # ... and through probseq.sample.
    model, params = hmm_model("poisson")
    with pytest.raises(ValueError, match="not supported for Poisson"):
        probseq.sample(model, params, jax.random.key(0), 3, temperature=0.5)


# ======================================================================= 6. M-steps
N_OBS = 40


def _weights(rng, zero_component=2):
    """(N, K) responsibilities; one component gets no weight at all."""
    w = rng.dirichlet(np.ones(NUM_STATES), size=N_OBS)
    if zero_component is not None:
        w[:, zero_component] = 0.0
    w[-3:] = 0.0  # padding rows
    return w


def _m_step(name, w, x, raw, concentration=None):
    out = HEADS[name].m_step(jnp.asarray(w), jnp.asarray(x), to_jax(raw), concentration)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("with_prior", [False, True], ids=["ml", "dirichlet"])
def test_categorical_m_step(with_prior):
    rng = np.random.default_rng(40)
    w = _weights(rng, zero_component=None if with_prior else 2)
    x = rng.integers(0, VOCAB - 1, size=N_OBS)  # symbol VOCAB-1 never observed
    raw = random_raw("categorical", (NUM_STATES,), rng)
    counts = np.zeros((NUM_STATES, VOCAB))
    for n in range(N_OBS):
        counts[:, x[n]] += w[n]
    alpha = None
    if with_prior:
        alpha = rng.uniform(0.5, 3.0, size=(NUM_STATES, VOCAB))
        alpha[0, VOCAB - 1] = 0.7  # an unseen symbol with alpha < 1: MAP probability 0
        counts = np.maximum(counts + alpha - 1.0, 0.0)
    total = counts.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.where(total > 0, np.log(counts / total), raw["logits"])
    got = _m_step("categorical", w, x, raw, None if alpha is None else jnp.asarray(alpha))
    assert_close(got["logits"], expected)
    if with_prior:
        assert got["logits"][0, VOCAB - 1] == -np.inf
    else:
        np.testing.assert_array_equal(got["logits"][2], raw["logits"][2])
        assert (got["logits"][:2, VOCAB - 1] == -np.inf).all()


def test_normal_m_step():
    rng = np.random.default_rng(41)
    w = _weights(rng)
    x = rng.standard_normal((N_OBS, OBS_DIM)) * [1.0, 3.0] + [0.5, -2.0]
    raw = random_raw("normal", (NUM_STATES,), rng)
    got = _m_step("normal", w, x, raw)
    for k in range(2):
        n = w[:, k].sum()
        mean = w[:, k] @ x / n
        var = w[:, k] @ (x - mean) ** 2 / n
        assert_close(got["loc"][k], mean)
        assert_close(got["log_scale"][k], 0.5 * np.log(var))
    np.testing.assert_array_equal(got["loc"][2], raw["loc"][2])
    np.testing.assert_array_equal(got["log_scale"][2], raw["log_scale"][2])


def test_normal_m_step_variance_floor():
    """A component that sees one repeated value gets variance 1e-6, not 0."""
    rng = np.random.default_rng(42)
    w = np.zeros((6, NUM_STATES))
    w[:3, 0] = [0.5, 1.0, 0.25]
    w[3:, 1] = 1.0
    x = np.array([[3.0, -1.0]] * 3 + [[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    raw = random_raw("normal", (NUM_STATES,), rng)
    got = _m_step("normal", w, x, raw)
    assert_close(got["loc"][0], [3.0, -1.0])
    assert_close(got["log_scale"][0], 0.5 * np.log([1e-6, 1e-6]))
    assert_close(got["log_scale"][1], 0.5 * np.log([2 / 3, 8 / 3]))
    assert NormalHead.MIN_VARIANCE == 1e-6


def test_normal_m_step_float32_large_offset():
    """float32 (probseq's default dtype): the variance of data far from 0 must not be
    lost to cancellation. Data at 300 with standard deviation 0.1 (e.g. temperatures
    in kelvin): the two-pass weighted variance, computed in float64, is the reference.

    Fails: m_step computes E[x^2] - E[x]^2, which in float32 cancels catastrophically
    (scales 0.15 and 0.18 instead of 0.10 here; with unit weights on such data the
    difference goes negative and the variance is floored to 1e-6, so fit_em of a
    float32 GaussianHMM collapses every state's scale to 0.001).
    """
    rng = np.random.default_rng(43)
    n_obs = 4000
    x = (300.0 + 0.1 * rng.standard_normal((n_obs, 1))).astype(np.float32)
    w = rng.dirichlet(np.ones(2), size=n_obs).astype(np.float32)
    with jax.enable_x64(False):
        head = NormalHead(1)
        raw = head.init_components(jax.random.key(0), 2, jnp.float32)
        got = np.asarray(jnp.exp(head.m_step(jnp.asarray(w), jnp.asarray(x), raw)["log_scale"]))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    mean = (w64.T @ x64) / w64.sum(0)[:, None]
    var = np.einsum("nk,nkd->kd", w64, (x64[:, None, :] - mean[None]) ** 2) / w64.sum(0)[:, None]
    np.testing.assert_allclose(got, np.sqrt(var), rtol=1e-2)


def test_poisson_m_step():
    rng = np.random.default_rng(44)
    w = _weights(rng)
    x = rng.poisson([0.5, 6.0], size=(N_OBS, OBS_DIM)).astype(np.float64)
    raw = random_raw("poisson", (NUM_STATES,), rng)
    got = _m_step("poisson", w, x, raw)
    for k in range(2):
        rate = w[:, k] @ x / w[:, k].sum()
        assert_close(got["log_rate"][k], np.log(np.maximum(rate, 1e-12)))
    np.testing.assert_array_equal(got["log_rate"][2], raw["log_rate"][2])
    # A component that saw only zeros: rate floored at 1e-12 (finite log-rate).
    zeros = _m_step("poisson", w, np.zeros_like(x), raw)
    assert_close(zeros["log_rate"][:2], np.full((2, OBS_DIM), np.log(1e-12)))


def test_bernoulli_m_step():
    rng = np.random.default_rng(45)
    w = _weights(rng)
    x = (rng.uniform(size=(N_OBS, OBS_DIM)) < [0.3, 0.8]).astype(np.float64)
    raw = random_raw("bernoulli", (NUM_STATES,), rng)
    got = _m_step("bernoulli", w, x, raw)
    for k in range(2):
        p = w[:, k] @ x / w[:, k].sum()
        assert_close(got["logits"][k], np.log(p / (1 - p)))
        assert_close(expit(got["logits"][k]), p)
    np.testing.assert_array_equal(got["logits"][2], raw["logits"][2])
    # All ones / all zeros: probabilities clipped to [1e-12, 1 - 1e-12], finite logits.
    ones = _m_step("bernoulli", w, np.ones_like(x), raw)["logits"][:2]
    assert np.isfinite(ones).all() and (ones > 27).all()
    zeros = _m_step("bernoulli", w, np.zeros_like(x), raw)["logits"][:2]
    assert_close(zeros, np.full((2, OBS_DIM), np.log(1e-12 / (1 - 1e-12))))


@pytest.mark.parametrize("name", ["normal", "poisson", "bernoulli"])
def test_m_step_rejects_a_dirichlet_prior(name):
    rng = np.random.default_rng(46)
    w = _weights(rng)
    x = random_obs(name, (N_OBS,), rng).astype(np.float64)
    raw = random_raw(name, (NUM_STATES,), rng)
    with pytest.raises(ValueError, match="categorical emissions only"):
        _m_step(name, w, x, raw, concentration=jnp.full((NUM_STATES, OBS_DIM), 2.0))


def test_a_head_without_an_m_step_points_to_fit_sgd():
    """The base Head.m_step (a head that declares none: every built-in head has one)."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class NoMStepHead(MixtureNormalHead):
        has_m_step = False
        m_step = probseq.heads.Head.m_step

    rng = np.random.default_rng(47)
    raw = random_raw("mixture", (NUM_STATES,), rng)
    head = NoMStepHead(OBS_DIM, NUM_MIX)
    x = random_obs("mixture", (N_OBS,), rng)
    with pytest.raises(ValueError, match=r"NoMStepHead has no closed-form M-step.*fit_sgd"):
        head.m_step(jnp.asarray(_weights(rng)), jnp.asarray(x), to_jax(raw))


# ================================================================ 7. configuration
@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: CategoricalHead(1), "vocab_size must be an int >= 2"),
        (lambda: CategoricalHead(0), "vocab_size must be an int >= 2"),
        (lambda: CategoricalHead(4.0), "vocab_size must be an int >= 2"),
        (lambda: NormalHead(0), "obs_dim must be a positive int"),
        (lambda: NormalHead(2.0), "obs_dim must be a positive int"),
        (lambda: MixtureNormalHead(0), "obs_dim must be a positive int"),
        (lambda: MixtureNormalHead(2, 0), "num_components must be a positive int"),
        (lambda: MixtureNormalHead(2, -1), "num_components must be a positive int"),
        (lambda: PoissonHead(0), "obs_dim must be a positive int"),
        (lambda: PoissonHead(-3), "obs_dim must be a positive int"),
        (lambda: BernoulliHead(0), "obs_dim must be a positive int"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_configuration(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_heads_are_hashable_static_config():
    """Heads are frozen dataclasses: equal configurations hash equal (jit static args)."""
    assert MixtureNormalHead(2, 3) == MixtureNormalHead(obs_dim=2, num_components=3)
    assert hash(PoissonHead(2)) == hash(PoissonHead(2))
    assert PoissonHead(2) != BernoulliHead(2)
    assert MixtureNormalHead(2).num_components == 3
