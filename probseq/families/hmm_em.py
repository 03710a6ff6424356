r"""The HMM's EM capability: expected statistics by autodiff (or the smoother) and the
closed-form M-step, next to the family (:class:`probseq.HMM` declares them on the
contract; :func:`probseq.fit_em` is the one generic driver).

The E-step uses the exponential-family identity: with the log-parameters entering the
forward recursion multilinearly,

.. math::
    \log Z = \log \sum_{z_{1:T}} \pi_{z_1} \prod_t A_{z_{t-1} z_t} \prod_t p(x_t \mid z_t),

the gradient of log Z with respect to ``log pi`` is E[z_1], with respect to ``log A``
the expected transition counts sum_t xi_t, and with respect to the per-step emission
log-likelihoods ``l_t(k) = log p(x_t | z_t = k)`` the posterior state marginals
gamma_t(k) (for categorical emissions, scattering gamma by symbol gives the expected
emission counts, i.e. the gradient with respect to log B). So one ``jax.grad``
through the *same* scaled forward filter that ``probseq.log_prob`` uses
(:func:`probseq.hmm_inference.hmm_filter`) gives every expected statistic; the
filter is fed ``exp(log pi)`` and ``exp(log A)`` directly, never a softmax, because
the gradient with respect to softmax logits would be ``n - N p``, not the counts ``n``.

The M-step is closed form: Dirichlet-MAP (or ML) normalised counts for the initial and
transition probabilities, and the head's own ``m_step`` for the emissions (categorical
counts, Gaussian weighted moments, Poisson and Bernoulli weighted means).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from probseq import validation
from probseq.auto import choose_smoother, estep_groups
from probseq.core import EMOptions
from probseq.families.hmm import HMM, HMMParams, at_most_zero
from probseq.hmm_inference import (
    ChunkLayout,
    chunked_statistics,
    hmm_filter,
    hmm_smoother_from_likelihoods,
)
from probseq.scan import EXACT, pairwise_sum


class DirichletPrior(NamedTuple):
    """Dirichlet pseudo-counts (concentrations) for MAP estimation; 1 means no prior.

    initial: scalar or (K,); transition: scalar or (K, K) (row i: from state i);
    emission: scalar or (K, V), categorical emissions only (None: no emission prior).
    """

    initial: Any = 1.0
    transition: Any = 1.0
    emission: Any = None


class HMMStatistics(NamedTuple):
    """Expected sufficient statistics of a batch.

    log_likelihood: total log p(x) of the batch, ().
    initial_counts: E[z_1 = k] summed over sequences, (K,).
    transition_counts: expected number of i -> j transitions, (K, K).
    posteriors: gamma_t(k) = p(z_t = k | x), (B, T, K), 0 on padding.
    """

    log_likelihood: jax.Array
    initial_counts: jax.Array
    transition_counts: jax.Array
    posteriors: jax.Array


def _log_marginal(log_pi, log_a, log_likelihoods, mask, head=None):
    """Total masked log p(x) of a batch, multilinear in exp(log pi), exp(log A); each
    step's log p(x_t | x_{<t}) at most 0 for a discrete ``head`` (same gradient)."""

    def one(ll, m):
        res = hmm_filter(jnp.exp(log_pi), jnp.exp(log_a), ll)
        return pairwise_sum(jnp.where(m, at_most_zero(head, res.log_normalizers), 0.0))

    return jnp.sum(jax.vmap(one)(log_likelihoods, mask))


def _log_marginal_inputs(log_pi, log_a, log_likelihoods, mask, head=None):
    """:func:`_log_marginal` with a transition matrix per step, log_a (B, T, K, K)."""

    def one(la, ll, m):
        res = hmm_filter(jnp.exp(log_pi), jnp.exp(la), ll)
        return pairwise_sum(jnp.where(m, at_most_zero(head, res.log_normalizers), 0.0))

    return jnp.sum(jax.vmap(one)(log_a, log_likelihoods, mask))


ESTEPS = ("auto", "autodiff", "forward_backward", "chunked")


