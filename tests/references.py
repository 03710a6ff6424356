"""Reference builders shared by the HMM tests: random parameters, float64 NumPy
recursions, float64 Gaussian log-likelihoods, hmmlearn models with exactly given
parameters, and probseq HMM parameters set to exactly given float64 probabilities.
The NumPy references use neither JAX nor probseq."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hmmlearn import hmm as hmmlearn_hmm


def random_hmm(rng: np.random.Generator, k: int, v: int):
    """pi (K,), A (K, K), B (K, V) from Dirichlet draws (all entries > 0)."""
    pi = rng.dirichlet(np.ones(k))
    a = rng.dirichlet(np.ones(k), size=k)
    b = rng.dirichlet(np.ones(v), size=k)
    return pi, a, b


def random_gaussian_hmm(rng: np.random.Generator, k: int, d: int, mean_scale, scale_range):
    """pi (K,), A (K, K) from Dirichlet draws, means ~ N(0, mean_scale^2) and scales ~
    U(scale_range), both (K, D)."""
    pi = rng.dirichlet(np.ones(k))
    a = rng.dirichlet(np.ones(k), size=k)
    means = rng.normal(scale=mean_scale, size=(k, d))
    scales = rng.uniform(*scale_range, size=(k, d))
    return pi, a, means, scales


def left_to_right_hmm():
    """K=3, V=3 with structural zeros in pi, A and B (many impossible sequences)."""
    pi = np.array([1.0, 0.0, 0.0])
    a = np.array([[0.6, 0.4, 0.0], [0.0, 0.7, 0.3], [0.0, 0.0, 1.0]])
    b = np.array([[0.8, 0.2, 0.0], [0.0, 0.5, 0.5], [0.3, 0.0, 0.7]])
    return pi, a, b


def ragged_tokens(rng: np.random.Generator, v: int, lengths):
    """One uniform token sequence in [0, V) per length."""
    return [rng.integers(0, v, size=n) for n in lengths]


def gauss_loglik(x, means, scales):
    """log N(x_t | mean_k, diag(scale_k^2)) for x (T, D): (T, K)."""
    z = (x[:, None, :] - means[None]) / scales[None]
    return np.sum(-0.5 * z**2 - np.log(scales)[None] - 0.5 * np.log(2 * np.pi), axis=-1)


class Forward(NamedTuple):
    """What forward_np returns."""

    total: float  # log p(x_{1:T})
    steps: np.ndarray  # (T,) per-step log normalizers log p(x_t | x_{1:t-1})
    predicted: np.ndarray  # (T+1, K): row t is p(z_{t+1} | x_{1:t}); row 0 is pi
    filtered: np.ndarray  # (T, K): row t is p(z_t | x_{1:t}) (1-based t)


def forward_np(pi, a, loglik) -> Forward:
    """Float64 scaled forward recursion for loglik (T, K), independent of probseq."""
    pi, a, loglik = (np.asarray(z, np.float64) for z in (pi, a, loglik))
    pred = np.empty((loglik.shape[0] + 1, pi.shape[0]))
    filt = np.empty(loglik.shape)
    pred[0] = pi
    steps = np.empty(loglik.shape[0])
    for t, ll in enumerate(loglik):
        m = ll.max()
        w = pred[t] * np.exp(ll - m)
        c = w.sum()
        steps[t] = np.log(c) + m
        filt[t] = w / c
        pred[t + 1] = filt[t] @ a
    return Forward(steps.sum(), steps, pred, filt)


def hmmlearn_categorical(pi, a, b, **kwargs):
    """hmmlearn CategoricalHMM with these parameters (no re-initialisation); kwargs go
    to its constructor (its default params="ste" makes _do_estep collect every
    statistic)."""
    m = hmmlearn_hmm.CategoricalHMM(
        n_components=a.shape[0], n_features=b.shape[1], init_params="", **kwargs
    )
    m.startprob_, m.transmat_, m.emissionprob_ = pi, a, b
    return m


def hmmlearn_gaussian(pi, a, means, scales, params="", **kwargs):
    """hmmlearn diagonal GaussianHMM; its covars_ are variances (scales**2); params and
    kwargs go to its constructor (params="" fits nothing)."""
    m = hmmlearn_hmm.GaussianHMM(
        n_components=a.shape[0], covariance_type="diag", init_params="", params=params, **kwargs
    )
    m.startprob_, m.transmat_, m.means_, m.covars_ = pi, a, means, scales**2
    return m


def import_dynamax(module: str):
    """pytest.importorskip(module) for a dynamax module, restoring the
    jax_default_matmul_precision that importing dynamax sets to 'float32'."""
    before = jax.config.jax_default_matmul_precision
    try:
        return pytest.importorskip(module)
    finally:
        jax.config.update("jax_default_matmul_precision", before)


def init_categorical64(model, pi, a, b):
    """model.init with exactly these probabilities in float64 (call under x64)."""
    return model.init(
        jax.random.key(0),
        initial_probs=pi,
        transition_matrix=a,
        emission_probs=b,
        dtype=jnp.float64,
    )


def init_gaussian64(model, pi, a, means, scales):
    """model.init with exactly these Gaussian HMM parameters in float64 (call under x64)."""
    return model.init(
        jax.random.key(0),
        initial_probs=pi,
        transition_matrix=a,
        means=means,
        scales=scales,
        dtype=jnp.float64,
    )


def run_cli(argv, capsys):
    """``probseq`` on the command line, in process: (exit code, stdout, stderr)."""
    from probseq import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lds_ragged_batch(seed: int, num_steps: int, cut: int):
    """Two sequences of num_steps sampled (float64) from a random 2-D LDS with one
    input, the second padded from step ``cut``: (model, params, y, mask, inputs)."""
    import probseq

    model = probseq.LDS(state_dim=2, obs_dim=2, input_dim=1)
    params = model.init(jax.random.key(seed))
    u = jax.random.normal(jax.random.key(seed + 1), (2, num_steps, 1), jnp.float64)
    y = jnp.stack(
        [
            probseq.sample(model, params, jax.random.key(seed + 2 + i), num_steps, inputs=u[i])
            for i in range(2)
        ]
    )
    mask = np.ones((2, num_steps), bool)
    mask[1, cut:] = False
    return model, params, y, mask, u
