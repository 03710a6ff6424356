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
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probseq import memory, validation
from probseq.auto import choose_hmm_filter, choose_smoother
from probseq.core import SequenceModel, as_batch, param_dtype, poison_invalid_rows
from probseq.families.registry import POSITIVE_INT, FamilySpec, choice
from probseq.heads import (
    COVARIANCE_TYPES,
    CategoricalHead,
    Head,
    MultivariateNormalHead,
    NormalHead,
    _cholesky_of,
    raw_tril,
)
from probseq.hmm_inference import (
    FILTER_METHODS,
    check_model_data,  # issue 25, case 7
    condition_on,
    hmm_backward_sample,
    hmm_filter,
    hmm_filter_batch,
    hmm_smoother_batch,
    hmm_smoother_chunked,
    hmm_viterbi,
)
from probseq.scan import EXACT
from probseq.validation import check_stochastic as _check_stochastic

__all__ = ["HMM", "HMMParams", "CategoricalHMM", "GaussianHMM"]

#: The ``scan=`` choices of an HMM: "auto" or a filter path of hmm_filter_batch.
SCAN_CHOICES = ("auto",) + FILTER_METHODS


class HMMParams(NamedTuple):
    """initial_logits (K,), transition_logits (K, K) (row i: from state i),
    emission: the head's raw parameters with a leading K axis, and input_weights
    (K, K, m) of an input-driven HMM (None without inputs): the transition out of step
    t has logits ``transition_logits + input_weights @ u_t``."""

    initial_logits: jax.Array
    transition_logits: jax.Array
    emission: Any
    input_weights: jax.Array | None = None


def _log(a: np.ndarray, dtype):
    with np.errstate(divide="ignore"):
        return jnp.asarray(np.log(a), dtype)