def _statistics(model: HMM, params: HMMParams, x, mask, estep: str, inputs=None, paired=False):
    """Expected statistics (:class:`HMMStatistics`). With ``paired``: (statistics whose
    posteriors are (N, K), the observations (N, ...) in the same order), the form the
    M-step takes, which the chunked E-step gives without reordering its arrays."""
    log_pi = jax.nn.log_softmax(params.initial_logits)
    if model.input_dim:
        # Expected transitions per step, xi_t (B, T, K, K): the gradient with respect to
        # each step's log A_t (the recursion is multilinear in every A_t's entries).
        log_a = jnp.log(model.transition_matrices(params, inputs))
        ll = jax.vmap(lambda xs: model.emission_log_likelihoods(params, xs))(x)
        value, (n_init, xi, gamma) = jax.value_and_grad(_log_marginal_inputs, argnums=(0, 1, 2))(
            log_pi, log_a, ll, mask, model.head
        )
        return _paired(HMMStatistics(value, n_init, xi, gamma), x, paired)
    log_a = jax.nn.log_softmax(params.transition_logits, axis=-1)
    estep = _resolve_estep(estep, x.shape[0], x.shape[1], model.num_states)
    if estep == "autodiff":
        ll = jax.vmap(lambda xs: model.emission_log_likelihoods(params, xs))(x)
        value, (n_init, n_trans, gamma) = jax.value_and_grad(_log_marginal, argnums=(0, 1, 2))(
            log_pi, log_a, ll, mask, model.head
        )
        return _paired(HMMStatistics(value, n_init, n_trans, gamma), x, paired)
    pi, a = jnp.exp(log_pi), jnp.exp(log_a)
    if paired and estep == "chunked":
        value, n_init, n_trans, gamma, flat_x = _chunked_in_groups(model, params, x, mask, pi, a)
        value = at_most_zero(model.head, value)  # per sequence: a mass is at most 1
        return HMMStatistics(pairwise_sum(value), n_init, n_trans, gamma), flat_x
    lik, shift = jax.vmap(lambda xs: model.emission_likelihoods(params, xs, pi, a))(x)
    post = hmm_smoother_from_likelihoods(pi, a, lik, shift, mask, method=estep)
    stats = HMMStatistics(
        pairwise_sum(at_most_zero(model.head, post.marginal_loglik)),
        jnp.sum(post.smoothed_probs[:, 0], axis=0),
        pairwise_sum(jnp.moveaxis(post.expected_transitions, 0, -1)),
        post.smoothed_probs,
    )
    return _paired(stats, x, paired)


