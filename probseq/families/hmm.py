r"""Hidden Markov models as autoregressive sequence distributions.

The state is the normalized predictive forward message h_t = p(z_t | x_{<t}).
The emission is the mixture over states weighted by h_t (for categorical emissions,
exactly ``Categorical(probs = h_t @ B)``), and the update is Bayes' rule followed by
the transition: ``h_{t+1} = normalize(h_t * p(x_t | z)) @ A``. So the HMM's exact
marginal likelihood is the same scan as an RNN's log-likelihood.

Parameters are unconstrained logits (``probs = softmax(logits)`` row-wise) so that
gradient fitting needs no projection; ``init`` sets given probability matrices
exactly (logits = log probs; zeros become -inf, i.e. structural zeros) and
``probabilities`` returns them.

Example:
    >>> import jax, jax.numpy as jnp, probseq
    >>> hmm = probseq.CategoricalHMM(num_states=2, vocab_size=3)
    >>> params = hmm.init(jax.random.key(0),
    ...     transition_matrix=jnp.array([[0.9, 0.1], [0.2, 0.8]]))
    >>> pi, A, B = hmm.probabilities(params)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probseq.core import SequenceModel
from probseq.heads import CategoricalHead, Head, NormalHead
from probseq.hmm_inference import condition_on, hmm_filter

__all__ = ["HMM", "HMMParams", "CategoricalHMM", "GaussianHMM"]


class HMMParams(NamedTuple):
    """initial_logits (K,), transition_logits (K, K) (row i: from state i), and
    emission: the head's raw parameters with a leading K axis."""

    initial_logits: jax.Array
    transition_logits: jax.Array
    emission: Any


def _check_stochastic(name: str, p, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}; got {a.shape}.")
    if not np.isfinite(a).all() or (a < 0).any():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(a) | (a < 0))[0])
        raise ValueError(f"{name} must hold finite probabilities >= 0; got {a[idx]} at {idx}.")
    sums = a.sum(axis=-1)
    bad = np.abs(sums - 1.0) > 1e-6
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f" row {idx}" if a.ndim > 1 else ""
        raise ValueError(f"{name}{where} must sum to 1; it sums to {sums[idx]:.9g}.")
    return a


def _log(a: np.ndarray, dtype):
    with np.errstate(divide="ignore"):
        return jnp.asarray(np.log(a), dtype)


@dataclasses.dataclass(frozen=True)
class HMM(SequenceModel):
    """A homogeneous hidden Markov model with ``num_states`` states and any head.

    Args:
        num_states: K, the number of hidden states.
        head: the emission head; each state has its own parameter set.
    """

    num_states: int
    head: Head

    def __post_init__(self):
        if (
            not isinstance(self.num_states, int)
            or isinstance(self.num_states, bool)
            or self.num_states < 1
        ):
            raise ValueError(f"num_states must be a positive int, got {self.num_states=}")
        if not isinstance(self.head, Head):
            raise ValueError(f"head must be a probseq.heads.Head, got {type(self.head).__name__}")

    def init(
        self, key, *, initial_probs=None, transition_matrix=None, emission=None, dtype=jnp.float32
    ):
        """Random parameters; any of initial_probs (K,), transition_matrix (K, K) and
        emission (raw head parameters with a leading K axis) given are used as is.

        At random: uniform initial probabilities, a sticky transition matrix
        (0.5 I + 0.5 Dirichlet(1) rows) and the head's random per-state parameters.
        """
        k = self.num_states
        k_trans, k_emit = jax.random.split(key)
        if initial_probs is None:
            initial_logits = jnp.zeros((k,), dtype)
        else:
            initial_logits = _log(_check_stochastic("initial_probs", initial_probs, (k,)), dtype)
        if transition_matrix is None:
            rows = jax.random.dirichlet(k_trans, jnp.ones((k,), dtype), (k,))
            transition_logits = jnp.log(0.5 * jnp.eye(k, dtype=dtype) + 0.5 * rows)
        else:
            a = _check_stochastic("transition_matrix", transition_matrix, (k, k))
            transition_logits = _log(a, dtype)
        if emission is None:
            emission = self.head.init_components(k_emit, k, dtype)
        else:
            emission = jax.tree.map(lambda a: jnp.asarray(a, dtype), emission)
        return HMMParams(initial_logits, transition_logits, emission)

    def initial_state(self, params):
        return jax.nn.softmax(params.initial_logits)

    def transition_matrix(self, params):
        return jax.nn.softmax(params.transition_logits, axis=-1)

    def emission(self, params, state, u=None):
        return self.head.mixture(state, params.emission)

    def update(self, params, state, x, u=None):
        filtered, _ = condition_on(state, self.head.component_log_probs(params.emission, x))
        return filtered @ self.transition_matrix(params)

    def emission_log_likelihoods(self, params, xs):
        """log p(x_t | z_t = k) for a whole sequence: (T, K)."""
        return jax.vmap(lambda x: self.head.component_log_probs(params.emission, x))(xs)

    def sequence_log_probs(self, params, state, xs, us=None):
        """The scaled forward filter (one gather per step for categorical emissions)."""
        a = self.transition_matrix(params)
        res = hmm_filter(state, a, self.emission_log_likelihoods(params, xs))
        after = jnp.concatenate([res.predicted_probs[1:], (res.filtered_probs[-1] @ a)[None]])
        return res.log_normalizers, after


