r"""Convenience constructors of HMMs with count, binary and Gaussian-mixture emissions:
``HMM(num_states, head=...)`` with the head built from sizes, ``init`` taking the
parameters in the units a user knows (rates, probabilities, weights and scales) and
``probabilities`` returning them, as :class:`probseq.CategoricalHMM` does.

Every one is fitted by :func:`probseq.fit_em` (closed-form M-steps, in the heads) and
by :func:`probseq.fit_sgd`; the names are dynamax's (``PoissonHMM``, ``BernoulliHMM``,
``GaussianMixtureHMM``; hmmlearn: ``PoissonHMM``, ``GMMHMM``). Full, tied and spherical
covariances are ``probseq.GaussianHMM(..., covariance_type=...)`` (hmmlearn's keyword).

Example:
    >>> import jax, probseq
    >>> hmm = probseq.PoissonHMM(num_states=2, obs_dim=1)
    >>> params = hmm.init(jax.random.key(0), rates=[[1.0], [8.0]])
    >>> pi, a, rates = hmm.probabilities(params)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from probseq.core import param_dtype
from probseq.families.hmm import HMM
from probseq.heads import BernoulliHead, MixtureNormalHead, PoissonHead
from probseq.validation import check_stochastic

__all__ = ["PoissonHMM", "BernoulliHMM", "GaussianMixtureHMM"]


def _construct(model, num_states, head, scan, input_dim, **sizes):
    object.__setattr__(model, "num_states", num_states)
    object.__setattr__(model, "head", head)
    object.__setattr__(model, "scan", scan)
    object.__setattr__(model, "input_dim", input_dim)
    for name, value in sizes.items():
        object.__setattr__(model, name, value)
    model.__post_init__()


def _repr(model, **sizes) -> str:
    text = ", ".join(f"{k}={v}" for k, v in {"num_states": model.num_states, **sizes}.items())
    text += "" if model.scan == "auto" else f", scan={model.scan!r}"
    text += f", input_dim={model.input_dim}" if model.input_dim else ""
    return f"{type(model).__name__}({text})"


def _array(name, value, shape, *, low=None, high=None, what="finite") -> np.ndarray:
    """``value`` as float64 of ``shape``, finite and strictly inside (low, high)."""
    a = np.asarray(value, np.float64)
    ok = a.shape == shape and np.isfinite(a).all()
    ok = ok and (low is None or (a > low).all()) and (high is None or (a < high).all())
    if not ok:
        raise ValueError(f"{name} must be {what} with shape {shape}; got shape {a.shape}.")
    return a


@dataclasses.dataclass(frozen=True, init=False)
class PoissonHMM(HMM):
    r"""HMM with independent Poisson counts over ``obs_dim`` outputs:
    :math:`x_{t,d} \mid z_t = k \sim \mathrm{Poisson}(\lambda_{kd})`.

    Example:
        >>> hmm = PoissonHMM(num_states=3, obs_dim=2)
    """

    obs_dim: int

    def __init__(self, num_states: int, obs_dim: int, *, scan: str = "auto", input_dim: int = 0):
        head = PoissonHead(obs_dim)
        _construct(self, num_states, head, scan, input_dim, obs_dim=head.obs_dim)

    def __repr__(self):
        return _repr(self, obs_dim=self.obs_dim)

    def init(self, key, initial_probs=None, transition_matrix=None, rates=None, *, dtype=None):
        """Parameters with any given array set exactly: initial_probs (K,),
        transition_matrix (K, K), rates (K, D) (positive)."""
        dtype = param_dtype(dtype)
        emission = None
        if rates is not None:
            shape = (self.num_states, self.obs_dim)
            r = _array("rates", rates, shape, low=0.0, what="positive and finite")
            emission = {"log_rate": jnp.asarray(np.log(r), dtype)}
        return HMM.init(
            self,
            key,
            initial_probs=initial_probs,
            transition_matrix=transition_matrix,
            emission=emission,
            dtype=dtype,
        )

    def probabilities(self, params):
        """(initial_probs (K,), transition_matrix (K, K), rates (K, D))."""
        rates = jnp.exp(params.emission["log_rate"])
        return self.initial_state(params), self.transition_matrix(params), rates


@dataclasses.dataclass(frozen=True, init=False)
class BernoulliHMM(HMM):
    r"""HMM with independent binary outputs over ``obs_dim`` positions:
    :math:`x_{t,d} \mid z_t = k \sim \mathrm{Bernoulli}(p_{kd})`.

    Example:
        >>> hmm = BernoulliHMM(num_states=2, obs_dim=5)
    """

    obs_dim: int

    def __init__(self, num_states: int, obs_dim: int, *, scan: str = "auto", input_dim: int = 0):
        head = BernoulliHead(obs_dim)
        _construct(self, num_states, head, scan, input_dim, obs_dim=head.obs_dim)

    def __repr__(self):
        return _repr(self, obs_dim=self.obs_dim)

    def init(
        self, key, initial_probs=None, transition_matrix=None, emission_probs=None, *, dtype=None
    ):
        """Parameters with any given array set exactly: initial_probs (K,),
        transition_matrix (K, K), emission_probs (K, D), each p(x_d = 1 | z = k) strictly
        between 0 and 1."""
        dtype = param_dtype(dtype)
        emission = None
        if emission_probs is not None:
            shape = (self.num_states, self.obs_dim)
            p = _array(
                "emission_probs",
                emission_probs,
                shape,
                low=0.0,
                high=1.0,
                what="strictly between 0 and 1",
            )
            emission = {"logits": jnp.asarray(np.log(p) - np.log1p(-p), dtype)}
        return HMM.init(
            self,
            key,
            initial_probs=initial_probs,
            transition_matrix=transition_matrix,
            emission=emission,
            dtype=dtype,
        )

    def probabilities(self, params):
        """(initial_probs (K,), transition_matrix (K, K), emission_probs (K, D))."""
        probs = jax.nn.sigmoid(params.emission["logits"])
        return self.initial_state(params), self.transition_matrix(params), probs


@dataclasses.dataclass(frozen=True, init=False)
class GaussianMixtureHMM(HMM):
    r"""HMM whose state k emits a mixture of ``num_components`` diagonal Gaussians over
    ``obs_dim`` reals (hmmlearn's GMMHMM with covariance_type="diag"):
    :math:`p(x_t \mid z_t = k) = \sum_m w_{km} N(x_t \mid \mu_{km}, \mathrm{diag}(s_{km}^2))`.

    Example:
        >>> hmm = GaussianMixtureHMM(num_states=2, obs_dim=3, num_components=4)
    """

    obs_dim: int
    num_components: int

    def __init__(
        self,
        num_states: int,
        obs_dim: int,
        num_components: int,
        *,
        scan: str = "auto",
        input_dim: int = 0,
    ):
        head = MixtureNormalHead(obs_dim, num_components)
        _construct(
            self,
            num_states,
            head,
            scan,
            input_dim,
            obs_dim=head.obs_dim,
            num_components=head.num_components,
        )

    def __repr__(self):
        return _repr(self, obs_dim=self.obs_dim, num_components=self.num_components)

    def init(
        self,
        key,
        initial_probs=None,
        transition_matrix=None,
        weights=None,
        means=None,
        scales=None,
        *,
        dtype=None,
    ):
        """Parameters with any given array set exactly: initial_probs (K,),
        transition_matrix (K, K), weights (K, M) (rows sum to 1), means (K, M, D),
        scales (K, M, D) standard deviations (positive). At random: equal weights, means
        ~ N(0, 1), unit scales."""
        dtype = param_dtype(dtype)
        params = HMM.init(
            self,
            key,
            initial_probs=initial_probs,
            transition_matrix=transition_matrix,
            dtype=dtype,
        )
        emission = dict(params.emission)
        k, m, d = self.num_states, self.num_components, self.obs_dim
        if weights is not None:
            w = check_stochastic("weights", weights, (k, m))
            with np.errstate(divide="ignore"):
                emission["mixture_logits"] = jnp.asarray(np.log(w), dtype)
        if means is not None:
            emission["loc"] = jnp.asarray(_array("means", means, (k, m, d)), dtype)
        if scales is not None:
            s = _array("scales", scales, (k, m, d), low=0.0, what="positive and finite")
            emission["log_scale"] = jnp.asarray(np.log(s), dtype)
        return params._replace(emission=emission)

    def probabilities(self, params):
        """(initial_probs (K,), transition_matrix (K, K), (weights (K, M), means (K, M, D),
        scales (K, M, D)))."""
        e = params.emission
        mixture = (jax.nn.softmax(e["mixture_logits"], axis=-1), e["loc"], jnp.exp(e["log_scale"]))
        return self.initial_state(params), self.transition_matrix(params), mixture
