"""Family-level acceptance tests, parametrized over every model family.

Covers, for RNN / LSTM / GRU / MinGRU / LRU (token and real-valued observations,
two stacked layers, MinGRU and LRU in both scan modes, some with conditioning
inputs) and for CategoricalHMM / GaussianHMM:

1. log_prob is the sum of step_log_probs;
2. a padded ragged batch (and a Python list of unequal-length sequences) scores each
   sequence exactly as scoring it alone, final states included;
3. jax.grad of log_prob matches central finite differences (float64);
4. every cell matches a float64 NumPy re-implementation of its equations written
   here (and the HMMs match brute-force enumeration of all hidden paths);
5. the generic path (a lax.scan of update + emission) equals each family's own
   trajectory / sequence_log_probs override;
6. scoring x[:k] and then x[k:] from the returned final_state gives the same
   per-step log-likelihoods as scoring x whole.

Everything runs in float64 via the ``jax.enable_x64`` context manager (a fixture),
never by changing the global JAX config at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import probseq
from probseq.core import SequenceModel

# ----------------------------------------------------------------------------- setup
# HIDDEN differs from OBS_DIM and from HIDDEN + INPUT_DIM (token embeddings are HIDDEN
# wide), so LRU layers are built both with an in_proj (first layer of the real-valued
# or conditioned cases) and without one (second layer, unconditioned token models).
HIDDEN = 6
NUM_LAYERS = 2
VOCAB = 5
OBS_DIM = 3
INPUT_DIM = 2
NUM_STATES = 3
# One batch shape and one set of lengths everywhere: probseq jit-compiles per
# (model, shape), so reusing shapes across tests keeps the file fast.
B, T = 3, 8
LENGTHS = (8, 5, 3)  # ragged batch; every test draws its data with make_data(model, seed)

NEURAL_FAMILIES: dict[str, Callable[..., SequenceModel]] = {
    "RNN": probseq.RNN,
    "LSTM": probseq.LSTM,
    "GRU": probseq.GRU,
    "MinGRU": probseq.MinGRU,
    "LRU": probseq.LRU,
}
SCANNED = ("MinGRU", "LRU")  # families with a scan= option


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], SequenceModel]


def _neural_case(family: str, obs: str, input_dim: int = 0, scan: str = "parallel") -> Case:
    def build():
        kw = dict(hidden_size=HIDDEN, num_layers=NUM_LAYERS, input_dim=input_dim)
        if obs == "tokens":
            kw["vocab_size"] = VOCAB
        else:
            kw["obs_dim"] = OBS_DIM
        if family in SCANNED:
            kw["scan"] = scan
        return NEURAL_FAMILIES[family](**kw)

    name = family + (f"-{scan}" if family in SCANNED else "") + f"-{obs}"
    return Case(name + (f"-u{input_dim}" if input_dim else ""), build)


# Every neural family with token and with real-valued observations, two layers; one of
# the two variants (alternating) is conditioned on inputs u_t, so every family is tested
# with and without inputs and each observation kind with and without inputs. MinGRU and
# LRU use the parallel (associative) scan here; the sequential one is checked against
# the generic path in test_generic_path_matches_override.
NEURAL_CASES = [
    _neural_case(fam, obs, INPUT_DIM if (i + j) % 2 == 0 else 0)
    for i, fam in enumerate(NEURAL_FAMILIES)
    for j, obs in enumerate(("tokens", "reals"))
]
SEQUENTIAL_SCAN_CASES = [
    _neural_case(fam, obs, INPUT_DIM if (i + j) % 2 == 1 else 0, scan="sequential")
    for i, fam in enumerate(SCANNED)
    for j, obs in enumerate(("tokens", "reals"))
]
HMM_CASES = [
    Case("CategoricalHMM", lambda: probseq.CategoricalHMM(num_states=NUM_STATES, vocab_size=VOCAB)),
    Case("GaussianHMM", lambda: probseq.GaussianHMM(num_states=NUM_STATES, obs_dim=OBS_DIM)),
]
ALL_CASES = NEURAL_CASES + HMM_CASES


def _ids(cases):
    return [c.name for c in cases]


@pytest.fixture(autouse=True)
def x64():
    """Float64 for every test of this module, scoped to the test (not global config)."""
    with jax.enable_x64(True):
        yield


@functools.cache
def make_params(model):
    """float64 params from model.init, every leaf jittered so that no bias is exactly 0
    (a zero bias would hide e.g. a swapped b_ih / b_hh). Cached per model (init is
    deterministic given the key), so each model pays its eager init once."""
    params = model.init(jax.random.key(0), dtype=jnp.float64)
    leaves, treedef = jax.tree.flatten(params)
    assert all(leaf.dtype == jnp.float64 for leaf in leaves)
    rng = np.random.default_rng(1000)
    leaves = [jnp.asarray(np.asarray(leaf) + 0.1 * rng.normal(size=leaf.shape)) for leaf in leaves]
    return jax.tree.unflatten(treedef, leaves)


def make_data(model, seed: int, shape: tuple[int, ...]):
    """Observations of batch/time ``shape`` and matching inputs (or None)."""
    rng = np.random.default_rng(seed)
    if model.head.is_token:
        x = rng.integers(0, model.head.vocab_size, size=shape)
    else:
        x = rng.normal(size=shape + model.head.event_shape)
    u = rng.normal(size=shape + (model.input_dim,)) if model.input_dim else None
    return x, u


def assert_trees_close(a, b, rtol, atol):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, (ta, tb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def score_np(*args, **kwargs):
    """probseq.score with the result as NumPy arrays (slicing jax arrays eagerly would
    compile a small kernel per new shape)."""
    return jax.tree.map(np.asarray, probseq.score(*args, **kwargs))


def _take(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def _slice(a, sl):
    return None if a is None else a[sl]


def ragged_mask(lengths=LENGTHS):
    return np.arange(T)[None, :] < np.array(lengths)[:, None]


# ------------------------------------------------------------ 1. total == sum of steps
@pytest.mark.parametrize("case", ALL_CASES, ids=_ids(ALL_CASES))
def test_log_prob_is_sum_of_step_log_probs(case):
    model = case.build()
    params = make_params(model)
    x, u = make_data(model, 1, (B, T))
    mask = ragged_mask()
    lp = np.asarray(probseq.log_prob(model, params, x, mask, inputs=u))
    steps = np.asarray(probseq.step_log_probs(model, params, x, mask, inputs=u))
    assert lp.shape == (B,) and steps.shape == (B, T)
    assert lp.dtype == jnp.float64
    assert np.all(steps[~mask] == 0.0)
    assert np.all(np.isfinite(lp))
    # Same float64 numbers summed in another order (pairwise tree vs sequential).
    np.testing.assert_allclose(lp, np.sum(steps, axis=-1), rtol=1e-12, atol=1e-12)
    # A single unbatched sequence: () total and (T,) steps.
    lp1 = np.asarray(probseq.log_prob(model, params, x[0], inputs=_slice(u, 0)))
    st1 = np.asarray(probseq.step_log_probs(model, params, x[0], inputs=_slice(u, 0)))
    assert lp1.shape == () and st1.shape == (T,)
    np.testing.assert_allclose(lp1, np.sum(st1), rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------- 2. ragged batches
@pytest.mark.parametrize("case", ALL_CASES, ids=_ids(ALL_CASES))
def test_ragged_batch_matches_sequences_scored_alone(case):
    model = case.build()
    params = make_params(model)
    # Padding positions hold ordinary random data (not zeros): the mask must hide them.
    x, u = make_data(model, 2, (B, T))
    batch = score_np(model, params, x, ragged_mask(), inputs=u)
    seqs = [x[i, :n] for i, n in enumerate(LENGTHS)]
    useqs = None if u is None else [u[i, :n] for i, n in enumerate(LENGTHS)]
    listed = score_np(model, params, seqs, inputs=useqs)

    # Same per-step float64 arithmetic, batched vs alone, and a different pairwise-sum
    # tree over the padding: rounding only.
    tol = dict(rtol=1e-12, atol=1e-12)
    for i, n in enumerate(LENGTHS):
        # The last one passes the default initial state explicitly: same result.
        h0 = model.initial_state(params) if i == len(LENGTHS) - 1 else None
        alone = score_np(
            model, params, seqs[i], inputs=None if u is None else useqs[i], initial_state=h0
        )
        assert alone.log_prob.shape == () and alone.step_log_probs.shape == (n,)
        for res in (batch, listed):
            np.testing.assert_allclose(res.log_prob[i], alone.log_prob, **tol)
            np.testing.assert_allclose(res.step_log_probs[i, :n], alone.step_log_probs, **tol)
            assert np.all(res.step_log_probs[i, n:] == 0.0)
            assert_trees_close(_take(res.final_state, i), alone.final_state, **tol)
    assert_trees_close(listed, batch, **tol)


# ---------------------------------------------------- 3. gradients vs finite differences
@pytest.mark.parametrize("case", ALL_CASES, ids=_ids(ALL_CASES))
def test_grad_matches_central_finite_differences(case):
    model = case.build()
    params = make_params(model)
    x, u = make_data(model, 3, (B, T))
    mask = ragged_mask()

    def total(p):
        return jnp.sum(probseq.log_prob(model, p, x, mask, inputs=u))

    # One compiled function serves the gradient and the finite differences.
    value_and_grad = jax.jit(jax.value_and_grad(total))
    _, grads = value_and_grad(params)

    def f(p):
        return float(value_and_grad(p)[0])

    eps = 1e-6
    rng = np.random.default_rng(3)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in paths_leaves]
    grad_leaves = treedef.flatten_up_to(grads)
    for li, (path, leaf) in enumerate(paths_leaves):
        g = np.asarray(grad_leaves[li])
        name = jax.tree_util.keystr(path)
        assert g.shape == leaf.shape and g.dtype == np.float64, name
        assert np.all(np.isfinite(g)), name
        flat = np.asarray(leaf).reshape(-1)
        for j in rng.choice(flat.size, size=min(3, flat.size), replace=False):

            def shifted(delta, li=li, j=j, leaf=leaf, flat=flat):
                new = flat.copy()
                new[j] += delta
                moved = list(leaves)
                moved[li] = jnp.asarray(new.reshape(leaf.shape))
                return f(jax.tree.unflatten(treedef, moved))

            fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
            # Central differences in float64: truncation O(eps^2) ~ 1e-12, rounding
            # ~ |f| 1e-16 / eps ~ 1e-9; rtol 1e-5, with atol 1e-7 for near-zero entries.
            np.testing.assert_allclose(
                g.reshape(-1)[j], fd, rtol=1e-5, atol=1e-7, err_msg=f"{case.name}: {name}[{j}]"
            )


# ----------------------------------------------- 4. NumPy re-implementation of the cells
def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, dtype=np.float64), tree)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _np_rnn(p, h, x):
    h = np.tanh(x @ p["w_ih"] + p["b"] + h @ p["w_hh"])
    return h, h


def _np_lstm(p, carry, x):
    h, c = carry
    gates = x @ p["w_ih"] + p["b"] + h @ p["w_hh"]
    i, f, g, o = np.split(gates, 4)  # PyTorch order i, f, g, o
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    return (h, c), h


def _np_gru(p, h, x):
    xr, xz, xn = np.split(x @ p["w_ih"] + p["b_ih"], 3)
    hr, hz, hn = np.split(h @ p["w_hh"] + p["b_hh"], 3)
    r = _sigmoid(xr + hr)
    z = _sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return h, h


def _np_mingru(p, h, x):
    z = _sigmoid(x @ p["w_z"] + p["b_z"])
    h_tilde = x @ p["w_h"] + p["b_h"]
    h = (1.0 - z) * h + z * h_tilde
    return h, h


def _np_lru(p, h, x):
    z = x @ p["in_proj"] if "in_proj" in p else x
    mean = z.mean()
    var = ((z - mean) ** 2).mean()
    xn = (z - mean) / np.sqrt(var + 1e-5) * p["norm_scale"] + p["norm_bias"]
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    gamma = np.exp(p["gamma_log"])
    B = p["b_re"] + 1j * p["b_im"]  # (H, N)
    C = p["c_re"] + 1j * p["c_im"]  # (N, H)
    h = lam * h + gamma * (xn @ B)
    y = np.real(h @ C) + p["d"] * xn
    gelu = 0.5 * y * (1.0 + erf(y / np.sqrt(2.0)))
    v = gelu @ p["glu_kernel"] + p["glu_bias"]
    a, b = np.split(v, 2)
    return h, a * _sigmoid(b) + z


def _np_zero_carry(family, p):
    if family == "LSTM":
        return (np.zeros(HIDDEN), np.zeros(HIDDEN))
    if family == "LRU":
        return np.zeros(p["nu_log"].shape, np.complex128)
    return np.zeros(HIDDEN)


_NP_CELLS = {
    "RNN": _np_rnn,
    "LSTM": _np_lstm,
    "GRU": _np_gru,
    "MinGRU": _np_mingru,
    "LRU": _np_lru,
}


def _np_head_log_prob(model, raw, x):
    if model.head.is_token:
        m = raw.max()
        return raw[x] - (m + np.log(np.sum(np.exp(raw - m))))
    d = model.head.event_shape[0]
    loc, log_scale = raw[:d], raw[d:]  # raw_shapes() order: loc, log_scale
    s = np.exp(log_scale)
    return np.sum(-0.5 * ((x - loc) / s) ** 2 - log_scale - 0.5 * np.log(2 * np.pi))


def np_recurrent_step_log_probs(model, params, x, u):
    """Per-step log p(x_t | x_<t) of a stacked recurrent network, in plain NumPy."""
    family = type(model).__name__
    cell = _NP_CELLS[family]
    P = _np(params)
    carries = [_np_zero_carry(family, lp) for lp in P["layers"]]
    features = np.zeros(HIDDEN)  # top-layer output before the first step
    out = []
    for t in range(len(x)):
        ut = np.zeros(0) if u is None else u[t]
        raw = np.concatenate([features, ut]) @ P["head"]["kernel"] + P["head"]["bias"]
        out.append(_np_head_log_prob(model, raw, x[t]))
        e = P["embed"][x[t]] if model.head.is_token else np.asarray(x[t], np.float64)
        inp = np.concatenate([e, ut])
        for li, lp in enumerate(P["layers"]):
            carries[li], inp = cell(lp, carries[li], inp)
        features = inp
    return np.array(out)


@pytest.mark.parametrize("case", NEURAL_CASES, ids=_ids(NEURAL_CASES))
def test_cell_matches_numpy_reference(case):
    model = case.build()
    params = make_params(model)
    x, u = make_data(model, 4, (B, T))
    got = np.asarray(probseq.step_log_probs(model, params, x, inputs=u))
    for b in range(B):
        want = np_recurrent_step_log_probs(model, params, x[b], _slice(u, b))
        # Same float64 arithmetic in another order (hoisted projections, parallel scan).
        np.testing.assert_allclose(got[b], want, rtol=1e-10, atol=1e-12)


def np_hmm_step_log_probs(model, params, x):
    """Per-step log p(x_t | x_<t) of an HMM by summing the joint over every hidden path."""
    P = _np(params)

    def softmax(v):
        w = np.exp(v - v.max(axis=-1, keepdims=True))
        return w / w.sum(axis=-1, keepdims=True)

    pi, A = softmax(P.initial_logits), softmax(P.transition_logits)
    K = len(pi)
    if model.head.is_token:
        lik = softmax(P.emission["logits"])[:, x].T  # (T, K)
    else:
        loc, s = P.emission["loc"], np.exp(P.emission["log_scale"])  # (K, D)
        dens = np.exp(-0.5 * ((x[:, None, :] - loc) / s) ** 2) / (s * np.sqrt(2 * np.pi))
        lik = dens.prod(-1)  # (T, K)
    prefix = []
    for t in range(1, len(x) + 1):
        paths = np.array(list(itertools.product(range(K), repeat=t)))  # (K^t, t)
        joint = pi[paths[:, 0]] * lik[0, paths[:, 0]]
        for s_ in range(1, t):
            joint = joint * A[paths[:, s_ - 1], paths[:, s_]] * lik[s_, paths[:, s_]]
        prefix.append(np.log(joint.sum()))
    return np.diff(np.concatenate([[0.0], prefix]))


@pytest.mark.parametrize("case", HMM_CASES, ids=_ids(HMM_CASES))
def test_hmm_matches_path_enumeration(case):
    model = case.build()
    params = make_params(model)
    x, _ = make_data(model, 5, (B, T))
    got = np.asarray(probseq.step_log_probs(model, params, x))
    for b in range(B):
        # Sum over K^t paths vs the scaled forward filter, float64: rounding only.
        want = np_hmm_step_log_probs(model, params, x[b])
        np.testing.assert_allclose(got[b], want, rtol=1e-10, atol=1e-12)


# --------------------------------------------- 5. generic path == family overrides
def generic_sequence_log_probs(model, params, state, xs, us=None):
    """The bare contract: one lax.scan of emission + update, no override involved."""

    def step(h, xu):
        x, u = xu
        lp = model.emission(params, h, u).log_prob(x)
        h = model.update(params, h, x, u)
        return h, (lp, h)

    _, (lps, after) = jax.lax.scan(step, state, (xs, us))
    return lps, after


def _overrides(model, name):
    return getattr(type(model), name) is not getattr(SequenceModel, name)


@functools.partial(jax.jit, static_argnums=0)
def _all_paths(model, params, xs, us):
    """Every way the model offers of computing the per-step terms and states, from the
    fresh initial state and from a non-trivial one (parallel scans must apply h0
    exactly); the two starting states are stacked on a leading axis."""
    fresh = model.initial_state(params)
    prefix = generic_sequence_log_probs(
        model, params, fresh, xs[:4], None if us is None else us[:4]
    )
    warm = jax.tree.map(lambda a: a[-1], prefix[1])
    h0s = jax.tree.map(lambda a, b: jnp.stack([a, b]), fresh, warm)

    def paths(h0):
        out = dict(
            generic=generic_sequence_log_probs(model, params, h0, xs, us),
            # The family's own path: its sequence_log_probs, or the default one running
            # on its trajectory override.
            own=model.sequence_log_probs(params, h0, xs, us),
        )
        if _overrides(model, "sequence_log_probs"):
            # The default, called unbound to bypass the override.
            out["default"] = SequenceModel.sequence_log_probs(model, params, h0, xs, us)
        if _overrides(model, "trajectory"):
            out["trajectory"] = model.trajectory(params, h0, xs, us)
        return out

    return jax.vmap(paths)(h0s)


GENERIC_CASES = ALL_CASES + SEQUENTIAL_SCAN_CASES


@pytest.mark.parametrize("case", GENERIC_CASES, ids=_ids(GENERIC_CASES))
def test_generic_path_matches_override(case):
    model = case.build()
    # Every family overrides at least one of the two (HMM: sequence_log_probs; the
    # recurrent networks: trajectory), so this compares two different code paths.
    assert _overrides(model, "sequence_log_probs") or _overrides(model, "trajectory")
    params = make_params(model)
    x, u = make_data(model, 6, (T,))
    xs = jnp.asarray(x, jnp.int32) if model.head.is_token else jnp.asarray(x, jnp.float64)
    us = None if u is None else jnp.asarray(u, jnp.float64)
    # Parallel vs sequential scans and hoisted projections reassociate float64 sums.
    tol = dict(rtol=1e-10, atol=1e-12)
    paths = jax.tree.map(np.asarray, _all_paths(model, params, xs, us))
    want_lps, want_after = paths.pop("generic")
    assert want_lps.shape == (2, T) and want_lps.dtype == np.float64
    assert np.all(np.isfinite(want_lps))
    if "trajectory" in paths:
        assert_trees_close(paths.pop("trajectory"), want_after, **tol)
    for key, (lps, after) in paths.items():
        np.testing.assert_allclose(lps, want_lps, err_msg=key, **tol)
        assert_trees_close(after, want_after, **tol)


# ------------------------------------------------------ 6. continuing from final_state
@pytest.mark.parametrize("case", ALL_CASES, ids=_ids(ALL_CASES))
def test_continue_from_final_state(case):
    model = case.build()
    params = make_params(model)
    x, u = make_data(model, 7, (B, T))
    # Float64; the split only moves where the (parallel) scans start: rounding only.
    tol = dict(rtol=1e-10, atol=1e-12)

    # One sequence: score x[:k], then x[k:] from its final state.
    k = 5
    whole = score_np(model, params, x[0], inputs=_slice(u, 0))
    head = score_np(model, params, x[0, :k], inputs=_slice(u, (0, slice(0, k))))
    tail = score_np(
        model,
        params,
        x[0, k:],
        inputs=_slice(u, (0, slice(k, None))),
        initial_state=head.final_state,
    )
    np.testing.assert_allclose(
        np.concatenate([head.step_log_probs, tail.step_log_probs]), whole.step_log_probs, **tol
    )
    np.testing.assert_allclose(head.log_prob + tail.log_prob, whole.log_prob, **tol)
    assert_trees_close(tail.final_state, whole.final_state, **tol)

    # A batch split at a different step per row: the heads as a masked batch, the tails
    # as a ragged list continued from the batched final states.
    ks = (5, 6, 7)
    whole = score_np(model, params, x, inputs=u)
    head = score_np(model, params, x, ragged_mask(ks), inputs=u)
    tails = [x[i, k:] for i, k in enumerate(ks)]
    utails = None if u is None else [u[i, k:] for i, k in enumerate(ks)]
    tail = score_np(model, params, tails, inputs=utails, initial_state=head.final_state)
    for i, k in enumerate(ks):
        np.testing.assert_allclose(
            np.concatenate([head.step_log_probs[i, :k], tail.step_log_probs[i, : T - k]]),
            whole.step_log_probs[i],
            **tol,
        )
        np.testing.assert_allclose(head.log_prob[i] + tail.log_prob[i], whole.log_prob[i], **tol)
    assert_trees_close(tail.final_state, whole.final_state, **tol)