@dataclasses.dataclass(frozen=True)
class HMM(SequenceModel):
    """A homogeneous hidden Markov model with ``num_states`` states and any head.

    Args:
        num_states: K, the number of hidden states.
        head: the emission head; each state has its own parameter set.
        scan: how a batch is filtered (log_prob, score, step_log_probs, filter,
            forecast, sampling after a prefix, fit_sgd): "sequential" (T steps),
            "chunked" (time chunks at once, fixed up until exact), "parallel" (an
            associative scan over K x K operators, O(log T) depth, O(T K^2) memory)
            or "auto" (by backend, size and memory: :mod:`probseq.auto`). All give the
            same values and gradients (see :func:`probseq.hmm_inference.hmm_filter_batch`).
        input_dim: m > 0 makes the transitions input-driven: step t's update (from
            z_t to z_{t+1}) uses A_t = softmax(transition_logits + input_weights @ u_t)
            row-wise, so the HMM takes per-step inputs u_t like every RNN family (the
            emissions do not depend on u). Such a model is filtered sequentially
            (``scan`` must be "auto" or "sequential"); fit_em runs generalised EM (see
            :func:`probseq.fit_em`). With zero input weights it is the plain HMM.
    """

    num_states: int
    head: Head
    scan: str = "auto"
    input_dim: int = 0

    def __post_init__(self):
        object.__setattr__(self, "num_states", validation.check_int("num_states", self.num_states))
        object.__setattr__(
            self, "input_dim", validation.check_int("input_dim", self.input_dim, minimum=0)
        )
        if self.input_dim and self.scan not in ("auto", "sequential"):
            raise ValueError(
                f"an input-driven HMM (input_dim={self.input_dim}) is filtered sequentially; "
                f"got scan={self.scan!r} (use 'auto' or 'sequential')."
            )
        if not isinstance(self.head, Head):
            raise ValueError(f"head must be a probseq.heads.Head, got {type(self.head).__name__}")
        validation.check_choice("scan", self.scan, SCAN_CHOICES)

    def init(self, key, *, initial_probs=None, transition_matrix=None, emission=None, dtype=None):
        """Random parameters; any of initial_probs (K,), transition_matrix (K, K) and
        emission (raw head parameters with a leading K axis) given are used as is.

        At random: uniform initial probabilities, a sticky transition matrix
        (0.5 I + 0.5 Dirichlet(1) rows) and the head's random per-state parameters.
        """
        k, dtype = self.num_states, param_dtype(dtype)
        if not isinstance(key, jax.core.Tracer):  # eval_shape (the estimate) traces the key
            memory.check_fits(memory.param_bytes(self, dtype), f"{self!r}.init (parameters)")
        k_trans, k_emit = jax.random.split(key)
        if initial_probs is None:
            initial_logits = jnp.zeros((k,), dtype)
        else:
            initial_logits = _log(_check_stochastic("initial_probs", initial_probs, (k,)), dtype)
        if transition_matrix is None:
            rows = jax.random.dirichlet(k_trans, jnp.ones((k,), dtype), (k,), dtype)
            transition_logits = jnp.log(0.5 * jnp.eye(k, dtype=dtype) + 0.5 * rows)
        else:
            a = _check_stochastic("transition_matrix", transition_matrix, (k, k))
            transition_logits = _log(a, dtype)
        if emission is None:
            emission = self.head.init_components(k_emit, k, dtype)
        else:
            emission = jax.tree.map(lambda a: jnp.asarray(a, dtype), emission)
        # Input weights start at 0: the model starts as the plain HMM.
        weights = jnp.zeros((k, k, self.input_dim), dtype) if self.input_dim else None
        return HMMParams(initial_logits, transition_logits, emission, weights)

    def initial_state(self, params):
        return jax.nn.softmax(params.initial_logits)

    def transition_matrix(self, params):
        """A (K, K); of an input-driven HMM, A at input u = 0."""
        return jax.nn.softmax(params.transition_logits, axis=-1)

    def transition_matrices(self, params, us):
        """A_t (..., K, K) for inputs u_t (..., m): row-wise softmax of
        ``transition_logits + input_weights @ u_t`` (input-driven HMMs)."""
        w = params.input_weights
        logits = params.transition_logits + jnp.einsum("ijm,...m->...ij", w, us, precision=EXACT)
        return jax.nn.softmax(logits, axis=-1)

    def _transition(self, params, u):
        if self.input_dim and u is not None:
            return self.transition_matrices(params, u)
        return self.transition_matrix(params)

    def emission(self, params, state, u=None):
        return self.head.mixture(state, params.emission)

    def update(self, params, state, x, u=None):
        filtered, _ = condition_on(state, self.head.component_log_probs(params.emission, x))
        return jnp.matmul(filtered, self._transition(params, u), precision=EXACT)

    def emission_log_likelihoods(self, params, xs):
        """log p(x_t | z_t = k) for a whole sequence: (T, K)."""
        return jax.vmap(lambda x: self.head.component_log_probs(params.emission, x))(xs)

    def emission_likelihoods(self, params, xs, initial_probs, transition_matrix, starts=None):
        """p(x_t | z_t = k) up to a factor per step, for a whole sequence: (l (T, K),
        m (T,)) with log p(x_t | k) = log l_tk + m_t on the states the chain can be in
        (p(z_1) > 0 at the first step, a column of A with a positive entry after it; see
        :meth:`probseq.heads.Head.component_likelihoods`): what the smoothers run on.
        ``starts`` (int array) lists the steps of xs that begin a sequence when xs holds
        the steps of several (the chunked E-step's layout); None: step 0."""
        raw = params.emission
        later = jnp.any(transition_matrix > 0, axis=0)
        lik, m = jax.vmap(lambda x: self.head.component_likelihoods(raw, x, later))(xs)
        if starts is None:
            lik0, m0 = self.head.component_likelihoods(raw, xs[0], initial_probs > 0)
            return lik.at[0].set(lik0), m.at[0].set(m0)
        first = initial_probs > 0
        lik0, m0 = jax.vmap(lambda x: self.head.component_likelihoods(raw, x, first))(xs[starts])
        return lik.at[starts].set(lik0), m.at[starts].set(m0)

    # ---- the EM capability (probseq.families.hmm_em holds the math)
    @property
    def supports_em(self) -> bool:
        return self.head.has_m_step

    def em_options(self, params, batch, **settings):
        from probseq.families import hmm_em

        options = hmm_em.em_options(self, params, batch, **settings)
        # issue 25, case 7: data of probability zero under the start is refused before
        # the first iteration (EM would run at -inf and return the start unchanged).
        # fit_em and em_step call this eagerly; under a trace it checks nothing.
        try:
            check_model_data(self, params, batch.x, batch.mask, batch.inputs)
        except ValueError as e:
            raise ValueError(f"EM cannot start: {e}") from None
        return options

    def expected_statistics(self, params, batch, options):
        from probseq.families import hmm_em

        return hmm_em.expected_statistics(self, params, batch, options)

    def m_step(self, params, stats, batch, options):
        from probseq.families import hmm_em

        return hmm_em.m_step(self, params, stats, batch, options)

    def em_log_prior(self, params, options):
        from probseq.families import hmm_em

        return hmm_em.log_prior(self, params, options)

    def filter_path(self, num_sequences: int, num_steps: int, dtype) -> tuple[str, int | None]:
        """(method, group_size) of :func:`probseq.hmm_inference.hmm_filter_batch` for a
        batch of this size: ``scan`` unless it is "auto" (then :mod:`probseq.auto`)."""
        if self.scan != "auto":
            return self.scan, None
        if self.input_dim:
            return "sequential", None
        itemsize = jnp.dtype(dtype).itemsize
        return choose_hmm_filter(num_sequences, num_steps, self.num_states, itemsize)

    def filter_batch(self, params, x, mask=None, initial_probs=None, inputs=None):
        """:func:`probseq.hmm_inference.hmm_filter_batch` of a padded batch x (B, T, ...)
        by this model's filter path, from ``initial_probs`` (B, K) or p(z_1); an
        input-driven HMM takes ``inputs`` (B, T, m) (A_t per step, the sequential path)."""
        pi, a, ll = _batch_inputs(self, params, x, inputs)
        pi = pi if initial_probs is None else initial_probs
        method, group = self.filter_path(ll.shape[0], ll.shape[1], ll.dtype)
        return hmm_filter_batch(pi, a, ll, mask, method=method, group_size=group)

    def batch_sequence_log_probs(self, params, states, xs, us=None):
        """The whole batch through :meth:`filter_batch` (the path ``scan`` names); the
        sequential path is :meth:`sequence_log_probs` vmapped, the generic batching (the
        code RESULTS.md measured before the batch paths existed)."""
        dtype = jax.tree.leaves(params)[0].dtype
        if self.filter_path(xs.shape[0], xs.shape[1], dtype)[0] == "sequential":
            return super().batch_sequence_log_probs(params, states, xs, us)
        res = self.filter_batch(params, xs, None, states)
        after = jnp.matmul(res.filtered_probs, self.transition_matrix(params), precision=EXACT)
        return at_most_zero(self.head, res.log_normalizers), after

    def sequence_log_probs(self, params, state, xs, us=None):
        """The scaled forward filter (one gather per step for categorical emissions);
        with input-driven transitions, A_t per step."""
        a = self._transition(params, us)
        res = hmm_filter(state, a, self.emission_log_likelihoods(params, xs))
        last = jnp.matmul(res.filtered_probs[-1], a[-1] if a.ndim == 3 else a, precision=EXACT)
        after = jnp.concatenate([res.predicted_probs[1:], last[None]])
        return at_most_zero(self.head, res.log_normalizers), after

    # ------------------------------------------------------ posterior over states
    def filter(self, params, x, mask=None, *, inputs=None):
        r"""Filtered (causal) state probabilities :math:`p(z_t \mid x_{1:t})`.

        Args:
            params: this model's parameters.
            x: one sequence (T,) / (T, D), a batch (B, T) / (B, T, D), or a list of
                unequal-length sequences (padded here).
            mask: optional (B, T) (or (T,)) boolean prefix mask, True on valid steps.
            inputs: an input-driven HMM's (``input_dim=m``) per-step inputs u_t, (T, m)
                or (B, T, m) (or a list matching x); the transition out of step t is
                A(u_t). None for a plain HMM.

        Returns:
            (T, K) or (B, T, K) probabilities; rows of padded steps are 0.

        Example:
            >>> hmm = CategoricalHMM(num_states=2, vocab_size=3)
            >>> p = hmm.init(jax.random.key(0))
            >>> hmm.filter(p, jnp.array([0, 2, 1])).shape
            (3, 2)
        """
        return self._posterior(_filter_kernel, params, x, mask, inputs)

    def smoother(self, params, x, mask=None, *, inputs=None):
        r"""Smoothed state probabilities :math:`p(z_t \mid x_{1:T})` (forward-backward).

        Takes the same inputs as :meth:`filter`; returns (T, K) or (B, T, K), 0 on
        padded steps. See :func:`probseq.hmm_inference.hmm_smoother` for the
        expected transition counts and marginal likelihood in one pass.

        Example:
            >>> hmm = CategoricalHMM(num_states=2, vocab_size=3)
            >>> p = hmm.init(jax.random.key(0))
            >>> hmm.smoother(p, [jnp.array([0, 2, 1]), jnp.array([1])]).shape
            (2, 3, 2)
        """
        return self._posterior(_smoother_kernel, params, x, mask, inputs)

    def most_likely_states(self, params, x, mask=None, *, inputs=None):
        r"""The Viterbi path :math:`\arg\max_{z_{1:T}} p(z_{1:T} \mid x_{1:T})`.

        Takes the same inputs as :meth:`filter`; returns int32 states (T,) or (B, T),
        -1 on padded steps.

        Example:
            >>> hmm = CategoricalHMM(num_states=2, vocab_size=3)
            >>> p = hmm.init(jax.random.key(0))
            >>> hmm.most_likely_states(p, jnp.array([0, 2, 1])).shape
            (3,)
        """
        return self._posterior(_viterbi_kernel, params, x, mask, inputs)

    def sample_states(self, params, key, x, mask=None, num_samples=None, *, inputs=None):
        r"""Exact draws of whole state paths :math:`z_{1:T} \sim p(z_{1:T} \mid x_{1:T})`
        (forward filtering, backward sampling).

        Args:
            params: this model's parameters.
            key: a PRNG key (``jax.random.key(seed)``).
            x, mask, inputs: as for :meth:`filter`.
            num_samples: independent paths per sequence (None: one, no sample axis).

        Returns:
            int32 states shaped ``(num_samples,)? + (B,)? + (T,)``, -1 on padded steps.
            The same key gives the same draws however the batch is padded.

        Example:
            >>> hmm = CategoricalHMM(num_states=2, vocab_size=3)
            >>> p = hmm.init(jax.random.key(0))
            >>> hmm.sample_states(p, jax.random.key(1), jnp.array([0, 2, 1]), num_samples=5).shape
            (5, 3)
        """
        validation.check_key(key)
        num_samples = validation.check_int("num_samples", num_samples, allow_none=True)
        batch = as_batch(self, params, x, mask, inputs)
        draws = 1 if num_samples is None else num_samples
        z = _sample_states_kernel(self, params, key, batch.x, batch.mask, batch.inputs, draws)
        if not batch.batched:
            z = z[:, 0]
        return z if num_samples is not None else z[0]

    def _posterior(self, kernel, params, x, mask, inputs):
        batch = as_batch(self, params, x, mask, inputs)
        # issue 25, case 7: a sequence of probability zero is an error, not zero rows
        check_model_data(self, params, batch.x, batch.mask, batch.inputs)
        out = kernel(self, params, batch.x, batch.mask, batch.inputs)
        # Rows a traced call could not validate are NaN (integer paths: undefined).
        out = poison_invalid_rows(self, out, batch.x, batch.mask)
        return out if batch.batched else out[0]