@dataclasses.dataclass(frozen=True, init=False)
class CategoricalHMM(HMM):
    """HMM with categorical emissions over ``vocab_size`` symbols.

    Example:
        >>> hmm = CategoricalHMM(num_states=3, vocab_size=6)
    """

    vocab_size: int

    def __init__(self, num_states: int, vocab_size: int):
        object.__setattr__(self, "num_states", num_states)
        object.__setattr__(self, "vocab_size", vocab_size)
        object.__setattr__(self, "head", CategoricalHead(vocab_size))
        self.__post_init__()

    def __repr__(self):
        return f"CategoricalHMM(num_states={self.num_states}, vocab_size={self.vocab_size})"

    def init(
        self,
        key,
        initial_probs=None,
        transition_matrix=None,
        emission_probs=None,
        *,
        dtype=jnp.float32,
    ):
        """Parameters with any of the given probability arrays set exactly:
        initial_probs (K,), transition_matrix (K, K), emission_probs (K, V)."""
        emission = None
        if emission_probs is not None:
            shape = (self.num_states, self.vocab_size)
            b = _check_stochastic("emission_probs", emission_probs, shape)
            emission = {"logits": _log(b, dtype)}
        return super().init(
            key,
            initial_probs=initial_probs,
            transition_matrix=transition_matrix,
            emission=emission,
            dtype=dtype,
        )

    def probabilities(self, params):
        """(initial_probs (K,), transition_matrix (K, K), emission_probs (K, V))."""
        return (
            self.initial_state(params),
            self.transition_matrix(params),
            jax.nn.softmax(params.emission["logits"], axis=-1),
        )


@dataclasses.dataclass(frozen=True, init=False)
class GaussianHMM(HMM):
    """HMM with diagonal Gaussian emissions over ``obs_dim`` reals.

    Example:
        >>> hmm = GaussianHMM(num_states=2, obs_dim=1)
    """

    obs_dim: int

    def __init__(self, num_states: int, obs_dim: int):
        object.__setattr__(self, "num_states", num_states)
        object.__setattr__(self, "obs_dim", obs_dim)
        object.__setattr__(self, "head", NormalHead(obs_dim))
        self.__post_init__()

    def __repr__(self):
        return f"GaussianHMM(num_states={self.num_states}, obs_dim={self.obs_dim})"

    def init(
        self,
        key,
        initial_probs=None,
        transition_matrix=None,
        means=None,
        scales=None,
        *,
        dtype=jnp.float32,
    ):
        """Parameters with any given array set exactly: initial_probs (K,),
        transition_matrix (K, K), means (K, D), scales (K, D) standard deviations."""
        params = super().init(
            key, initial_probs=initial_probs, transition_matrix=transition_matrix, dtype=dtype
        )
        emission = dict(params.emission)
        shape = (self.num_states, self.obs_dim)
        if means is not None:
            m = np.asarray(means, np.float64)
            if m.shape != shape or not np.isfinite(m).all():
                raise ValueError(f"means must be finite with shape {shape}; got shape {m.shape}.")
            emission["loc"] = jnp.asarray(m, dtype)
        if scales is not None:
            s = np.asarray(scales, np.float64)
            if s.shape != shape or not (np.isfinite(s).all() and (s > 0).all()):
                raise ValueError(f"scales must be positive and finite with shape {shape}.")
            emission["log_scale"] = jnp.asarray(np.log(s), dtype)
        return params._replace(emission=emission)

    def probabilities(self, params):
        """(initial_probs (K,), transition_matrix (K, K), (means (K, D), scales (K, D)))."""
        e = params.emission
        return (
            self.initial_state(params),
            self.transition_matrix(params),
            (e["loc"], jnp.exp(e["log_scale"])),
        )
