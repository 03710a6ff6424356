"""probseq.diagnostics against jax.jacfwd / jax.grad of the whole unrolled map and
numpy.linalg.svd, for every kind of state (real, stacked, LSTM pairs, the LRU's complex
one, the HMMs' predictive distribution, input-driven transitions too); refusals of
batches and ragged input; the plot.

References here never call the diagnostics' own code: they unroll ``update`` from s_t
to s_T in plain Python and differentiate that whole map, with their own flattening of
the state (norms and singular values do not depend on the order of coordinates).
Everything runs in float64 (``jax.enable_x64`` as a fixture, scoped to each test), so
the tolerances are rounding only: 1e-9 relative, except the spectral norms of the
products, which come from a power iteration stopped at 4 machine epsilons of change
(1e-7 relative, far above its error where the top two singular values are apart).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_logs import compiled_messages
from matplotlib.figure import Figure

import probseq
from probseq import diagnostics, plots

T = 4
CASES = {
    "RNN": lambda: probseq.RNN(vocab_size=4, hidden_size=3, num_layers=2),
    "LSTM": lambda: probseq.LSTM(vocab_size=4, hidden_size=3),
    "GRU": lambda: probseq.GRU(obs_dim=2, hidden_size=3, input_dim=2),
    "LRU": lambda: probseq.LRU(vocab_size=4, hidden_size=3, state_size=2),
    "CategoricalHMM": lambda: probseq.CategoricalHMM(num_states=3, vocab_size=4),
    "GaussianHMM+inputs": lambda: probseq.GaussianHMM(num_states=3, obs_dim=2, input_dim=2),
}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _setup(name, seed=0):
    model = CASES[name]()
    params = model.init(jax.random.key(seed), dtype=jnp.float64)
    rng = np.random.default_rng(seed)
    # Jitter every leaf: no exact zeros (biases, LRU's norm_bias, HMM input weights).
    params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape), params)
    if model.head.is_token:
        x = jnp.asarray(rng.integers(0, 4, T))
    else:
        x = jnp.asarray(rng.normal(size=(T, 2)))
    us = jnp.asarray(rng.normal(size=(T, model.input_dim))) if model.input_dim else None
    return model, params, x, us


def _flat(state):
    out = []
    for a in jax.tree.leaves(state):
        a = jnp.ravel(a)
        out += [a.real, a.imag] if jnp.iscomplexobj(a) else [a]
    return jnp.concatenate(out)


def _unflat(v, like):
    leaves, treedef = jax.tree.flatten(like)
    out, i = [], 0
    for a in leaves:
        n = a.size
        if jnp.iscomplexobj(a):
            out.append(jax.lax.complex(v[i : i + n], v[i + n : i + 2 * n]).reshape(a.shape))
            n *= 2
        else:
            out.append(v[i : i + n].reshape(a.shape))
        i += n
    return jax.tree.unflatten(treedef, out)


def _u(us, t):
    return None if us is None else us[t]


def _states(model, params, x, us):
    s = [model.initial_state(params)]
    for t in range(T):
        s.append(model.update(params, s[-1], x[t], _u(us, t)))
    return s


@functools.partial(jax.jit, static_argnums=0)
def _references(model, params, x, us):
    """For every t: jacfwd of the unrolled map s_t -> s_T, jacfwd of the one step
    s_t -> s_{t+1}, and grad of the loss terms that depend on s_t (one compile)."""
    states = _states(model, params, x, us)
    like = states[0]

    def unrolled(v, t):  # s_t -> s_T
        s = _unflat(v, like)
        for k in range(t, T):
            s = model.update(params, s, x[k], _u(us, k))
        return _flat(s)

    def one_step(v, t):
        return _flat(model.update(params, _unflat(v, like), x[t], _u(us, t)))

    def loss_from(v, t):
        s, total = _unflat(v, like), 0.0
        for k in range(t, T):
            total -= model.emission(params, s, _u(us, k)).log_prob(x[k])
            s = model.update(params, s, x[k], _u(us, k))
        return total

    products = [jax.jacfwd(unrolled)(_flat(states[t]), t) for t in range(T + 1)]
    steps = [jax.jacfwd(one_step)(_flat(states[t]), t) for t in range(T)]
    grads = [jax.grad(loss_from)(_flat(states[t]), t) for t in range(T)]
    return products, steps, grads


@pytest.mark.parametrize("name", list(CASES))
def test_equal_jacfwd_and_grad_of_the_unrolled_map(name):
    model, params, x, us = _setup(name)
    d = diagnostics.gradient_diagnostics(model, params, x, inputs=us)
    n = _flat(model.initial_state(params)).size
    assert d.singular_values.shape == (T, n)
    assert d.jacobian_norms.shape == (T + 1,) and d.loss_gradient_norms.shape == (T,)
    products, steps, grads = _references(model, params, x, us)
    for t in range(T + 1):
        want = np.linalg.norm(np.asarray(products[t]), 2)
        np.testing.assert_allclose(d.jacobian_norms[t], want, rtol=1e-7)
    for t in range(T):
        sv = np.linalg.svd(np.asarray(steps[t]), compute_uv=False)
        np.testing.assert_allclose(d.singular_values[t], sv, rtol=1e-9, atol=1e-12 * sv[0])
        want = np.linalg.norm(np.asarray(grads[t]))
        np.testing.assert_allclose(d.loss_gradient_norms[t], want, rtol=1e-9)
    np.testing.assert_allclose(
        d.step_log_probs, probseq.step_log_probs(model, params, x, inputs=us), rtol=1e-9
    )


@pytest.mark.parametrize("name", ["LSTM", "LRU", "CategoricalHMM", "GaussianHMM+inputs"])
def test_parameter_gradient_and_its_per_step_parts(name):
    """The steps' parts are the gradients with respect to a separate copy of the
    parameters per step (step 0's copy also builds the initial state); they sum to
    jax.grad of -log_prob, which runs the families' own fast paths."""
    model, params, x, us = _setup(name)
    d = diagnostics.gradient_diagnostics(model, params, x, inputs=us)

    def loss(copies):
        s, total = model.initial_state(copies[0]), 0.0
        for t in range(T):
            p = copies[t]
            total -= model.emission(p, s, _u(us, t)).log_prob(x[t])
            s = model.update(p, s, x[t], _u(us, t))
        return total

    parts = jax.jit(jax.grad(loss))([params] * T)
    norms = [np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(p))) for p in parts]
    np.testing.assert_allclose(d.step_gradient_norms, norms, rtol=1e-9)
    want = jax.grad(lambda p: -probseq.log_prob(model, p, x, inputs=us))(params)
    for got, ref in zip(jax.tree.leaves(d.param_gradient), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)