def at_most_zero(head, log_probs):
    """``log_probs`` clamped at 0 when ``head`` is discrete (``head.discrete``): a
    probability mass is at most 1, and float32 rounding of a near-certain step (one
    repeated symbol) gives log p(x_t | x_{<t}) = +1.2e-7, totals of +1e-5 (issue 25,
    case 8). The gradient is the unclamped one (the E-step's identity needs it);
    densities (Normal heads) pass unchanged. -inf and NaN stay as they are."""
    if not getattr(head, "discrete", False):
        return log_probs
    return jnp.where(log_probs > 0, log_probs - jax.lax.stop_gradient(log_probs), log_probs)


def _batch_inputs(model, params, x, us=None):
    """p(z_1), A (K, K) (A_t per step (B, T, K, K) given inputs us (B, T, m)) and the
    (B, T, K) emission log-likelihoods of a padded batch."""
    ll = jax.vmap(lambda xs: model.emission_log_likelihoods(params, xs))(x)
    return model.initial_state(params), model._transition(params, us), ll


def _over_batch(kernel, a):
    """A kernel (initial_probs, transition_matrix, log_likelihoods, mask) mapped over
    the batch axis of the last two (and of A when it is per step, (B, T, K, K))."""
    return jax.vmap(kernel, in_axes=(None, 0 if a.ndim == 4 else None, 0, 0))


