"""Every contraction in the HMM path states full float32 precision.

On recent NVIDIA GPUs XLA runs float32 matmuls at TF32-class precision unless a call
says otherwise (measured on an H200: HMM log_prob 1.9e-6 relative error, transition
matrix after 2 EM iterations 1.8e-4). The CPU computes both the same way, so only the
jaxprs show it: these tests walk every (nested) jaxpr of log_prob, the filters, the
smoothers, sampling and one EM iteration of each E-step, and fail on a ``dot_general``
without ``Precision.HIGHEST`` on both operands.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import probseq
from probseq import core
from probseq.families import hmm as hmm_module
from probseq.fit import em

HIGHEST = jax.lax.Precision.HIGHEST


def _subjaxprs(params):
    for value in params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jax.extend.core.Jaxpr):
                yield v


def dot_precisions(closed):
    """The precision parameter of every dot_general in a (closed) jaxpr, recursively."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn.params["precision"])
            for sub in _subjaxprs(eqn.params):
                walk(sub)

    walk(closed.jaxpr)
    return found


def _is_highest(precision):
    if precision is None:
        return False
    if isinstance(precision, tuple):
        return all(p == HIGHEST for p in precision)
    return precision == HIGHEST


def assert_all_highest(closed, what):
    precisions = dot_precisions(closed)
    assert precisions, f"{what}: no dot_general found (the walk missed the kernel)"
    bad = [p for p in precisions if not _is_highest(p)]
    assert not bad, f"{what}: {len(bad)} of {len(precisions)} dot_generals not HIGHEST: {bad}"


def _models(scan="auto"):
    cat = probseq.CategoricalHMM(num_states=3, vocab_size=5, scan=scan)
    gauss = probseq.GaussianHMM(num_states=3, obs_dim=2, scan=scan)
    key = jax.random.key(0)
    x_cat = jax.random.randint(key, (2, 300), 0, 5)
    x_gauss = jax.random.normal(key, (2, 300, 2))
    return [(cat, cat.init(key), x_cat), (gauss, gauss.init(key), x_gauss)]


MODELS = _models()
IDS = ["categorical", "gaussian"]


def test_walker_sees_default_precision():
    """The check can fail: a plain ``@`` is reported as not HIGHEST."""
    closed = jax.make_jaxpr(lambda a, b: jax.lax.scan(lambda c, _: (c @ b, None), a, None, 3))(
        jnp.ones((2, 2)), jnp.ones((2, 2))
    )
    assert dot_precisions(closed) and not any(_is_highest(p) for p in dot_precisions(closed))


@pytest.mark.parametrize("which", [0, 1], ids=IDS)
@pytest.mark.parametrize("scan", ["sequential", "chunked", "parallel"])
def test_log_prob_is_highest(which, scan):
    model, params, x = _models(scan)[which]
    mask = jnp.ones(x.shape[:2], bool)
    closed = jax.make_jaxpr(core._score_kernel.__wrapped__, static_argnums=0)(
        model, params, x, mask, None, None
    )
    assert_all_highest(closed, f"log_prob ({scan})")


@pytest.mark.parametrize("which", [0, 1], ids=IDS)
@pytest.mark.parametrize("scan", ["sequential", "chunked", "parallel"])
@pytest.mark.parametrize("kernel", ["_filter_kernel", "_smoother_kernel", "_sample_states_kernel"])
def test_posterior_kernels_are_highest(which, scan, kernel):
    model, params, x = _models(scan)[which]
    mask = jnp.ones(x.shape[:2], bool)
    assert_all_highest(_kernel_jaxpr(kernel, model, params, x, mask, None), kernel)


def _kernel_jaxpr(kernel, model, params, x, mask, us):
    """The jaxpr of a posterior kernel of probseq.families.hmm (inputs us or None)."""
    fn = getattr(hmm_module, kernel).__wrapped__
    if kernel == "_sample_states_kernel":
        return jax.make_jaxpr(fn, static_argnums=(0, 6))(
            model, params, jax.random.key(1), x, mask, us, 2
        )
    return jax.make_jaxpr(fn, static_argnums=0)(model, params, x, mask, us)


@pytest.mark.parametrize(
    "kernel", ["_filter_kernel", "_smoother_kernel", "_viterbi_kernel", "_sample_states_kernel"]
)
def test_input_driven_posterior_kernels_are_highest(kernel):
    """An input-driven HMM's kernels: A_t = softmax(logits + W u_t) per step, and the
    per-step products of the filter, smoother, counts and predictions."""
    model = probseq.CategoricalHMM(3, 5, input_dim=2)
    params = model.init(jax.random.key(0))
    x = jnp.zeros((2, 7), jnp.int32)
    mask = jnp.ones(x.shape, bool)
    us = jnp.ones((2, 7, 2), jnp.float32)
    assert_all_highest(_kernel_jaxpr(kernel, model, params, x, mask, us), kernel)


@pytest.mark.parametrize("model,params,x", MODELS, ids=IDS)
@pytest.mark.parametrize("estep", ["autodiff", "forward_backward", "chunked"])
def test_em_iteration_is_highest(model, params, x, estep):
    mask = jnp.ones(x.shape[:2], bool)
    prior = em._prior(model, None, jnp.float32)
    closed = jax.make_jaxpr(lambda p: em._em_update(model, p, x, mask, prior, estep))(params)
    assert_all_highest(closed, f"EM iteration ({estep})")


@pytest.mark.parametrize("model,params,x", MODELS, ids=IDS)
def test_emission_mixture_is_highest(model, params, x):
    """Sampling and forecasting read the emission mixture p(x_t | h_t)."""
    closed = jax.make_jaxpr(lambda p, k: model.emission(p, model.initial_state(p)).sample(k))(
        params, jax.random.key(2)
    )
    if model.head.is_token:
        assert_all_highest(closed, "categorical mixture")
    else:
        assert all(_is_highest(p) for p in dot_precisions(closed))
