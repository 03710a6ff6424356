"""Mamba: the init as documented, every block against a float64 NumPy recursion written
here, parallel == sequential == step by step from any carried state (values and
gradients), the convolution window carried across truncated-BPTT windows (crossed three
times, once by a window shorter than the convolution), gradients against finite
differences, and a short fit.

Float32 tolerances: both paths compute the same (E, N) linear recurrence in another
order (T sequential steps vs a log2(T)-level tree), a few ulps of the state per step,
which C, the gate and the projections carry into the log-likelihoods: 1e-5 relative
(atol 1e-5 on per-step values of order 1). Gradients sum T such terms through the
reverse scans: 1e-4 relative, atol 1e-4 of the largest gradient entry.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq

VOCAB = 5


def _softplus(v):
    return np.logaddexp(0.0, v)


def _silu(v):
    return v / (1.0 + np.exp(-v))


def _np_block(p, conv0, h0, us, dt_rank, n):
    """One Mamba block over inputs us (T, in), from a window conv0 (K-1, E) of earlier
    convolution inputs and a state h0 (E, N). Returns windows, states, outputs."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    k = p["conv_weight"].shape[0]
    a = -np.exp(p["A_log"])
    hist = [np.asarray(r, np.float64) for r in conv0]  # oldest first
    h = np.array(h0, np.float64)  # a writable copy
    windows, states, outs = [], [], []
    for u in us:
        xz = u @ p["in_proj"]
        x, z = xz[: xz.size // 2], xz[xz.size // 2 :]
        hist.append(x)
        conv = p["conv_bias"] + sum(p["conv_weight"][i] * hist[-k + i] for i in range(k))
        c = _silu(conv)
        dbc = c @ p["x_proj"]
        delta = _softplus(dbc[:dt_rank] @ p["dt_weight"] + p["dt_bias"])
        bvec, cvec = dbc[dt_rank : dt_rank + n], dbc[dt_rank + n :]
        for e in range(h.shape[0]):  # channel by channel, state entry by entry
            for j in range(n):
                h[e, j] = np.exp(delta[e] * a[e, j]) * h[e, j] + delta[e] * c[e] * bvec[j]
        y = h @ cvec + p["D"] * c
        outs.append((y * _silu(z)) @ p["out_proj"])
        windows.append(np.array(hist[-(k - 1) :]))
        states.append(h.copy())
    return np.array(windows), np.array(states), np.array(outs)


def _np_network(model, params, state, xs, us=None):
    if model.head.is_token:
        e = np.asarray(params["embed"], np.float64)[np.asarray(xs)]
    else:
        e = np.asarray(xs, np.float64)
    if us is not None:
        e = np.concatenate([e, np.asarray(us, np.float64)], axis=-1)
    carries = []
    for p, c in zip(params["layers"], state.carries, strict=True):
        w, s, e = _np_block(p, c.conv, c.ssm, e, model._dt_rank, model.state_size)
        carries.append((w, s))
    return carries, e


def _perturbed(params, scale=0.1, seed=0):
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    out = [jnp.asarray(np.asarray(v) + scale * rng.normal(size=v.shape), v.dtype) for v in leaves]
    return jax.tree.unflatten(tree, out)


def _data(model, rng, shape):
    if model.head.is_token:
        x = rng.integers(0, VOCAB, size=shape)
    else:
        x = rng.normal(size=shape + (model.head.event_shape[0],))
    u = rng.normal(size=shape + (model.input_dim,)) if model.input_dim else None
    return x, u


CASES = {
    "tokens": dict(vocab_size=VOCAB, hidden_size=4, state_size=3, num_layers=2),
    "reals-u": dict(
        obs_dim=3, hidden_size=4, state_size=2, expand=1, conv_width=3, dt_rank=2, input_dim=2
    ),  # fmt: skip
}


def test_init_is_the_documented_one():
    model = probseq.Mamba(vocab_size=VOCAB, hidden_size=40, state_size=5, dt_min=0.002, dt_max=0.2)
    p = model.init(jax.random.key(0))["layers"][0]
    e = 80
    np.testing.assert_allclose(np.exp(p["A_log"]), np.tile(np.arange(1.0, 6.0), (e, 1)), rtol=1e-6)
    np.testing.assert_array_equal(p["D"], np.ones(e))
    dt = _softplus(np.asarray(p["dt_bias"], np.float64))
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.2 * (1 + 1e-4)
    assert np.std(np.log(dt)) > 0.2 * np.log(100)  # log-uniform: std = range / sqrt(12)
    r = 3  # ceil(40 / 16)
    assert p["dt_weight"].shape == (r, e) and np.abs(p["dt_weight"]).max() <= r**-0.5
    assert p["x_proj"].shape == (e, r + 2 * 5)
    assert p["in_proj"].shape == (40, 2 * e)  # embed_size = hidden_size
    assert p["conv_weight"].shape == (4, e) and np.abs(p["conv_weight"]).max() <= 0.5
    assert p["out_proj"].shape == (e, 40)


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_numpy_float64(case, scan):
    with jax.enable_x64(True):
        model = probseq.Mamba(scan=scan, **CASES[case])
        params = _perturbed(model.init(jax.random.key(0), dtype=jnp.float64))
        rng = np.random.default_rng(1)
        state = model.initial_state(params)
        state = model.trajectory(params, state, *_data(model, rng, (5,)))  # a real prefix
        state = jax.tree.map(lambda a: a[-1], state)
        x, u = _data(model, rng, (7,))
        after = model.trajectory(params, state, jnp.asarray(x), None if u is None else u)
        carries, feats = _np_network(model, params, state, x, u)
        np.testing.assert_allclose(np.asarray(after.features), feats, rtol=1e-10, atol=1e-12)
        for got, (w, s) in zip(after.carries, carries, strict=True):
            np.testing.assert_allclose(np.asarray(got.conv), w, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.asarray(got.ssm), s, rtol=1e-10, atol=1e-12)


def _pair(**kw):
    return probseq.Mamba(scan="sequential", **kw), probseq.Mamba(scan="parallel", **kw)


@pytest.mark.parametrize("t", [1, 7, 97, 4096])
def test_parallel_equals_sequential_values_and_gradients(t):
    seq, par = _pair(vocab_size=VOCAB, hidden_size=4, state_size=4, num_layers=2)
    params = seq.init(jax.random.key(2))
    x = jax.random.randint(jax.random.key(3), (2, t), 0, VOCAB)
    mask = np.arange(t)[None] < np.array([t, max(1, (2 * t) // 3)])[:, None]
    h0 = probseq.score(seq, params, jax.random.randint(jax.random.key(4), (2, 30), 0, VOCAB))
    h0 = h0.final_state
    # genuinely non-zero (at init Delta ~ 0.01 keeps the selective state small)
    assert min(float(jnp.abs(c).max()) for c in jax.tree.leaves(h0.carries)) > 1e-3
    a = probseq.score(seq, params, x, mask, initial_state=h0)
    b = probseq.score(par, params, x, mask, initial_state=h0)
    np.testing.assert_allclose(b.step_log_probs, a.step_log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.log_prob, a.log_prob, rtol=1e-5)
    for fa, fb in zip(jax.tree.leaves(a.final_state), jax.tree.leaves(b.final_state), strict=True):
        np.testing.assert_allclose(fb, fa, rtol=1e-5, atol=1e-6)

    def loss(model, p):
        return -jnp.sum(probseq.log_prob(model, p, x, mask, initial_state=h0)) / t

    ga = jax.grad(lambda p: loss(seq, p))(params)
    gb = jax.grad(lambda p: loss(par, p))(params)
    for la, lb in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        scale = float(np.abs(np.asarray(la)).max()) + 1e-30
        np.testing.assert_allclose(lb, la, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("chunk_size", [1, 10, 97, 500])
def test_chunked_parallel_scan_equals_the_sequential_one(chunk_size):
    """Chunks of 1, 10 (the last one padded), exactly T and more than T steps."""
    kw = dict(obs_dim=2, hidden_size=4, state_size=3, scan="parallel")
    seq = probseq.Mamba(**{**kw, "scan": "sequential"})
    chunked = probseq.Mamba(chunk_size=chunk_size, **kw)
    params = _perturbed(seq.init(jax.random.key(11)), scale=0.3)
    x = jax.random.normal(jax.random.key(12), (97, 2))
    h0 = jax.tree.map(lambda a: a[-1], seq.trajectory(params, seq.initial_state(params), x[:9]))
    a = seq.trajectory(params, h0, x)
    b = chunked.trajectory(params, h0, x)
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_step_by_step_and_windows_equal_the_full_pass(scan):
    """update() one step at a time (sampling) and scoring in windows from the carried state
    (truncated BPTT) give the full pass. The windows cross three boundaries, one window (2
    steps) shorter than the convolution (4): its first output reads inputs of two windows
    back."""
    model = probseq.Mamba(vocab_size=VOCAB, hidden_size=4, state_size=3, num_layers=2, scan=scan)
    params = _perturbed(model.init(jax.random.key(5)), scale=0.3)
    x = jax.random.randint(jax.random.key(6), (21,), 0, VOCAB)
    h = model.initial_state(params)
    whole = model.trajectory(params, h, x)
    update = jax.jit(model.update)
    for t in range(x.shape[0]):
        h = update(params, h, x[t])
        for got, ref in zip(jax.tree.leaves(h), jax.tree.leaves(whole), strict=True):
            np.testing.assert_allclose(got, ref[t], rtol=1e-5, atol=1e-6)
    full = probseq.score(model, params, x[None])
    state, parts = None, []
    for lo, hi in [(0, 5), (5, 7), (7, 13), (13, 21)]:
        r = probseq.score(model, params, x[None, lo:hi], initial_state=state)
        state, parts = r.final_state, parts + [r.step_log_probs]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full.step_log_probs, rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    # and the window matters: dropping it (zeros) at a boundary changes the next steps
    cut = probseq.score(model, params, x[None, :7]).final_state
    cut = cut._replace(carries=tuple(c._replace(conv=jnp.zeros_like(c.conv)) for c in cut.carries))
    wrong = probseq.score(model, params, x[None, 7:13], initial_state=cut).step_log_probs
    assert float(jnp.abs(wrong - full.step_log_probs[:, 7:13]).max()) > 1e-3


def test_windows_shorter_than_the_convolution_sum_to_the_whole():
    """Windows of 3 steps (conv width 4) from the carried state: every window's first
    outputs read inputs of the window before (and of the one before that)."""
    model = probseq.Mamba(vocab_size=VOCAB, hidden_size=4, state_size=3)
    params = model.init(jax.random.key(9))
    x = np.asarray(jax.random.randint(jax.random.key(10), (2, 12), 0, VOCAB))
    state, total = None, 0.0
    for lo in range(0, 12, 3):
        r = probseq.score(model, params, x[:, lo : lo + 3], initial_state=state)
        state, total = r.final_state, total + float(jnp.sum(r.log_prob))
    np.testing.assert_allclose(total, float(jnp.sum(probseq.log_prob(model, params, x))),
                               rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_gradient_matches_finite_differences_float64(scan):
    with jax.enable_x64(True):
        model = probseq.Mamba(obs_dim=2, hidden_size=3, state_size=2, num_layers=2, scan=scan)
        params = _perturbed(model.init(jax.random.key(7), dtype=jnp.float64), seed=2)
        x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 2)))

        def f(p):
            return jnp.sum(probseq.log_prob(model, p, x))

        g = jax.grad(f)(params)
        leaves, tree = jax.tree.flatten(params)
        rng, eps = np.random.default_rng(4), 1e-6
        for _ in range(3):
            v = jax.tree.unflatten(tree, [jnp.asarray(rng.normal(size=a.shape)) for a in leaves])
            plus = f(jax.tree.map(lambda a, d: a + eps * d, params, v))
            minus = f(jax.tree.map(lambda a, d: a - eps * d, params, v))
            fd = (plus - minus) / (2 * eps)
            pairs = zip(jax.tree.leaves(g), jax.tree.leaves(v), strict=True)
            exact = sum(jnp.vdot(a, d) for a, d in pairs)
            np.testing.assert_allclose(float(exact), float(fd), rtol=1e-6)


def test_a_short_fit_decreases_the_loss():
    model = probseq.Mamba(vocab_size=4, hidden_size=8, state_size=4)
    rng = np.random.default_rng(0)
    x = np.tile(np.array([0, 1, 2, 3, 3, 2]), (16, 3))
    x[:, ::7] = rng.integers(0, 4, size=x[:, ::7].shape)
    params = model.init(jax.random.key(0))
    res = probseq.fit_sgd(model, params, x, key=jax.random.key(1), num_epochs=4, batch_size=4,
                          learning_rate=0.05, progress=False)  # fmt: skip
    ll = res.history["log_likelihood_per_token"]
    assert np.isfinite(ll).all() and ll[-1] > ll[0] + 0.1, ll


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(conv_width=1), "conv_width must be"),
        (dict(state_size=0), "state_size must be"),
        (dict(dt_min=0.2, dt_max=0.1), "need dt_min <= dt_max"),
        (dict(scan="fast"), "scan must be one of"),
        (dict(chunk_size=0), "chunk_size must be"),
    ],
)
def test_bad_configuration_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        probseq.Mamba(vocab_size=VOCAB, hidden_size=4, **kwargs)