@functools.partial(jax.jit, static_argnums=0)
def _filter_kernel(model, params, x, mask, us):
    return model.filter_batch(params, x, mask, inputs=us).filtered_probs


@functools.partial(jax.jit, static_argnums=0)
def _smoother_kernel(model, params, x, mask, us):
    pi, a, ll = _batch_inputs(model, params, x, us)
    # Long sequences with few states: all time chunks at once, fixed up until exact
    # (one transition matrix only).
    chunked = choose_smoother(x.shape[0], x.shape[1], model.num_states) == "chunked"
    smoother = hmm_smoother_chunked if chunked and a.ndim == 2 else hmm_smoother_batch
    return smoother(pi, a, ll, mask).smoothed_probs


@functools.partial(jax.jit, static_argnums=0)
def _viterbi_kernel(model, params, x, mask, us):
    pi, a, ll = _batch_inputs(model, params, x, us)
    return _over_batch(hmm_viterbi, a)(pi, a, ll, mask)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _sample_states_kernel(model, params, key, x, mask, us, num_draws):
    """(num_draws, B, T) paths; the filter runs once per sequence, not once per draw."""
    a = model._transition(params, us)
    filtered = model.filter_batch(params, x, mask, inputs=us).filtered_probs
    rows = jnp.arange(x.shape[0])
    sample = jax.vmap(hmm_backward_sample, in_axes=(0, 0 if a.ndim == 4 else None, 0, 0))

    def one_draw(k):
        # Sequence b uses fold_in(k, b): draws do not depend on the batch size.
        keys = jax.vmap(functools.partial(jax.random.fold_in, k))(rows)
        return sample(keys, a, filtered, mask)

    return jax.vmap(one_draw)(jax.random.split(key, num_draws))


