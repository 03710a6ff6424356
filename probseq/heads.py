"""Emission heads: small maps from raw parameters to a numpyro distribution.

A head is the ``p(x_t | h_t)`` part of every model. It knows three things:

* the names and shapes of its raw (unconstrained) parameters, ``raw_shapes``;
* how raw parameters become a :class:`numpyro.distributions.Distribution`
  (``distribution(raw)``; raw leaves may carry any leading batch shape);
* what a valid observation looks like (``check_observations``), so bad data is
  rejected at the API boundary with a message that names the offending value.

Neural families compute the raw parameters with a linear readout of the hidden
features (``readout``); hidden Markov models keep one raw parameter set per state
and emit the mixture over states weighted by the predictive state probabilities
(``mixture``). Both use the same head classes.

Example:
    >>> import jax.numpy as jnp
    >>> head = CategoricalHead(vocab_size=4)
    >>> d = head.distribution({"logits": jnp.zeros(4)})
    >>> float(d.log_prob(2))  # doctest: +ELLIPSIS
    -1.386...
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from probseq import validation
from probseq.scan import EXACT, NEURAL

__all__ = [
    "Head",
    "CategoricalHead",
    "NormalHead",
    "MixtureNormalHead",
    "GaussianMixtureHead",
    "MultivariateNormalHead",
    "COVARIANCE_TYPES",
    "PoissonHead",
    "BernoulliHead",
    "temper",
]


def _first_bad(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(bad)[0])


class Head(abc.ABC):
    """Abstract emission head. Subclasses are frozen dataclasses (hashable, static)."""

    #: True when observations are integer tokens (scalar events) fed to an embedding.
    is_token: bool = False
    #: True when :meth:`m_step` is closed form (then an HMM with this head is fitted by
    #: probseq.fit_em). A head that implements m_step sets it; generic code reads it.
    has_m_step: ClassVar[bool] = False
    #: True when x_t is discrete (a probability mass function: categorical tokens,
    #: Poisson counts, Bernoulli bits), so log p(x_t | x_{<t}) <= 0: an HMM clamps its
    #: log-likelihoods at 0 where float32 rounding would push them over (issue 25).
    discrete: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one observation x_t."""

    @abc.abstractmethod
    def raw_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the raw parameters of one distribution."""

    @abc.abstractmethod
    def distribution(self, raw: dict) -> dist.Distribution:
        """The distribution for raw parameters (leaves may have leading batch dims)."""

    @abc.abstractmethod
    def check_observations(self, x: np.ndarray, valid: np.ndarray, name: str) -> np.ndarray:
        """Validate concrete observations at the valid positions and return them cast.

        ``x`` has shape ``batch + (T,) + event_shape`` and ``valid`` ``batch + (T,)``.
        Raises ValueError naming ``name``, the index and the value that is wrong.
        """

    # ------------------------------------------------------------------ generic
    @property
    def raw_size(self) -> int:
        return sum(math.prod(s) for s in self.raw_shapes().values())

    def split(self, flat: jax.Array) -> dict:
        """Split a flat vector (..., raw_size) into the raw parameter dict."""
        out, start = {}, 0
        lead = flat.shape[:-1]
        for name, shape in self.raw_shapes().items():
            size = math.prod(shape)
            out[name] = flat[..., start : start + size].reshape(lead + shape)
            start += size
        return out

    def init_readout(self, key: jax.Array, in_features: int, dtype) -> dict:
        """Parameters of a linear readout from ``in_features`` hidden features.

        The weights start small (scale 1/sqrt(in_features)) and the bias at zero, so a
        fresh model predicts a near-uniform categorical / unit-scale Normal.
        """
        w = jax.random.normal(key, (in_features, self.raw_size), dtype) / math.sqrt(in_features)
        return {"kernel": w, "bias": jnp.zeros((self.raw_size,), dtype)}

    def readout(self, params: dict, features: jax.Array) -> dist.Distribution:
        """Distribution from hidden features through the linear readout ``params``."""
        out = jnp.matmul(features, params["kernel"], precision=NEURAL) + params["bias"]
        return self.distribution(self.split(out))

    @abc.abstractmethod
    def init_components(self, key: jax.Array, num_components: int, dtype) -> dict:
        """Random raw parameters for ``num_components`` independent distributions
        (one per hidden state of an HMM)."""

    def component_log_probs(self, raw: dict, x: jax.Array) -> jax.Array:
        """log p(x | component k) for every component: raw leaves (K, ...) -> (K,)."""
        return self.distribution(raw).log_prob(jnp.expand_dims(x, 0) if self.is_token else x)

    def component_likelihoods(
        self, raw: dict, x: jax.Array, support: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """p(x | component k) up to a common factor: (l (K,), m ()) with
        l_k = exp(log p(x | k) - m) and m = max_k log p(x | k) over the components in
        ``support`` (K,) bool (all when None; 0 when that max is not finite), so the
        largest l_k is 1 and emissions far in a tail stay representable; l_k = 0 off the
        support. The HMM smoothers run on these; a head with a cheaper exact form
        overrides it."""
        ll = self.component_log_probs(raw, x)
        if support is not None:
            ll = jnp.where(support, ll, -jnp.inf)
        m = jnp.max(ll)
        m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))
        return jnp.exp(ll - m), m

    def mixture(self, probs: jax.Array, raw: dict) -> dist.Distribution:
        """Mixture over components with weights ``probs`` (K,) and raw leaves (K, ...)."""
        return dist.MixtureSameFamily(dist.CategoricalProbs(probs), self.distribution(raw))

    def m_step(self, weights: jax.Array, x: jax.Array, raw: dict, concentration=None) -> dict:
        """Closed-form maximisation for K components given responsibilities.

        Args:
            weights: (N, K) posterior weight of each component for each observation
                (0 on padding).
            x: (N, *event_shape) observations.
            raw: the current raw parameters (K, ...); components with no weight keep them.
            concentration: Dirichlet pseudo-counts for a categorical head (MAP); other
                heads take None.

        Returns:
            New raw parameters (K, ...).
        """
        raise ValueError(
            f"{type(self).__name__} has no closed-form M-step; fit this model with "
            "probseq.fit_sgd instead of fit_em."
        )

    @staticmethod
    def _no_prior(head, concentration):
        if concentration is not None:
            raise ValueError(
                f"a Dirichlet emission prior applies to categorical emissions only; "
                f"{type(head).__name__} takes prior emission=None."
            )


def _check_finite(x: np.ndarray, valid: np.ndarray, name: str) -> None:
    ok = np.isfinite(x)
    ok = ok.reshape(valid.shape + (-1,)).all(-1)
    bad = valid & ~ok
    if bad.any():
        idx = _first_bad(bad)
        raise ValueError(
            f"{name} contains a non-finite value (NaN or inf) at index {idx}: "
            f"{x[idx].tolist()!r}. Observations must be finite; mark missing steps with the mask "
            "(only trailing padding) or remove them."
        )


def _float_obs(x: np.ndarray, name: str, what: str) -> np.ndarray:
    if x.dtype == np.bool_ or not (
        np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    ):
        raise ValueError(f"{name} must hold real numbers for {what}; got dtype {x.dtype}.")
    return x


@dataclasses.dataclass(frozen=True)
class CategoricalHead(Head):
    """Categorical over ``vocab_size`` symbols: ``x_t ~ Categorical(softmax(logits))``."""

    has_m_step = True
    discrete = True

    vocab_size: int
    is_token = True

    def __post_init__(self):
        size = validation.check_int("vocab_size", self.vocab_size, minimum=2)
        object.__setattr__(self, "vocab_size", size)

    @property
    def event_shape(self):
        return ()

    def raw_shapes(self):
        return {"logits": (self.vocab_size,)}

    def distribution(self, raw):
        return dist.CategoricalLogits(raw["logits"])

    def component_log_probs(self, raw, x):
        # A gather of the normalized log table: O(K), not O(K V).
        logits = raw["logits"]
        # An id outside [0, V) (only a traced call can pass one) reads a NaN column
        # appended to the table, never the clamped or wrapped-around entry a plain
        # gather would read. (A NaN `where` on the gathered (T, K) values instead cost
        # 15% of an HMM log_prob at T=1e6 on CPU; this costs nothing measurable.)
        table = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        nan = jnp.full(table.shape[:-1] + (1,), jnp.nan, table.dtype)
        v = self.vocab_size
        return jnp.concatenate([table, nan], axis=-1)[:, jnp.where((x >= 0) & (x < v), x, v)]

    def component_likelihoods(self, raw, x, support=None):
        # The same gather from a (K, V + 1) table normalized per symbol once: no exp and
        # no max per step (5x cheaper than the default at K=32 on CPU). Out-of-range ids
        # read the NaN column, as in component_log_probs (and m = 0, as the default).
        logits = raw["logits"]
        table = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        if support is not None:
            table = jnp.where(support[:, None], table, -jnp.inf)
        m = jnp.max(table, axis=0)
        m = jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))
        # Rows (V + 1, K): contiguous rows to gather.
        v = self.vocab_size
        i = jnp.where((x >= 0) & (x < v), x, v)
        lik = jnp.concatenate([jnp.exp(table - m).T, jnp.full_like(table[:, :1].T, jnp.nan)])
        return lik[i], jnp.concatenate([m, jnp.zeros_like(m[:1])])[i]

    def mixture(self, probs, raw):
        # A mixture of categoricals is a categorical: collapse it exactly.
        return dist.CategoricalProbs(
            jnp.matmul(probs, jax.nn.softmax(raw["logits"], axis=-1), precision=EXACT)
        )

    def init_components(self, key, num_components, dtype):
        return {"logits": jax.random.normal(key, (num_components, self.vocab_size), dtype)}

    def m_step(self, weights, x, raw, concentration=None):
        counts = jnp.zeros((self.vocab_size, weights.shape[1]), weights.dtype).at[x].add(weights).T
        if concentration is not None:
            counts = jnp.maximum(counts + concentration - 1.0, 0.0)
        total = counts.sum(-1, keepdims=True)
        probs = counts / jnp.where(total > 0, total, 1.0)
        logits = jnp.where(total > 0, jnp.log(probs), raw["logits"])
        return {"logits": logits}

    def check_observations(self, x, valid, name):
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(
                f"{name} must hold integer token ids in [0, {self.vocab_size}); got dtype "
                f"{x.dtype}. Convert text with probseq.data or cast with x.astype(int)."
            )
        bad = valid & ((x < 0) | (x >= self.vocab_size))
        if bad.any():
            idx = _first_bad(bad)
            raise ValueError(
                f"{name} has token id {int(x[idx])} at index {idx}, outside [0, "
                f"{self.vocab_size}) for vocab_size={self.vocab_size}."
            )
        return x.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class _VectorHead(Head):
    """A head over vectors of ``obs_dim`` values (event shape (obs_dim,))."""

    obs_dim: int

    def __post_init__(self):
        object.__setattr__(self, "obs_dim", validation.check_int("obs_dim", self.obs_dim))

    @property
    def event_shape(self):
        return (self.obs_dim,)


class _DiagonalNormal(dist.Independent):
    """``Normal(loc, scale).to_event(1)`` with the parameter-free support ``real_vector``:
    numpyro 0.21's MixtureSameFamily refuses components whose support is a plain
    ``independent(real, 1)``."""

    support = constraints.real_vector


@dataclasses.dataclass(frozen=True)
class NormalHead(_VectorHead):
    """Diagonal Normal over ``obs_dim`` reals: ``x_t ~ N(loc, diag(exp(log_scale))^2)``."""

    has_m_step = True

    def raw_shapes(self):
        return {"loc": (self.obs_dim,), "log_scale": (self.obs_dim,)}

    def distribution(self, raw):
        return _DiagonalNormal(dist.Normal(raw["loc"], jnp.exp(raw["log_scale"])), 1)

    def init_components(self, key, num_components, dtype):
        return {
            "loc": jax.random.normal(key, (num_components, self.obs_dim), dtype),
            "log_scale": jnp.zeros((num_components, self.obs_dim), dtype),
        }

    def check_observations(self, x, valid, name):
        _float_obs(x, name, f"a Normal head with obs_dim={self.obs_dim}")
        _check_finite(x, valid, name)
        return x

    #: Variance floor of the M-step: keeps a state that captures one repeated value
    #: from collapsing to zero variance (an infinite likelihood).
    MIN_VARIANCE = 1e-6

    def m_step(self, weights, x, raw, concentration=None):
        self._no_prior(self, concentration)
        n = weights.sum(0)  # (K,)
        safe = jnp.where(n > 0, n, 1.0)[:, None]
        mean = jnp.matmul(weights.T, x, precision=EXACT) / safe
        # Two passes (not E[x^2] - E[x]^2, which cancels in float32 when the data sit
        # far from 0 relative to their spread); XLA fuses the square into the reduction.
        sq = jnp.square(x[:, None, :] - mean[None])
        var = jnp.einsum("nk,nkd->kd", weights, sq, precision=EXACT) / safe
        var = jnp.maximum(var, self.MIN_VARIANCE)
        keep = (n > 0)[:, None]
        return {
            "loc": jnp.where(keep, mean, raw["loc"]),
            "log_scale": jnp.where(keep, 0.5 * jnp.log(var), raw["log_scale"]),
        }


@dataclasses.dataclass(frozen=True)
class MixtureNormalHead(_VectorHead):
    """Mixture of ``num_components`` diagonal Normals over ``obs_dim`` reals."""

    num_components: int = 3

    def __post_init__(self):
        super().__post_init__()
        k = validation.check_int("num_components", self.num_components)
        object.__setattr__(self, "num_components", k)

    def raw_shapes(self):
        m, d = self.num_components, self.obs_dim
        return {"mixture_logits": (m,), "loc": (m, d), "log_scale": (m, d)}

    def distribution(self, raw):
        comps = _DiagonalNormal(dist.Normal(raw["loc"], jnp.exp(raw["log_scale"])), 1)
        return dist.MixtureSameFamily(dist.CategoricalLogits(raw["mixture_logits"]), comps)

    def init_readout(self, key, in_features, dtype):
        params = super().init_readout(key, in_features, dtype)
        # Spread the component means at init so the components do not start identical.
        m, d = self.num_components, self.obs_dim
        offset = jnp.linspace(-1.0, 1.0, m, dtype=dtype)[:, None] * jnp.ones((m, d), dtype)
        bias = self.split(params["bias"])
        bias["loc"] = offset
        params["bias"] = jnp.concatenate([bias[k].reshape(-1) for k in self.raw_shapes()])
        return params

    def init_components(self, key, num_components, dtype):
        k1, k2 = jax.random.split(key)
        m, d = self.num_components, self.obs_dim
        return {
            "mixture_logits": jnp.zeros((num_components, m), dtype),
            "loc": jax.random.normal(k1, (num_components, m, d), dtype),
            "log_scale": jnp.zeros((num_components, m, d), dtype),
        }

    check_observations = NormalHead.check_observations

    has_m_step = True
    #: Variance floor of the M-step (as :attr:`NormalHead.MIN_VARIANCE`).
    MIN_VARIANCE = NormalHead.MIN_VARIANCE

    def m_step(self, weights, x, raw, concentration=None):
        """The GMM-HMM M-step. With gamma_n(k) the state responsibilities
        (``weights``), each state's mixture responsibilities under the current
        parameters are r_n(k, m) = gamma_n(k) w_km N(x_n | mu_km, s_km) / p(x_n | k)
        (exact: the E-step of the joint (state, component) posterior), and the new
        weights, means and variances are their normalised weighted counts and two-pass
        moments. Components with no weight keep their parameters; a component of a
        state with weight but none of its own gets mixture weight 0."""
        self._no_prior(self, concentration)
        loc, scale = raw["loc"], jnp.exp(raw["log_scale"])  # (K, M, D)
        log_w = jax.nn.log_softmax(raw["mixture_logits"], axis=-1)  # (K, M)
        joint = log_w + dist.Normal(loc, scale).log_prob(x[:, None, None, :]).sum(-1)
        r = weights[..., None] * jax.nn.softmax(joint, axis=-1)  # (N, K, M)
        r = jnp.where(weights[..., None] > 0, r, 0.0)  # padding: no NaN from its values
        n = r.sum(0)  # (K, M)
        safe = jnp.where(n > 0, n, 1.0)[..., None]
        mean = jnp.einsum("nkm,nd->kmd", r, x, precision=EXACT) / safe
        sq = jnp.square(x[:, None, None, :] - mean[None])
        var = jnp.einsum("nkm,nkmd->kmd", r, sq, precision=EXACT) / safe
        var = jnp.maximum(var, self.MIN_VARIANCE)
        keep = (n > 0)[..., None]
        state_total = n.sum(-1, keepdims=True)  # (K, 1)
        with_weight = state_total > 0
        log_weights = jnp.log(n) - jnp.log(jnp.where(with_weight, state_total, 1.0))
        return {
            "mixture_logits": jnp.where(with_weight, log_weights, raw["mixture_logits"]),
            "loc": jnp.where(keep, mean, loc),
            "log_scale": jnp.where(keep, 0.5 * jnp.log(var), raw["log_scale"]),
        }


#: The name the design fixes for an HMM's Gaussian-mixture emissions
#: (``HMM(K, head=GaussianMixtureHead(obs_dim, num_components))``, dynamax's
#: ``GaussianMixtureHMM``): the same head as :class:`MixtureNormalHead`.
GaussianMixtureHead = MixtureNormalHead

#: The ``covariance_type`` values of :class:`MultivariateNormalHead` (hmmlearn's names;
#: "diag" is :class:`NormalHead`).
COVARIANCE_TYPES = ("full", "tied", "spherical")


def _cholesky_of(tril: jax.Array) -> jax.Array:
    """L = tril(raw, -1) + diag(exp(diag(raw))): lower triangular, positive diagonal."""
    diag = jnp.exp(jnp.diagonal(tril, axis1=-2, axis2=-1))
    return jnp.tril(tril, -1) + diag[..., None] * jnp.eye(tril.shape[-1], dtype=tril.dtype)


def raw_tril(cholesky: jax.Array) -> jax.Array:
    """The raw ``tril`` parameter of a lower Cholesky factor (inverse of the map above)."""
    d = cholesky.shape[-1]
    log_diag = jnp.log(jnp.diagonal(cholesky, axis1=-2, axis2=-1))
    return jnp.tril(cholesky, -1) + log_diag[..., None] * jnp.eye(d, dtype=cholesky.dtype)


@dataclasses.dataclass(frozen=True)
class MultivariateNormalHead(_VectorHead):
    r"""Gaussian over ``obs_dim`` reals with a full, tied or spherical covariance
    (hmmlearn's ``covariance_type``; "diag" is :class:`NormalHead`):

    * "full": :math:`x \sim N(\mu, L L^\top)` with raw ``loc`` (D,) and ``tril``
      (D, D), the Cholesky factor L's strictly lower part as is and its diagonal as
      logs (the upper part is unused);
    * "tied": the same, but the components of an HMM share one ``tril`` (D, D), which
      has no leading state axis (as a neural readout it is "full");
    * "spherical": :math:`x \sim N(\mu, s^2 I)` with raw ``loc`` (D,) and
      ``log_scale`` ().

    Example:
        >>> head = MultivariateNormalHead(obs_dim=2, covariance_type="full")
        >>> head.raw_shapes()
        {'loc': (2,), 'tril': (2, 2)}
    """

    covariance_type: str = "full"
    has_m_step = True
    #: Smallest covariance eigenvalue the M-step leaves (as :attr:`NormalHead.MIN_VARIANCE`);
    #: a covariance above it is left exactly as estimated.
    MIN_VARIANCE = NormalHead.MIN_VARIANCE

    def __post_init__(self):
        super().__post_init__()
        validation.check_choice("covariance_type", self.covariance_type, COVARIANCE_TYPES)

    def raw_shapes(self):
        d = self.obs_dim
        if self.covariance_type == "spherical":
            return {"loc": (d,), "log_scale": ()}
        return {"loc": (d,), "tril": (d, d)}

    def distribution(self, raw):
        loc = raw["loc"]
        if self.covariance_type == "spherical":
            scale = jnp.exp(raw["log_scale"])[..., None] * jnp.ones_like(loc)
            return _DiagonalNormal(dist.Normal(loc, scale), 1)
        return dist.MultivariateNormal(loc, scale_tril=_cholesky_of(raw["tril"]))

    def component_log_probs(self, raw, x):
        # The triangular solve written out (no covariance is formed): log N(x | mu_k, L_k L_k^T)
        # = -|L_k^{-1}(x - mu_k)|^2 / 2 - sum log diag L_k - D log(2 pi) / 2.
        loc, d = raw["loc"], self.obs_dim
        diff = x - loc  # (K, D)
        if self.covariance_type == "spherical":
            log_s = raw["log_scale"]
            maha = jnp.sum(jnp.square(diff), -1) * jnp.exp(-2.0 * log_s)
            log_det = d * log_s
        else:
            tril = jnp.broadcast_to(raw["tril"], loc.shape[:-1] + (d, d))
            z = jax.scipy.linalg.solve_triangular(_cholesky_of(tril), diff[..., None], lower=True)
            maha = jnp.sum(jnp.square(z[..., 0]), -1)
            log_det = jnp.sum(jnp.diagonal(tril, axis1=-2, axis2=-1), -1)
        return -0.5 * maha - log_det - 0.5 * d * math.log(2 * math.pi)

    def init_components(self, key, num_components, dtype):
        d = self.obs_dim
        loc = jax.random.normal(key, (num_components, d), dtype)
        if self.covariance_type == "spherical":
            return {"loc": loc, "log_scale": jnp.zeros((num_components,), dtype)}
        lead = () if self.covariance_type == "tied" else (num_components,)
        return {"loc": loc, "tril": jnp.zeros(lead + (d, d), dtype)}

    def check_observations(self, x, valid, name):
        _float_obs(x, name, f"a {self.covariance_type}-covariance Normal head with "
                   f"obs_dim={self.obs_dim}")  # fmt: skip
        _check_finite(x, valid, name)
        return x

    def m_step(self, weights, x, raw, concentration=None):
        """Weighted means and (two-pass) covariances: per state ("full"), pooled over the
        states ("tied": sum_k sum_n gamma_n(k) (x_n - mu_k)(x_n - mu_k)^T / sum gamma) or
        the mean variance over the dimensions ("spherical"). States with no weight keep
        their parameters; an eigenvalue below MIN_VARIANCE is lifted to it."""
        self._no_prior(self, concentration)
        n = weights.sum(0)  # (K,)
        keep = n > 0
        safe = jnp.where(keep, n, 1.0)
        mean = jnp.matmul(weights.T, x, precision=EXACT) / safe[:, None]
        loc = jnp.where(keep[:, None], mean, raw["loc"])
        diff = x[:, None, :] - mean[None]  # (N, K, D)
        if self.covariance_type == "spherical":
            sq = jnp.einsum("nk,nkd->k", weights, jnp.square(diff), precision=EXACT)
            var = jnp.maximum(sq / (safe * self.obs_dim), self.MIN_VARIANCE)
            return {"loc": loc, "log_scale": jnp.where(keep, 0.5 * jnp.log(var), raw["log_scale"])}
        if self.covariance_type == "tied":
            total = n.sum()
            cov = jnp.einsum("nk,nkd,nke->de", weights, diff, diff, precision=EXACT)
            cov = self._floor(cov / jnp.where(total > 0, total, 1.0))
            tril = raw_tril(jnp.linalg.cholesky(cov))
            return {"loc": loc, "tril": jnp.where(total > 0, tril, raw["tril"])}
        cov = jnp.einsum("nk,nkd,nke->kde", weights, diff, diff, precision=EXACT)
        cov = self._floor(cov / safe[:, None, None])
        tril = raw_tril(jnp.linalg.cholesky(cov))
        return {"loc": loc, "tril": jnp.where(keep[:, None, None], tril, raw["tril"])}

    def _floor(self, cov):
        """Symmetrise, and lift the spectrum by the shortfall of its smallest eigenvalue
        below MIN_VARIANCE (no change when there is none)."""
        cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
        low = jnp.linalg.eigvalsh(cov)[..., :1]  # (..., 1), ascending
        shift = jnp.maximum(self.MIN_VARIANCE - low, 0.0)
        return cov + shift[..., None] * jnp.eye(cov.shape[-1], dtype=cov.dtype)


@dataclasses.dataclass(frozen=True)
class PoissonHead(_VectorHead):
    """Independent Poisson counts over ``obs_dim`` outputs: ``x_t ~ Poisson(exp(log_rate))``."""

    has_m_step = True
    discrete = True

    def raw_shapes(self):
        return {"log_rate": (self.obs_dim,)}

    def distribution(self, raw):
        return dist.Poisson(jnp.exp(raw["log_rate"])).to_event(1)

    def init_components(self, key, num_components, dtype):
        return {"log_rate": jax.random.normal(key, (num_components, self.obs_dim), dtype)}

    def component_log_probs(self, raw, x):
        # x log(rate) - rate - log(x!) in the parameters' dtype (numpyro's Poisson.log_prob
        # returns float64 for float32 arguments under x64, which breaks the filter's carry).
        log_rate = raw["log_rate"]
        x = jnp.asarray(x, log_rate.dtype)
        terms = jnp.where(x == 0, 0.0, x * log_rate) - jnp.exp(log_rate)
        return jnp.sum(terms - jax.scipy.special.gammaln(x + 1.0), axis=-1)

    def m_step(self, weights, x, raw, concentration=None):
        self._no_prior(self, concentration)
        n = weights.sum(0)
        rate = jnp.matmul(weights.T, x, precision=EXACT) / jnp.where(n > 0, n, 1.0)[:, None]
        keep = (n > 0)[:, None]
        return {"log_rate": jnp.where(keep, jnp.log(jnp.maximum(rate, 1e-12)), raw["log_rate"])}

    def check_observations(self, x, valid, name):
        _float_obs(x, name, f"a Poisson head with obs_dim={self.obs_dim}")
        _check_finite(x, valid, name)
        bad_value = (x < 0) | (x != np.round(x))
        bad = valid & bad_value.reshape(valid.shape + (-1,)).any(-1)
        if bad.any():
            idx = _first_bad(bad)
            raise ValueError(
                f"{name} must hold non-negative integer counts; got {x[idx].tolist()!r} "
                f"at index {idx}."
            )
        return x


@dataclasses.dataclass(frozen=True)
class BernoulliHead(_VectorHead):
    """Independent binary outputs over ``obs_dim`` positions:
    ``x_t ~ Bernoulli(sigmoid(logits))``."""

    has_m_step = True
    discrete = True

    def raw_shapes(self):
        return {"logits": (self.obs_dim,)}

    def distribution(self, raw):
        return dist.BernoulliLogits(raw["logits"]).to_event(1)

    def init_components(self, key, num_components, dtype):
        return {"logits": jax.random.normal(key, (num_components, self.obs_dim), dtype)}

    def m_step(self, weights, x, raw, concentration=None):
        self._no_prior(self, concentration)
        n = weights.sum(0)
        p = jnp.matmul(weights.T, x, precision=EXACT) / jnp.where(n > 0, n, 1.0)[:, None]
        p = jnp.clip(p, 1e-12, 1 - 1e-12)
        keep = (n > 0)[:, None]
        return {"logits": jnp.where(keep, jnp.log(p) - jnp.log1p(-p), raw["logits"])}

    def check_observations(self, x, valid, name):
        if x.dtype == np.bool_:
            return x.astype(np.float32)
        _float_obs(x, name, f"a Bernoulli head with obs_dim={self.obs_dim}")
        bad = valid & ((x != 0) & (x != 1)).reshape(valid.shape + (-1,)).any(-1)
        if bad.any():
            idx = _first_bad(bad)
            raise ValueError(
                f"{name} must hold 0/1 values; got {x[idx].tolist()!r} at index {idx}."
            )
        return x


# ---------------------------------------------------------------------- tempering
_GREEDY_BELOW = float(np.finfo(np.float32).tiny)


def temper(d: dist.Distribution, temperature: float) -> dist.Distribution | jax.Array:
    """Sharpen (t < 1) or flatten (t > 1) a distribution for sampling.

    Discrete distributions get ``p^(1/t)`` renormalized (logits / t); Normals get their
    scale multiplied by ``sqrt(t)``; mixtures temper both the mixing weights and the
    components. ``temperature == 0`` (and any t below float32's smallest normal number,
    ~1.2e-38, where p^(1/t) is the mode to every digit) returns the greedy value (the
    mode) as an array instead of a distribution.
    """
    if temperature == 1:
        return d
    # Below float32's smallest normal number (~1.2e-38) t is subnormal or 0 in float32,
    # which the CPU flushes to 0 (0/0); p^(1/t) is the mode to every representable digit.
    if temperature < _GREEDY_BELOW:
        return _mode(d)
    t = temperature
    if isinstance(d, dist.Independent):  # type(d): keeps a _DiagonalNormal one
        return type(d)(temper(d.base_dist, t), d.reinterpreted_batch_ndims)
    if isinstance(d, dist.CategoricalLogits | dist.CategoricalProbs):
        # Shift the best symbol to 0 before dividing: for tiny t the others go to -inf
        # (greedy), never all of them (which would sample symbol 0).
        log_p = _log_probs_of(d)
        return dist.CategoricalLogits((log_p - jnp.max(log_p, axis=-1, keepdims=True)) / t)
    if isinstance(d, dist.BernoulliLogits | dist.BernoulliProbs):
        return dist.BernoulliLogits(d.logits / t)
    if isinstance(d, dist.Normal):
        return dist.Normal(d.loc, d.scale * jnp.sqrt(t))
    if isinstance(d, dist.MultivariateNormal):
        return dist.MultivariateNormal(d.loc, scale_tril=d.scale_tril * jnp.sqrt(t))
    if isinstance(d, dist.MixtureSameFamily):
        return dist.MixtureSameFamily(
            temper(d.mixing_distribution, t), temper(d.component_distribution, t)
        )
    raise ValueError(
        f"temperature={temperature} is not supported for {type(d).__name__} emissions; "
        "use temperature=1.0 (plain ancestral sampling)."
    )


def _log_probs_of(d):
    if isinstance(d, dist.CategoricalProbs):
        return jnp.log(d.probs)
    return jax.nn.log_softmax(d.logits, axis=-1)


def _mode(d: dist.Distribution) -> jax.Array:
    if isinstance(d, dist.Independent):
        return _mode(d.base_dist)
    if isinstance(d, dist.CategoricalLogits | dist.CategoricalProbs):
        return jnp.argmax(_log_probs_of(d), axis=-1)
    if isinstance(d, dist.BernoulliLogits | dist.BernoulliProbs):
        return (d.logits > 0).astype(jnp.result_type(int))  # the dtype sample() gives
    if isinstance(d, dist.Normal | dist.MultivariateNormal):
        return d.loc
    if isinstance(d, dist.Poisson):
        return jnp.floor(d.rate).astype(jnp.result_type(int))
    if isinstance(d, dist.MixtureSameFamily):
        # Greedy for a mixture: the mode of the most probable component.
        event_ndim = len(d.event_shape)
        k = jnp.argmax(_log_probs_of(d.mixing_distribution), axis=-1)
        comp_modes = _mode(d.component_distribution)  # batch + (M,) + event
        idx = k.reshape(k.shape + (1,) * (1 + event_ndim))
        picked = jnp.take_along_axis(comp_modes, idx, axis=-1 - event_ndim)
        return jnp.squeeze(picked, axis=-1 - event_ndim)
    raise ValueError(f"temperature=0 (greedy) is not supported for {type(d).__name__} emissions.")