def test_from_a_given_state_the_start_is_not_differentiated():
    model, params, x, _ = _setup("LSTM", seed=2)
    h = probseq.score(model, params, x[:2]).final_state
    d = diagnostics.gradient_diagnostics(model, params, x[2:], initial_state=h)
    want = jax.grad(lambda p: -probseq.log_prob(model, p, x[2:], initial_state=h))(params)
    for got, ref in zip(jax.tree.leaves(d.param_gradient), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)
    full = diagnostics.gradient_diagnostics(model, params, x)
    np.testing.assert_allclose(d.loss_gradient_norms, full.loss_gradient_norms[2:], rtol=1e-9)


def test_a_seq2seq_starts_from_its_source():
    enc, dec = probseq.GRU(vocab_size=4, hidden_size=3), probseq.GRU(vocab_size=4, hidden_size=3)
    model = probseq.Seq2Seq(enc, dec)
    params = model.init(jax.random.key(0), dtype=jnp.float64)
    x, src = jnp.array([1, 2, 3, 0]), jnp.array([3, 1, 2])
    d = diagnostics.gradient_diagnostics(model, params, x, source=src)
    want = jax.grad(lambda p: -probseq.log_prob(model, p, x, source=src))(params)
    for got, ref in zip(jax.tree.leaves(d.param_gradient), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(
        d.step_log_probs, probseq.step_log_probs(model, params, x, source=src), rtol=1e-9
    )
    with pytest.raises(ValueError, match="source"):
        diagnostics.gradient_diagnostics(model, params, x)


def test_float32_parameters_give_float32_results():
    with jax.enable_x64(False):
        model = probseq.LRU(vocab_size=4, hidden_size=3)
        params = model.init(jax.random.key(0))
        d = diagnostics.gradient_diagnostics(model, params, jnp.arange(5) % 4)
        assert d.jacobian_norms.dtype == jnp.float32
        assert np.isfinite(d.singular_values).all() and d.jacobian_norms[-1] == 1


def test_new_parameters_and_data_of_the_same_shapes_do_not_recompile():
    model, params, x, _ = _setup("RNN")
    diagnostics.gradient_diagnostics(model, params, x)
    other, y = jax.tree.map(lambda a: 2 * a, params), (x + 1) % 4
    with compiled_messages() as compiled:
        diagnostics.gradient_diagnostics(model, other, y)
    assert not [m for m in compiled if "_diagnostics_kernel" in m], compiled


def test_state_vector_round_trip():
    model = CASES["LRU"]()
    state = probseq.score(model, model.init(jax.random.key(0)), jnp.arange(4) % 4).final_state
    v, unravel = diagnostics.state_vector(state)
    assert v.dtype == jnp.float64 and not jnp.iscomplexobj(v)
    back = unravel(v)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_batches_ragged_and_bad_input_are_refused():
    model, params, x, _ = _setup("LSTM")
    batch = jnp.stack([x, x])
    with pytest.raises(ValueError, match="one sequence, not a batch.*x\\[i, :lengths\\[i\\]\\]"):
        diagnostics.gradient_diagnostics(model, params, batch)
    with pytest.raises(ValueError, match="list of 2 sequences"):
        diagnostics.gradient_diagnostics(model, params, [x, x[:2]])
    with pytest.raises(ValueError, match="outside"):
        diagnostics.gradient_diagnostics(model, params, x.at[2].set(9))
    with pytest.raises(ValueError, match="empty"):
        diagnostics.gradient_diagnostics(model, params, x[:0])
    with pytest.raises(ValueError, match="initial_state"):
        diagnostics.gradient_diagnostics(model, params, x, initial_state=jnp.zeros(3))
    gru, gp, gx, _ = _setup("GRU")
    with pytest.raises(ValueError, match="inputs"):
        diagnostics.gradient_diagnostics(gru, gp, gx)


def test_plot_draws_every_model_and_refuses_bad_input():
    model, params, x, _ = _setup("RNN")
    d = diagnostics.gradient_diagnostics(model, params, x)
    fig = plots.plot_gradient_diagnostics(d, title="rnn")
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), d.jacobian_norms)
    lru, lp, lx, _ = _setup("LRU")
    e = diagnostics.gradient_diagnostics(lru, lp, lx[:3])
    fig = plots.plot_gradient_diagnostics({"RNN": d, "LRU": e})
    assert [len(ax.lines) for ax in fig.axes] == [2, 5, 4]  # 2nd: + the line at 1
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["RNN", "LRU"]
    with pytest.raises(ValueError, match="without"):
        plots.plot_gradient_diagnostics({"a": np.zeros(3)})
    with pytest.raises(ValueError, match="empty dict"):
        plots.plot_gradient_diagnostics({})
    with pytest.raises(ValueError, match="jacobian_norms has shape"):
        plots.plot_gradient_diagnostics(d._replace(jacobian_norms=d.jacobian_norms[:-1]))
    with pytest.raises(ValueError, match="NaN"):
        plots.plot_gradient_diagnostics(
            d._replace(step_gradient_norms=d.step_gradient_norms * np.nan)
        )