@dataclasses.dataclass(frozen=True, init=False)
class CategoricalHMM(HMM):
    """HMM with categorical emissions over ``vocab_size`` symbols.

    Example:
        >>> hmm = CategoricalHMM(num_states=3, vocab_size=6)
    """

    vocab_size: int

    def __init__(self, num_states: int, vocab_size: int, *, scan: str = "auto", input_dim: int = 0):
        object.__setattr__(self, "num_states", num_states)
        object.__setattr__(self, "head", CategoricalHead(vocab_size))
        object.__setattr__(self, "scan", scan)
        object.__setattr__(self, "input_dim", input_dim)
        object.__setattr__(self, "vocab_size", self.head.vocab_size)
        self.__post_init__()

    def __repr__(self):
        scan = "" if self.scan == "auto" else f", scan={self.scan!r}"
        scan += f", input_dim={self.input_dim}" if self.input_dim else ""
        return f"CategoricalHMM(num_states={self.num_states}, vocab_size={self.vocab_size}{scan})"

    def init(
        self,
        key,
        initial_probs=None,
        transition_matrix=None,
        emission_probs=None,
        *,
        dtype=None,
    ):
        """Parameters with any of the given probability arrays set exactly:
        initial_probs (K,), transition_matrix (K, K), emission_probs (K, V)."""
        emission, dtype = None, param_dtype(dtype)
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
    """HMM with Gaussian emissions over ``obs_dim`` reals.

    ``covariance_type`` is hmmlearn's: "diag" (the default; :class:`probseq.heads.NormalHead`,
    a standard deviation per state and dimension), "full" (a covariance matrix per
    state), "tied" (one covariance matrix shared by all states) or "spherical" (one
    variance per state); the last three are :class:`probseq.heads.MultivariateNormalHead`.
    (dynamax's GaussianHMM is "full", its DiagonalGaussianHMM "diag",
    SphericalGaussianHMM "spherical" and SharedCovarianceGaussianHMM "tied".)

    Example:
        >>> hmm = GaussianHMM(num_states=2, obs_dim=1)
        >>> full = GaussianHMM(num_states=3, obs_dim=2, covariance_type="full")
    """

    obs_dim: int
    covariance_type: str

    def __init__(
        self,
        num_states: int,
        obs_dim: int,
        *,
        covariance_type: str = "diag",
        scan: str = "auto",
        input_dim: int = 0,
    ):
        validation.check_choice("covariance_type", covariance_type, ("diag",) + COVARIANCE_TYPES)
        if covariance_type == "diag":
            head = NormalHead(obs_dim)
        else:
            head = MultivariateNormalHead(obs_dim, covariance_type)
        object.__setattr__(self, "num_states", num_states)
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "scan", scan)
        object.__setattr__(self, "input_dim", input_dim)
        object.__setattr__(self, "obs_dim", self.head.obs_dim)
        object.__setattr__(self, "covariance_type", covariance_type)
        self.__post_init__()

    def __repr__(self):
        kind = self.covariance_type
        extra = "" if kind == "diag" else f", covariance_type={kind!r}"
        extra += "" if self.scan == "auto" else f", scan={self.scan!r}"
        extra += f", input_dim={self.input_dim}" if self.input_dim else ""
        return f"GaussianHMM(num_states={self.num_states}, obs_dim={self.obs_dim}{extra})"

    def covariance_shape(self) -> tuple[int, ...]:
        """The shape of ``covariances`` in :meth:`init` and :meth:`probabilities`
        (hmmlearn's ``_covars_``): "diag" (K, D) variances, "full" (K, D, D), "tied"
        (D, D), "spherical" (K,) variances."""
        k, d = self.num_states, self.obs_dim
        return {"diag": (k, d), "full": (k, d, d), "tied": (d, d), "spherical": (k,)}[
            self.covariance_type
        ]

    def init(
        self,
        key,
        initial_probs=None,
        transition_matrix=None,
        means=None,
        scales=None,
        *,
        covariances=None,
        dtype=None,
    ):
        """Parameters with any given array set exactly: initial_probs (K,),
        transition_matrix (K, K), means (K, D), and the spread: ``scales`` (K, D)
        standard deviations ("diag" only) or ``covariances`` in the shape of
        :meth:`covariance_shape` (every covariance_type; symmetric positive definite
        matrices for "full" and "tied")."""
        dtype = param_dtype(dtype)
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
        if scales is not None and covariances is not None:
            raise ValueError("give scales or covariances, not both.")
        if scales is not None:
            if self.covariance_type != "diag":
                raise ValueError(
                    f"scales (standard deviations) set a 'diag' GaussianHMM; this one is "
                    f"covariance_type={self.covariance_type!r}: give covariances of shape "
                    f"{self.covariance_shape()}."
                )
            s = np.asarray(scales, np.float64)
            if s.shape != shape or not (np.isfinite(s).all() and (s > 0).all()):
                raise ValueError(f"scales must be positive and finite with shape {shape}.")
            emission["log_scale"] = jnp.asarray(np.log(s), dtype)
        if covariances is not None:
            emission.update(self._raw_covariances(covariances, dtype))
        return params._replace(emission=emission)

    def _raw_covariances(self, covariances, dtype) -> dict:
        c = np.asarray(covariances, np.float64)
        shape, kind = self.covariance_shape(), self.covariance_type
        if c.shape != shape or not np.isfinite(c).all():
            raise ValueError(
                f"covariances of a {kind!r} GaussianHMM must be finite with shape {shape}; "
                f"got shape {c.shape}."
            )
        if kind in ("diag", "spherical"):
            if not (c > 0).all():
                raise ValueError(f"covariances of a {kind!r} GaussianHMM are variances > 0.")
            name = "log_scale"
            return {name: jnp.asarray(0.5 * np.log(c), dtype)}
        if not np.allclose(c, np.swapaxes(c, -1, -2), rtol=1e-10, atol=0.0):
            raise ValueError(f"covariances of a {kind!r} GaussianHMM must be symmetric.")
        try:
            chol = np.linalg.cholesky(c)
        except np.linalg.LinAlgError:
            raise ValueError(
                f"covariances of a {kind!r} GaussianHMM must be positive definite."
            ) from None
        return {"tril": jnp.asarray(np.asarray(raw_tril(jnp.asarray(chol))), dtype)}

    def covariances(self, params) -> jax.Array:
        """Every state's covariance matrix, (K, D, D) (hmmlearn's ``covars_``)."""
        e, k, d = params.emission, self.num_states, self.obs_dim
        if self.covariance_type in ("diag", "spherical"):
            var = jnp.exp(2.0 * e["log_scale"])
            var = jnp.broadcast_to(var[..., None] if var.ndim == 1 else var, (k, d))
            return var[..., None] * jnp.eye(d, dtype=var.dtype)
        chol = jnp.broadcast_to(_cholesky_of(e["tril"]), (k, d, d))
        return jnp.matmul(chol, jnp.swapaxes(chol, -1, -2), precision=EXACT)

    def probabilities(self, params):
        """(initial_probs (K,), transition_matrix (K, K), (means (K, D), spread)): the
        spread is ``scales`` (K, D) for "diag" (standard deviations, as :meth:`init`
        takes them) and ``covariances`` in the shape of :meth:`covariance_shape`
        otherwise. :meth:`covariances` gives (K, D, D) matrices for every type."""
        e = params.emission
        if self.covariance_type == "diag":
            spread = jnp.exp(e["log_scale"])
        elif self.covariance_type == "spherical":
            spread = jnp.exp(2.0 * e["log_scale"])
        else:
            chol = _cholesky_of(e["tril"])
            spread = jnp.matmul(chol, jnp.swapaxes(chol, -1, -2), precision=EXACT)
        return self.initial_state(params), self.transition_matrix(params), (e["loc"], spread)


def _build(options: dict, head: Head) -> HMM:
    """The HMM a spec describes: ``covariance_type`` (hmmlearn's; default "diag") turns
    a 'normal' head into :class:`probseq.heads.MultivariateNormalHead`."""
    options = dict(options)
    covariance_type = options.pop("covariance_type", "diag")
    if covariance_type != "diag":
        if type(head) is not NormalHead:
            raise ValueError(
                f"[model].covariance_type = {covariance_type!r} needs head = 'normal' (a "
                f"Gaussian HMM); got a {type(head).__name__}."
            )
        head = MultivariateNormalHead(head.obs_dim, covariance_type)
    return HMM(head=head, **options)


SPEC = FamilySpec(
    name="hmm",
    model=HMM,
    keys={
        "num_states": POSITIVE_INT,
        "scan": choice(*SCAN_CHOICES),
        "covariance_type": choice("diag", *COVARIANCE_TYPES),
    },
    build=_build,
    heads=("categorical", "normal", "poisson", "bernoulli", "mixture_normal"),
    required=("num_states",),
    fit_methods=("sgd", "em"),
)
