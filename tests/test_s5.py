"""S5: the init against HiPPO-LegS computed here, every layer against a float64 NumPy
recursion written here, parallel == sequential == step by step from any carried state
(values and gradients), gradients against finite differences, and a short fit.

Float32 tolerances: the sequential and the parallel path compute the same linear
recurrence, in another order (T sequential products vs a log2(T)-level tree of products
and sums), so they differ by a few ulps of the state per step, which the output map and
the head carry into the log-likelihoods: 1e-5 relative (atol 1e-5 on per-step values of
order 1). Gradients sum T such terms and go through the reverse of the same scans: 1e-4
relative, atol 1e-4 of the largest gradient entry.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import probseq
from probseq.families.s5 import MAX_REAL_PART, hippo_legs_normal_eigh

VOCAB = 5


def _hippo_normal_eigenvalues(n):
    """Eigenvalues of A + p p^T from the HiPPO-LegS definition, entry by entry."""
    a = np.zeros((n, n))
    for i in range(n):
        for k in range(n):
            if i > k:
                a[i, k] = -np.sqrt(2 * i + 1) * np.sqrt(2 * k + 1)
            elif i == k:
                a[i, k] = -(i + 1)
    p = np.array([np.sqrt(i + 0.5) for i in range(n)])
    return np.linalg.eigvals(a + np.outer(p, p))


def _sorted(z):
    z = np.asarray(z)
    return z[np.lexsort((np.round(z.real, 8), np.round(z.imag, 8)))]


@pytest.mark.parametrize("conj_sym", [True, False])
@pytest.mark.parametrize("state_size, blocks", [(8, 1), (12, 3), (32, None)])
def test_init_eigenvalues_are_hippo_legs_in_blocks(state_size, blocks, conj_sym):
    model = probseq.S5(vocab_size=VOCAB, hidden_size=4, state_size=state_size, blocks=blocks,
                       conj_sym=conj_sym)  # fmt: skip
    params = model.init(jax.random.key(0), dtype=jnp.float32)
    layer = params["layers"][0]
    lam = np.asarray(layer["lambda_re"], np.float64) + 1j * np.asarray(layer["lambda_im"])
    num_blocks = blocks or state_size // 16 or 1
    n = state_size // num_blocks
    assert lam.shape == ((state_size // 2) if conj_sym else state_size,)
    assert np.all(lam.real < 0)
    ref = _hippo_normal_eigenvalues(n)
    for block in np.split(lam, num_blocks):
        full = np.concatenate([block, block.conj()]) if conj_sym else block
        np.testing.assert_allclose(_sorted(full), _sorted(ref), rtol=1e-5, atol=1e-5)
        if conj_sym:  # one of each pair: no two stored eigenvalues are conjugates
            assert np.all(block.imag < 0)
        else:  # the stored set is closed under conjugation
            np.testing.assert_allclose(_sorted(block.conj()), _sorted(block), atol=1e-5)
    # float64 helper: V unitary and S = V diag(lambda) V^H
    w, v = hippo_legs_normal_eigh(n)
    np.testing.assert_allclose(v.conj().T @ v, np.eye(n), atol=1e-10)
    s = (v * w) @ v.conj().T
    np.testing.assert_allclose(s.imag, 0, atol=1e-9)
    np.testing.assert_allclose(_sorted(np.linalg.eigvals(s.real)), _sorted(ref), atol=1e-8)


def test_default_state_size_is_hidden_size_made_even_for_conjugate_pairs():
    stored = {
        (h, cs): probseq.S5(obs_dim=1, hidden_size=h, conj_sym=cs)._stored_state_size
        for h in (3, 4)
        for cs in (True, False)
    }
    assert stored == {(3, True): 2, (4, True): 2, (3, False): 3, (4, False): 4}


def test_init_step_sizes_are_log_uniform_in_range():
    model = probseq.S5(vocab_size=VOCAB, hidden_size=8, state_size=512, dt_min=0.01, dt_max=0.5)
    dt = np.exp(np.asarray(model.init(jax.random.key(1))["layers"][0]["log_step"]))
    assert dt.min() >= 0.01 * (1 - 1e-6) and dt.max() <= 0.5 * (1 + 1e-6)
    # log-uniform: the log's quartiles are a quarter of the way each
    q = np.quantile(np.log(dt), [0.25, 0.5, 0.75])
    lo, hi = np.log(0.01), np.log(0.5)
    np.testing.assert_allclose(q, lo + (hi - lo) * np.array([0.25, 0.5, 0.75]), atol=0.15)


# --------------------------------------------------------------- float64 reference
def _np_layer(p, s0, us, discretization, conj_sym):
    """One S5 layer over inputs us (T, in): returns states (T, P) and outputs (T, H)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    lam = np.minimum(p["lambda_re"], MAX_REAL_PART) + 1j * p["lambda_im"]
    dt = np.exp(p["log_step"])
    if discretization == "zoh":
        lam_bar = np.exp(lam * dt)
        b_scale = (lam_bar - 1) / lam
    else:
        lam_bar = (1 + dt * lam / 2) / (1 - dt * lam / 2)
        b_scale = dt / (1 - dt * lam / 2)
    b = (p["b_re"] + 1j * p["b_im"]) * b_scale  # (H, P)
    c = p["c_re"] + 1j * p["c_im"]  # (P, H)
    s, states, outs = np.asarray(s0, np.complex128), [], []
    for x in us:
        u = x @ p["in_proj"] if "in_proj" in p else x
        s = lam_bar * s + u @ b
        y = (2.0 if conj_sym else 1.0) * np.real(s @ c) + p["d"] * u
        states.append(s)
        outs.append(0.5 * y * (1.0 + erf(y / np.sqrt(2.0))))
    return np.array(states), np.array(outs)


