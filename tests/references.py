"""Reference builders shared by the HMM tests: random parameters, float64 Gaussian
log-likelihoods and hmmlearn models with exactly given parameters."""

import numpy as np
from hmmlearn import hmm as hmmlearn_hmm


def random_hmm(rng: np.random.Generator, k: int, v: int):
    """pi (K,), A (K, K), B (K, V) from Dirichlet draws (all entries > 0)."""
    pi = rng.dirichlet(np.ones(k))
    a = rng.dirichlet(np.ones(k), size=k)
    b = rng.dirichlet(np.ones(v), size=k)
    return pi, a, b


def gauss_loglik(x, means, scales):
    """log N(x_t | mean_k, diag(scale_k^2)) for x (T, D): (T, K)."""
    z = (x[:, None, :] - means[None]) / scales[None]
    return np.sum(-0.5 * z**2 - np.log(scales)[None] - 0.5 * np.log(2 * np.pi), axis=-1)


def hmmlearn_categorical(pi, a, b, **kwargs):
    """hmmlearn CategoricalHMM with these parameters (no re-initialisation); kwargs go
    to its constructor (its default params="ste" makes _do_estep collect every
    statistic)."""
    m = hmmlearn_hmm.CategoricalHMM(
        n_components=a.shape[0], n_features=b.shape[1], init_params="", **kwargs
    )
    m.startprob_, m.transmat_, m.emissionprob_ = pi, a, b
    return m


def hmmlearn_gaussian(pi, a, means, scales):
    """hmmlearn diagonal GaussianHMM; its covars_ are variances (scales**2)."""
    m = hmmlearn_hmm.GaussianHMM(
        n_components=a.shape[0], covariance_type="diag", init_params="", params=""
    )
    m.startprob_, m.transmat_, m.means_, m.covars_ = pi, a, means, scales**2
    return m
