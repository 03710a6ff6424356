r"""Expectation-maximisation for hidden Markov models, with autodiff expected statistics.

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

Example:
    >>> import jax, probseq
    >>> hmm = probseq.CategoricalHMM(3, 6)
    >>> params = hmm.init(jax.random.key(0))
    >>> x = probseq.sample(hmm, params, jax.random.key(1), 100, num_samples=5)
    >>> fit = probseq.fit_em(hmm, params, x, num_iters=20)
    >>> bool((jax.numpy.diff(fit.history["log_likelihood"]) >= -1e-3).all())
    True
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from probseq import sharding, validation
from probseq.auto import choose_smoother, estep_groups
from probseq.core import as_batch
from probseq.families.hmm import HMM, HMMParams
from probseq.families.lds import LDS
from probseq.fit.result import FitHistory, FitResult
from probseq.heads import Head
from probseq.hmm_inference import (
    ChunkLayout,
    chunked_statistics,
    hmm_filter,
    hmm_smoother_from_likelihoods,
)
from probseq.scan import EXACT, pairwise_sum
from probseq.validation import check_key

__all__ = ["DirichletPrior", "HMMStatistics", "expected_statistics", "em_step", "fit_em"]


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


def _log_marginal(log_pi, log_a, log_likelihoods, mask):
    """Total masked log p(x) of a batch, multilinear in exp(log pi), exp(log A)."""

    def one(ll, m):
        res = hmm_filter(jnp.exp(log_pi), jnp.exp(log_a), ll)
        return pairwise_sum(jnp.where(m, res.log_normalizers, 0.0))

    return jnp.sum(jax.vmap(one)(log_likelihoods, mask))


def _log_marginal_inputs(log_pi, log_a, log_likelihoods, mask):
    """:func:`_log_marginal` with a transition matrix per step, log_a (B, T, K, K)."""

    def one(la, ll, m):
        res = hmm_filter(jnp.exp(log_pi), jnp.exp(la), ll)
        return pairwise_sum(jnp.where(m, res.log_normalizers, 0.0))

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
            log_pi, log_a, ll, mask
        )
        return _paired(HMMStatistics(value, n_init, xi, gamma), x, paired)
    log_a = jax.nn.log_softmax(params.transition_logits, axis=-1)
    estep = _resolve_estep(estep, x.shape[0], x.shape[1], model.num_states)
    if estep == "autodiff":
        ll = jax.vmap(lambda xs: model.emission_log_likelihoods(params, xs))(x)
        value, (n_init, n_trans, gamma) = jax.value_and_grad(_log_marginal, argnums=(0, 1, 2))(
            log_pi, log_a, ll, mask
        )
        return _paired(HMMStatistics(value, n_init, n_trans, gamma), x, paired)
    pi, a = jnp.exp(log_pi), jnp.exp(log_a)
    if paired and estep == "chunked":
        value, n_init, n_trans, gamma, flat_x = _chunked_in_groups(model, params, x, mask, pi, a)
        return HMMStatistics(pairwise_sum(value), n_init, n_trans, gamma), flat_x
    lik, shift = jax.vmap(lambda xs: model.emission_likelihoods(params, xs, pi, a))(x)
    post = hmm_smoother_from_likelihoods(pi, a, lik, shift, mask, method=estep)
    stats = HMMStatistics(
        pairwise_sum(post.marginal_loglik),
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


@functools.partial(jax.jit, static_argnums=(0, 4))
def _expected_statistics(model, params, x, mask, estep, inputs):
    return _statistics(model, params, x, mask, estep, inputs)


def expected_statistics(
    model: HMM, params: HMMParams, data, mask=None, *, estep: str = "auto", inputs=None
) -> HMMStatistics:
    """The E-step alone: expected sufficient statistics of ``data`` under ``params``.

    Args:
        model: a :class:`probseq.HMM` (CategoricalHMM, GaussianHMM, ...).
        params: its parameters.
        data: one sequence, a batch, or a list of ragged sequences (as ``log_prob``).
        mask: optional (B, T) prefix mask.
        estep: "autodiff" (gradient of log p(x) through the forward filter),
            "forward_backward" (the classic smoother), "chunked" (the same smoother
            with time cut into chunks run in parallel and fixed up until exact,
            :func:`probseq.hmm_inference.hmm_smoother_chunked`), or "auto" (the
            faster by size: "chunked" for K <= 64 and T >= 128).
    """
    _check_hmm(model)
    _check_estep(estep)
    _check_inputs_fit(model, estep, None)
    batch = as_batch(model, params, data, mask, inputs, name="data")
    return _expected_statistics(model, params, batch.x, batch.mask, estep, batch.inputs)


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
    stats, flat_x = _statistics(model, params, x, mask, estep, inputs, paired=True)
    weights = stats.posteriors
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
        emission=model.head.m_step(weights, flat_x, params.emission, prior.emission),
        input_weights=input_weights,
    )
    return new, stats.log_likelihood, _log_prior(params, prior)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _em_restarts(model, params, x, mask, prior, done, estep, inputs=None):
    """One iteration for a stack of restarts (leading axis R); finished ones stay put."""
    update = functools.partial(
        _em_update, model, x=x, mask=mask, prior=prior, estep=estep, inputs=inputs
    )
    if done.shape[0] == 1:
        # One start (the usual case): no batching, so the chunked E-step's while loops
        # stay unbatched (a batched while loop selects over its whole carry every step).
        new, loglik, logprior = jax.tree.map(lambda a: jnp.asarray(a)[None], update(_first(params)))
    elif _resolve_estep(estep, x.shape[0], x.shape[1], model.num_states) == "chunked":
        new, loglik, logprior = jax.lax.map(update, params)
    else:
        new, loglik, logprior = jax.vmap(update)(params)
    keep = lambda old, upd: jnp.where(done.reshape((-1,) + (1,) * (upd.ndim - 1)), old, upd)  # noqa: E731
    return jax.tree.map(keep, params, new), loglik, logprior


_em_update_jit = jax.jit(_em_update, static_argnums=(0, 5))


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


def em_step(
    model: HMM,
    params: HMMParams,
    data,
    *,
    mask=None,
    inputs=None,
    prior=None,
    estep: str = "auto",
    mesh=None,
) -> tuple[HMMParams, jax.Array]:
    """One EM iteration, for a user-written loop (the step :func:`fit_em` repeats).

    Args:
        model, params: an HMM with a closed-form M-step and its current parameters.
        data, mask, inputs: as for :func:`fit_em`.
        prior: None or a :class:`DirichletPrior` / dict (MAP).
        estep: as for :func:`fit_em`.
        mesh: a ``jax.sharding.Mesh`` to split the sequences over.

    Returns:
        (new params, log p(data | params) under the parameters given): the
        log-likelihood of ``params``, not of the new ones, as hmmlearn's monitor
        reports it; it never decreases from one call to the next.

    Example:
        >>> hmm = probseq.CategoricalHMM(2, 3); params = hmm.init(jax.random.key(0))
        >>> for _ in range(5):
        ...     params, log_likelihood = probseq.em_step(hmm, params, jnp.array([[0, 1, 2, 2]]))
    """
    _check_hmm(model)
    _check_estep(estep)
    mesh = sharding.check_mesh(mesh)
    batch = as_batch(model, params, data, mask, inputs, name="data")
    prior = _prior(model, prior, params.initial_logits.dtype)
    _check_inputs_fit(model, estep, prior)
    x, x_mask, u = batch.x, batch.mask, batch.inputs
    if mesh is not None:
        x, x_mask, u = sharding.shard_batch(mesh, x, x_mask, u)
        params, prior = sharding.replicate(mesh, (params, prior))
    new, log_likelihood, _ = _em_update_jit(model, params, x, x_mask, prior, estep, u)
    return new, log_likelihood


def _first(tree):
    return jax.tree.map(lambda a: a[0], tree)


#: EM iterations per compiled call: the host checks progress (and updates the bar)
#: between calls, not between iterations, so an iteration costs no host round trip.
ITERS_PER_CALL = 8


@functools.partial(jax.jit, static_argnums=(0, 5))
def _em_iterations(model, params, x, mask, prior, estep, state, num_active, tol, inputs=None):
    """Up to ITERS_PER_CALL iterations on the device, stopping (the rest are no-ops)
    after ``num_active`` or once every restart has converged.

    state: (done (R,) bool, prev objective (R,), has_prev () bool) carried across calls.
    Returns the new params and state and, per iteration, (log-likelihood (R,),
    objective (R,), ran () bool)."""

    def iteration(carry, i):
        params, (done, prev, has_prev) = carry
        ran = (i < num_active) & ~jnp.all(done)

        def run(params):
            new, loglik, logprior = _em_restarts(model, params, x, mask, prior, done, estep, inputs)
            objective = loglik + logprior
            converged = has_prev & (jnp.abs(objective - prev) <= tol * jnp.abs(prev))
            return new, (done | converged, objective, jnp.ones((), bool)), loglik

        def skip(params):
            return params, (done, prev, has_prev), jnp.zeros_like(prev)

        new, new_state, loglik = jax.lax.cond(ran, run, skip, params)
        return (new, new_state), (loglik, new_state[1], ran)

    (params, state), out = jax.lax.scan(iteration, (params, state), jnp.arange(ITERS_PER_CALL))
    return params, state, out


def _check_hmm(model):
    if not isinstance(model, HMM):
        raise ValueError(
            f"fit_em fits hidden Markov models (probseq.CategoricalHMM, GaussianHMM, HMM); "
            f"got {model!r}. Use probseq.fit_sgd for other models."
        )
    if type(model.head).m_step is Head.m_step:
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


def fit_em(
    model: HMM,
    params: HMMParams,
    data,
    *,
    mask=None,
    inputs=None,
    num_iters: int = 100,
    tol: float = 1e-4,
    prior=None,
    num_restarts: int = 1,
    key: jax.Array | None = None,
    estep: str = "auto",
    progress: bool = False,
    mesh=None,
    initial: str | None = None,
) -> FitResult:
    """Fit an HMM by expectation-maximisation.

    Each iteration computes the expected statistics of all sequences under the current
    parameters (one compiled E-step + M-step, batched over sequences and restarts) and
    sets the parameters to their closed-form maximiser. Without a prior the
    log-likelihood never decreases; with one, the log posterior never decreases.

    Args:
        model: a :class:`probseq.HMM` whose head has a closed-form M-step
            (CategoricalHMM, GaussianHMM, or an HMM with a Poisson/Bernoulli head), or
            a :class:`probseq.LDS` (then this is :func:`probseq.fit_lds_em`: closed-form
            M-step, autodiff E-step; ``prior``, ``num_restarts``, ``estep`` and ``mesh``
            are HMM-only).
        params: starting parameters (restart 0).
        data: one sequence, a batch (with ``mask``), or a list of ragged sequences.
        mask: optional (B, T) prefix mask of valid steps.
        inputs: per-step inputs u_t (B, T, m) of an input-driven HMM (``input_dim=m``),
            None otherwise. Such a model is fitted by generalised EM: the autodiff
            E-step gives each step's expected transitions, the initial and emission
            M-steps are closed form, and the transition logits and input weights take
            ``TRANSITION_STEPS`` L-BFGS steps on the expected complete-data
            log-likelihood, kept only if it did not decrease (so neither does the
            log-likelihood).
        num_iters: maximum number of iterations (M-steps).
        tol: stop when the objective improves by less than ``tol`` relative to its
            magnitude, ``|f_i - f_{i-1}| <= tol * |f_{i-1}|``.
        prior: None (maximum likelihood), or a :class:`DirichletPrior` / dict with
            keys ``initial``, ``transition``, ``emission`` of Dirichlet concentrations
            (MAP estimation).
        num_restarts: run this many fits at once (vectorised): ``params`` and
            ``num_restarts - 1`` random draws of ``model.init``; keep the best.
        key: PRNG key for the random restarts (required when num_restarts > 1).
        estep: how expected statistics are computed: "autodiff" (jax.grad of log p(x)
            through the forward filter), "forward_backward" (the smoother kernel),
            "chunked" (the smoother over time chunks in parallel, fixed up until exact;
            :func:`probseq.hmm_inference.hmm_smoother_chunked`), or "auto" (the faster
            by size: "chunked" for K <= 64 and T >= 128, else "forward_backward"); all
            agree to rounding, see the tests.
        progress: show a tqdm progress bar.
        mesh: a ``jax.sharding.Mesh``: split the sequences over its devices
            (parameters replicated; expected statistics summed across devices by XLA).
            The same fit as on one device (:mod:`probseq.sharding`).
        initial: LDS only: how its initial distribution is fitted (``initial=`` of
            :func:`probseq.fit_lds_em`; None: its default, "stationary").

    Returns:
        :class:`FitResult` with the fitted params; its :class:`FitHistory` has one entry
        per iteration: ``history["log_likelihood"]`` holds log p(x | params) before
        each M-step (as hmmlearn's monitor does; total over the data),
        ``log_likelihood_per_token`` the same over the observed steps, and
        ``objective`` adds the log prior (no validation, times: NaN); ``info`` has the
        iterations run, whether the fit converged, and every restart's final objective.
    """
    if isinstance(model, LDS):
        return _fit_lds(model, params, data, mask, inputs, num_iters, tol, prior,
                        num_restarts, estep, progress, mesh, initial)  # fmt: skip
    if initial is not None:
        raise ValueError(
            "initial= is a setting of an LDS's EM (probseq.fit_lds_em); an HMM's initial "
            f"probabilities are always learned; got {initial=}."
        )
    _check_hmm(model)
    _check_estep(estep)
    num_iters = validation.check_int("num_iters", num_iters)
    tol = validation.check_nonnegative_float("tol", tol)
    num_restarts = validation.check_int("num_restarts", num_restarts)
    if num_restarts > 1:
        if key is None:
            raise ValueError("num_restarts > 1 draws random starting points: pass key=.")
        check_key(key)
    mesh = sharding.check_mesh(mesh)
    batch = as_batch(model, params, data, mask, inputs, name="data")
    dtype = params.initial_logits.dtype
    prior = _prior(model, prior, dtype)
    _check_inputs_fit(model, estep, prior)

    starts = [params] + [
        model.init(jax.random.fold_in(key, r), dtype=dtype) for r in range(1, num_restarts)
    ]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *starts)
    state = (  # done, previous objective, whether there is one
        jnp.zeros((num_restarts,), bool),
        jnp.zeros((num_restarts,), dtype),
        jnp.zeros((), bool),
    )
    x, x_mask, u = batch.x, batch.mask, batch.inputs
    if mesh is not None:
        x, x_mask, u = sharding.shard_batch(mesh, x, x_mask, u)
        stacked, state, prior = sharding.replicate(mesh, (stacked, state, prior))
    loglik_hist, objective_hist = [], []
    bar = _progress_bar(num_iters, progress)
    while len(loglik_hist) < num_iters:
        remaining = num_iters - len(loglik_hist)
        stacked, state, (loglik, objective, ran) = _em_iterations(
            model, stacked, x, x_mask, prior, estep, state, remaining, tol, u
        )
        ran = np.asarray(ran)
        loglik_hist.extend(np.asarray(loglik)[ran])
        objective_hist.extend(np.asarray(objective)[ran])
        if bar is not None:
            bar.update(int(ran.sum()))
            bar.set_postfix(log_likelihood=f"{loglik_hist[-1].max():.4f}")
        if not ran.all():  # every restart converged (or num_iters reached)
            break
    if bar is not None:
        bar.close()
    converged = np.asarray(state[0])

    loglik_hist = np.stack(loglik_hist)  # (iters, R)
    objective_hist = np.stack(objective_hist)
    # Iterations each restart ran: up to and including the one where it converged
    # (a converged restart is frozen, and its later rows only repeat it).
    ran = np.full(num_restarts, len(loglik_hist))
    for r in np.flatnonzero(converged):
        prev, cur = objective_hist[:-1, r], objective_hist[1:, r]
        hits = np.flatnonzero(np.abs(cur - prev) <= tol * np.abs(prev))
        ran[r] = int(hits[0]) + 2 if hits.size else len(loglik_hist)
    finals = objective_hist[ran - 1, np.arange(num_restarts)]
    best = int(np.argmax(np.where(np.isfinite(finals), finals, -np.inf)))
    best_params = jax.tree.map(lambda a: a[best], stacked)
    num_tokens = int(jnp.sum(x_mask))  # every process's, with a multi-process mesh
    history = FitHistory.from_totals(
        "fit_em",
        log_likelihood=loglik_hist[: ran[best], best],
        num_tokens=num_tokens,
        objective=objective_hist[: ran[best], best],
        num_steps=np.arange(ran[best]),
    )
    info = {
        "num_iters": int(ran[best]),
        "converged": bool(converged[best]),
        "best_restart": best,
        "restart_objectives": finals,
        "num_tokens": num_tokens,
    }
    return FitResult(best_params, history, info)


def _fit_lds(model, params, data, mask, inputs, num_iters, tol, prior, restarts, estep, progress,
             mesh, initial):  # fmt: skip
    """fit_em of a linear-Gaussian state-space model: :func:`probseq.fit_lds_em` (the
    HMM-only settings refused by name)."""
    from probseq.fit.lds_em import fit_lds_em

    for name, value, default in (
        ("prior", prior, None), ("num_restarts", restarts, 1), ("estep", estep, "auto"),
        ("mesh", mesh, None),
    ):  # fmt: skip
        if value is not default and value != default:
            raise ValueError(
                f"fit_em of {model!r} (a linear-Gaussian state-space model, by "
                f"probseq.fit_lds_em) takes no {name}=; got {name}={value!r}."
            )
    extra = {} if initial is None else {"initial": initial}
    return fit_lds_em(
        model, params, data, mask=mask, inputs=inputs, num_iters=num_iters, tol=tol,
        progress=progress, **extra,
    )  # fmt: skip


def _progress_bar(total, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="EM", unit="iter")