def _np_network(model, params, state, xs, us=None):
    if model.head.is_token:
        e = np.asarray(params["embed"], np.float64)[np.asarray(xs)]
    else:
        e = np.asarray(xs, np.float64)
    if us is not None:
        e = np.concatenate([e, np.asarray(us, np.float64)], axis=-1)
    carries = []
    for p, c in zip(params["layers"], state.carries, strict=True):
        ss, e = _np_layer(p, c, e, model.discretization, model.conj_sym)
        carries.append(ss)
    return carries, e


def _perturbed(params, scale=0.1, seed=0):
    """Jitter every leaf so no parameter sits at its init symmetry (e.g. equal real parts)."""
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    out = [jnp.asarray(np.asarray(v) + scale * rng.normal(size=v.shape), v.dtype) for v in leaves]
    return jax.tree.unflatten(tree, out)


CASES = {
    "tokens-zoh": dict(vocab_size=VOCAB, hidden_size=6, state_size=4, num_layers=2),
    "reals-bilinear-u": dict(
        obs_dim=3,
        hidden_size=6,
        state_size=6,
        conj_sym=False,
        discretization="bilinear",
        input_dim=2,
    ),  # fmt: skip
    "tokens-blocks": dict(vocab_size=VOCAB, hidden_size=4, state_size=8, blocks=2, embed_size=3),
}


def _data(model, rng, shape):
    if model.head.is_token:
        x = rng.integers(0, VOCAB, size=shape)
    else:
        x = rng.normal(size=shape + (model.head.event_shape[0],))
    u = rng.normal(size=shape + (model.input_dim,)) if model.input_dim else None
    return x, u


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_numpy_float64(case, scan):
    with jax.enable_x64(True):
        model = probseq.S5(scan=scan, **CASES[case])
        params = _perturbed(model.init(jax.random.key(0), dtype=jnp.float64))
        rng = np.random.default_rng(1)
        x, u = _data(model, rng, (9,))
        state = model.initial_state(params)
        # start from a non-zero state: the one after a prefix
        state = model.trajectory(params, state, *_data(model, rng, (4,)))
        state = jax.tree.map(lambda a: a[-1], state)
        u = None if u is None else jnp.asarray(u)
        after = model.trajectory(params, state, jnp.asarray(x), u)
        carries, feats = _np_network(model, params, state, x, u)
        np.testing.assert_allclose(np.asarray(after.features), feats, rtol=1e-10, atol=1e-12)
        for got, ref in zip(after.carries, carries, strict=True):
            np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-10, atol=1e-12)


def _pair(**kw):
    return probseq.S5(scan="sequential", **kw), probseq.S5(scan="parallel", **kw)