def _chunked_in_groups(model: HMM, params: HMMParams, x, mask, pi, a):
    """:func:`_chunked_paired` of the whole batch, or of groups of its sequences one
    after the other (lax.map) where :func:`probseq.auto.estep_groups` asks for a smaller
    working set. Group g holds sequences g, g + G, ...: interleaved, so a batch split
    over devices keeps every device busy in every group."""
    mask = jnp.ones(x.shape[:2], bool) if mask is None else jnp.asarray(mask, bool)
    b = x.shape[0]
    groups = estep_groups(b, x.shape[1], model.num_states, pi.dtype.itemsize)
    if groups == 1:
        return _chunked_paired(model, params, x, mask, pi, a)
    size = -(-b // groups)
    groups = -(-b // size)
    pad = groups * size - b

    def grouped(z):
        z = jnp.pad(z, ((0, pad),) + ((0, 0),) * (z.ndim - 1))
        return jnp.swapaxes(z.reshape((size, groups) + z.shape[1:]), 0, 1)

    value, n_init, n_trans, gamma, flat_x = jax.lax.map(
        lambda g: _chunked_paired(model, params, g[0], g[1], pi, a), (grouped(x), grouped(mask))
    )
    return (
        value.T.reshape(-1)[:b],
        jnp.sum(n_init, axis=0),
        pairwise_sum(jnp.moveaxis(n_trans, 0, -1)),
        gamma.reshape(-1, gamma.shape[-1]),
        flat_x.reshape((-1,) + x.shape[2:]),
    )


def _chunked_paired(model: HMM, params: HMMParams, x, mask, pi, a):
    """The chunked E-step in the chunks' layout from the start: the observations are
    reordered (cheap), not the (B, T, K) likelihoods and posteriors. Returns (log p per
    sequence, initial counts, transition counts, posteriors (N, K), observations (N, ...))."""
    layout = ChunkLayout.of(x.shape[1], x.shape[0], model.num_states)
    rows = layout.rows_of(x, 0)
    flat_x = rows.reshape((-1,) + x.shape[2:])
    lik, shift = model.emission_likelihoods(params, flat_x, pi, a, layout.starts())
    stats = chunked_statistics(
        pi,
        a,
        lik.reshape(rows.shape[:2] + lik.shape[1:]),
        shift.reshape(rows.shape[:2]),
        layout.rows_of(mask, False),
        layout,
    )
    return (*stats, flat_x)


def _paired(stats: HMMStatistics, x, paired: bool):
    if not paired:
        return stats
    k = stats.posteriors.shape[-1]
    flat = stats._replace(posteriors=stats.posteriors.reshape(-1, k))
    return flat, x.reshape((-1,) + x.shape[2:])


def _resolve_estep(estep: str, num_sequences: int, num_steps: int, num_states: int) -> str:
    """The E-step "auto" picks, by size (:func:`probseq.auto.choose_smoother`, with
    the measurements): the time-chunked forward-backward where chunks pay off (long
    sequences, few states), else the sequential forward-backward, whose transition
    counts are one contraction over time and which beats reverse mode through the
    filter at K=4, 32 and 256."""
    if estep != "auto":
        return estep
    return choose_smoother(num_sequences, num_steps, num_states)


def _check_estep(estep):
    validation.check_choice("estep", estep, ESTEPS)


def _normalized_log(counts, concentration, old_logits):
    if concentration is not None:
        counts = jnp.maximum(counts + concentration - 1.0, 0.0)
    total = counts.sum(-1, keepdims=True)
    log_p = jnp.log(counts) - jnp.log(jnp.where(total > 0, total, 1.0))
    return jnp.where(total > 0, log_p, jax.nn.log_softmax(old_logits, axis=-1))


def _log_prior(params: HMMParams, prior: DirichletPrior):
    def term(alpha, logits):
        if alpha is None:
            return 0.0
        w = jnp.broadcast_to(alpha - 1.0, logits.shape)
        log_p = jax.nn.log_softmax(logits, axis=-1)
        return jnp.sum(jnp.where(w == 0, 0.0, w * log_p))

    total = term(prior.initial, params.initial_logits)
    total += term(prior.transition, params.transition_logits)
    if prior.emission is not None:
        total += term(prior.emission, params.emission["logits"])
    return total


#: L-BFGS iterations of an input-driven HMM's transition M-step per EM iteration.
TRANSITION_STEPS = 20


def _transition_m_step(model: HMM, params: HMMParams, xi, inputs):
    """The generalised M-step of input-driven transitions: L-BFGS on the expected
    complete-data log-likelihood of the transitions,

        Q(b, W) = sum_{t,i,j} xi_t(i, j) log softmax_j(b_i + W_i u_t),

    a sum of K weighted multinomial logistic regressions (concave), from the current
    (b, W); the result is kept only where Q did not decrease, so the log-likelihood
    never decreases (generalised EM)."""

    def loss(theta):
        b, w = theta
        logits = b + jnp.einsum("ijm,...m->...ij", w, inputs, precision=EXACT)
        return -jnp.sum(jnp.where(xi > 0, xi * jax.nn.log_softmax(logits, axis=-1), 0.0))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)
    start = (params.transition_logits, params.input_weights)

    def step(_, carry):
        theta, state = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(theta, updates), state

    theta, _ = jax.lax.fori_loop(0, TRANSITION_STEPS, step, (start, opt.init(start)))
    better = jnp.isfinite(loss(theta)) & (loss(theta) <= loss(start))
    return jax.tree.map(lambda new, old: jnp.where(better, new, old), theta, start)


def _em_update(
    model: HMM, params: HMMParams, x, mask, prior: DirichletPrior, estep: str, inputs=None
):
    """One EM iteration: returns (new params, log p(x | params), log prior(params))."""
    options = EMOptions(estep, prior)
    stats, log_likelihood = expected_statistics(model, params, (x, mask, inputs), options)
    new, _ = m_step(model, params, stats, (x, mask, inputs), options)
    return new, log_likelihood, _log_prior(params, prior)


# ------------------------------------------------------ the capability (HMM's methods)
def em_options(model: HMM, params: HMMParams, batch, *, prior=None, estep: str = "auto",
               initial=None, num_restarts: int = 1, mesh=None) -> EMOptions:  # fmt: skip
    """fit_em's HMM settings, checked: the E-step (static) and the prior (arrays)."""
    if initial is not None:
        raise ValueError(
            "initial= is a setting of an LDS's EM (probseq.fit_lds_em); an HMM's initial "
            f"probabilities are always learned; got {initial=}."
        )
    _check_hmm(model)
    _check_estep(estep)
    prior = _prior(model, prior, params.initial_logits.dtype)
    _check_inputs_fit(model, estep, prior)
    b, t = np.shape(batch.mask)
    chunked = not model.input_dim and _resolve_estep(estep, b, t, model.num_states) == "chunked"
    # A batched while loop selects over its whole carry every step: restarts of the
    # chunked E-step run one after the other.
    return EMOptions(estep, prior, "map" if chunked else "vmap")


def expected_statistics(model: HMM, params: HMMParams, batch, options: EMOptions):
    """(statistics paired with the observations in their order, log p(x | params))."""
    x, mask, inputs = batch
    stats, flat_x = _statistics(model, params, x, mask, options.static, inputs, paired=True)
    return (stats, flat_x), stats.log_likelihood


def m_step(model: HMM, params: HMMParams, stats, batch, options: EMOptions):
    """The closed-form M-step (generalised for input-driven transitions): (params, {})."""
    (stats, flat_x), prior, inputs = stats, options.constants, batch[2]
    if model.input_dim:
        transition_logits, input_weights = _transition_m_step(
            model, params, stats.transition_counts, inputs
        )
    else:
        transition_logits = _normalized_log(
            stats.transition_counts, prior.transition, params.transition_logits
        )
        input_weights = params.input_weights
    new = HMMParams(
        initial_logits=_normalized_log(stats.initial_counts, prior.initial, params.initial_logits),
        transition_logits=transition_logits,
        emission=model.head.m_step(stats.posteriors, flat_x, params.emission, prior.emission),
        input_weights=input_weights,
    )
    return new, {}


def log_prior(model: HMM, params: HMMParams, options: EMOptions):
    return _log_prior(params, options.constants)


def _check_inputs_fit(model, estep, prior):
    """An input-driven HMM's E-step is the autodiff one (expected transitions per step)
    and its transition M-step is not closed form: no Dirichlet prior on it."""
    if not model.input_dim:
        return
    if estep not in ("auto", "autodiff"):
        raise ValueError(
            f"estep={estep!r}: an input-driven HMM ({model!r}) has a transition matrix per "
            "step; its expected statistics come from estep='autodiff' (or 'auto')."
        )
    if prior is not None and prior.transition is not None:
        raise ValueError(
            f"a Dirichlet prior on the transitions of an input-driven HMM ({model!r}) is not "
            "supported: its transitions are logistic regressions on the inputs."
        )


def _check_hmm(model):
    if not isinstance(model, HMM):
        raise ValueError(
            f"fit_em fits hidden Markov models (probseq.CategoricalHMM, GaussianHMM, HMM); "
            f"got {model!r}. Use probseq.fit_sgd for other models."
        )
    if not model.head.has_m_step:
        raise ValueError(
            f"{type(model.head).__name__} emissions have no closed-form M-step, so fit_em "
            f"cannot fit {model!r}; use probseq.fit_sgd."
        )


def _prior(model: HMM, prior, dtype) -> DirichletPrior:
    if prior is None:
        return DirichletPrior(None, None, None)
    if isinstance(prior, dict):
        unknown = set(prior) - set(DirichletPrior._fields)
        if unknown:
            raise ValueError(
                f"prior has unknown key(s) {sorted(unknown)}; "
                f"allowed: {list(DirichletPrior._fields)}."
            )
        prior = DirichletPrior(**prior)
    if not isinstance(prior, DirichletPrior):
        raise ValueError(
            f"prior must be None, a dict or a DirichletPrior; got {type(prior).__name__}."
        )
    k = model.num_states
    shapes = {"initial": (k,), "transition": (k, k)}
    if prior.emission is not None:
        vocab = getattr(model.head, "vocab_size", None)
        if vocab is None:
            raise ValueError(
                "a Dirichlet emission prior applies to categorical emissions only; "
                f"{model!r} takes prior emission=None."
            )
        shapes["emission"] = (k, vocab)
    out = {}
    for name, shape in shapes.items():
        a = np.asarray(getattr(prior, name), dtype=np.float64)
        try:
            a = np.broadcast_to(a, shape)
        except ValueError:
            raise ValueError(
                f"prior.{name} must be a scalar or broadcast to {shape}; got shape {a.shape}."
            ) from None
        if not (np.isfinite(a).all() and (a > 0).all()):
            raise ValueError(f"prior.{name} must hold finite concentrations > 0.")
        out[name] = jnp.asarray(a, dtype)
    return DirichletPrior(out["initial"], out["transition"], out.get("emission"))