@pytest.mark.parametrize("t", [1, 7, 97, 4096])
def test_parallel_equals_sequential_values_and_gradients(t):
    seq, par = _pair(vocab_size=VOCAB, hidden_size=8, state_size=8, num_layers=2)
    params = seq.init(jax.random.key(2))
    x = jax.random.randint(jax.random.key(3), (2, t), 0, VOCAB)
    mask = np.arange(t)[None] < np.array([t, max(1, (2 * t) // 3)])[:, None]
    prefix = jax.random.randint(jax.random.key(4), (2, 30), 0, VOCAB)
    h0 = probseq.score(seq, params, prefix).final_state
    assert min(float(jnp.abs(c).max()) for c in h0.carries) > 0.1  # genuinely non-zero
    a = probseq.score(seq, params, x, mask, initial_state=h0)
    b = probseq.score(par, params, x, mask, initial_state=h0)
    np.testing.assert_allclose(b.step_log_probs, a.step_log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.log_prob, a.log_prob, rtol=1e-5)
    for fa, fb in zip(jax.tree.leaves(a.final_state), jax.tree.leaves(b.final_state), strict=True):
        np.testing.assert_allclose(fb, fa, rtol=1e-5, atol=1e-5)

    def loss(model, p):
        return -jnp.sum(probseq.log_prob(model, p, x, mask, initial_state=h0)) / t

    ga = jax.grad(lambda p: loss(seq, p))(params)
    gb = jax.grad(lambda p: loss(par, p))(params)
    for la, lb in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        scale = float(np.abs(np.asarray(la)).max()) + 1e-30
        np.testing.assert_allclose(lb, la, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_step_by_step_and_windows_equal_the_full_pass(scan):
    """update() one step at a time (sampling) and scoring in windows from the carried state
    (truncated BPTT) give the full pass's states and per-step log-likelihoods."""
    model = probseq.S5(vocab_size=VOCAB, hidden_size=6, state_size=6, num_layers=2, scan=scan)
    params = model.init(jax.random.key(5))
    x = jax.random.randint(jax.random.key(6), (23,), 0, VOCAB)
    h = model.initial_state(params)
    whole = model.trajectory(params, h, x)
    update = jax.jit(model.update)
    for t in range(x.shape[0]):
        h = update(params, h, x[t])
        for got, ref in zip(jax.tree.leaves(h), jax.tree.leaves(whole), strict=True):
            np.testing.assert_allclose(got, ref[t], rtol=1e-5, atol=1e-6)
    full = probseq.score(model, params, x[None])
    state, parts = None, []
    for lo, hi in [(0, 5), (5, 6), (6, 17), (17, 23)]:
        r = probseq.score(model, params, x[None, lo:hi], initial_state=state)
        state, parts = r.final_state, parts + [r.step_log_probs]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full.step_log_probs, rtol=1e-5,
                               atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_gradient_matches_finite_differences_float64(scan):
    with jax.enable_x64(True):
        model = probseq.S5(obs_dim=2, hidden_size=3, state_size=4, scan=scan, num_layers=2,
                           discretization="bilinear" if scan == "parallel" else "zoh")  # fmt: skip
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


def test_eigenvalues_stay_stable_when_pushed_to_the_right_half_plane():
    model = probseq.S5(obs_dim=1, hidden_size=2, state_size=2)
    params = model.init(jax.random.key(8))
    layer = dict(params["layers"][0], lambda_re=jnp.array([3.0]))  # unstable if unclipped
    for disc in ("zoh", "bilinear"):
        m = probseq.S5(obs_dim=1, hidden_size=2, state_size=2, discretization=disc)
        lam_bar, _ = m.discretize(layer)
        assert float(jnp.abs(lam_bar).max()) < 1.0
    p = dict(params, layers=(layer,))
    x = jnp.ones((1, 2000, 1))
    assert np.isfinite(np.asarray(probseq.log_prob(model, p, x))).all()


def test_a_short_fit_decreases_the_loss():
    model = probseq.S5(vocab_size=4, hidden_size=8, state_size=8)
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
        (dict(state_size=7), "needs an even state_size"),
        (dict(state_size=12, blocks=4), "does not split into blocks=4 blocks of even size"),
        (dict(state_size=12, blocks=5, conj_sym=False), "does not split into blocks=5"),
        (dict(discretization="euler"), "discretization must be one of"),
        (dict(dt_min=0.2, dt_max=0.1), "need dt_min <= dt_max"),
        (dict(dt_min=0.0), "dt_min must be a finite number > 0"),
        (dict(scan="fast"), "scan must be one of"),
    ],
)
def test_bad_configuration_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        probseq.S5(vocab_size=VOCAB, hidden_size=4, **kwargs)
