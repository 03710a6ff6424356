r"""Expectation-maximisation for every model that declares it, by one driver.

EM is a capability on the contract (:class:`probseq.core.SequenceModel`): a model
with ``supports_em`` has ``em_options`` (its settings, checked), ``em_start``,
``expected_statistics`` (the E-step: statistics and log p(x)) and ``m_step``
(closed form, or generalised: never decreasing the expected complete-data
log-likelihood), and optionally ``em_log_prior`` (MAP). The HMMs
(:mod:`probseq.families.hmm_em`: autodiff or smoother E-step, Dirichlet-MAP M-step)
and the LDS (:mod:`probseq.families.lds_em`) implement it next to their own code.

The fitter is the protocol every fitter follows: :func:`em_init` makes one pytree
state (:class:`EMState`: the parameters of every restart, convergence and failure
flags, the previous objective, iteration counts, the settings' arrays) and
:func:`em_update` is one iteration, pure; :func:`probseq.fit.driver.run` runs it in
compiled chunks of :data:`ITERS_PER_CALL` with the progress bar and checkpoints, so
a killed EM fit resumes from its ``checkpoint_dir`` with the same parameters as an
uninterrupted one. A restart whose M-step gives NaN (or +inf) parameters keeps its
last good ones and stops (``info["failed"]``).

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

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from probseq import sharding, validation
from probseq.core import EMOptions, SequenceModel, as_batch
from probseq.families.hmm import HMM, HMMParams
from probseq.families.hmm_em import (  # noqa: F401  (the HMM's EM kernels, by their old names)
    ESTEPS,
    TRANSITION_STEPS,
    DirichletPrior,
    HMMStatistics,
    _check_estep,
    _check_hmm,
    _check_inputs_fit,
    _em_update,
    _prior,
    _resolve_estep,
    _statistics,
)
from probseq.families.registry import POSITIVE_INT, Key, choice
from probseq.fit import driver
from probseq.fit.registry import FitterSpec, register
from probseq.fit.result import FitHistory, FitResult

__all__ = [
    "DirichletPrior",
    "HMMStatistics",
    "EMState",
    "em_init",
    "em_update",
    "expected_statistics",
    "em_step",
    "fit_em",
]

#: EM iterations per compiled call: the host checks progress (and updates the bar,
#: writes the checkpoint) between calls, not between iterations.
ITERS_PER_CALL = 8


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "converged", "failed", "previous", "has_previous", "iterations",
                 "tol", "constants", "start_metrics"],
    meta_fields=["model", "static", "restart_map"],
)  # fmt: skip
@dataclasses.dataclass(frozen=True)
class EMState:
    """Everything an EM fit carries (and a checkpoint stores), for R restarts at once.

    params: the model's parameters, each leaf with a leading restart axis (R, ...).
    converged, failed: (R,) bool: stopped by ``tol``, or by a non-finite M-step.
    previous: (R,) the last iteration's objective; has_previous: () bool.
    iterations: (R,) int32, iterations each restart ran (M-steps applied or tried).
    tol: () the relative tolerance; constants: the model's EM arrays (a prior, ...).
    start_metrics: what the model's ``em_start`` reported of each start (R,).
    model, static, restart_map: static: the model and its hashable EM settings.
    """

    params: Any
    converged: jax.Array
    failed: jax.Array
    previous: jax.Array
    has_previous: jax.Array
    iterations: jax.Array
    tol: jax.Array
    constants: Any
    start_metrics: dict
    model: Any
    static: Any
    restart_map: str

    @property
    def options(self) -> EMOptions:
        return EMOptions(self.static, self.constants, self.restart_map)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _start(model, params, data, static, restart_map, constants):
    return model.em_start(params, data, EMOptions(static, constants, restart_map))


def em_init(model, params, batch, *, tol=1e-4, num_restarts=1, key=None, **settings) -> EMState:
    """The state of an EM fit of ``batch`` (a :class:`probseq.validation.Batch`) from
    ``params`` and ``num_restarts - 1`` draws of ``model.init(fold_in(key, r))``.
    ``settings``: the model's own (prior, estep, initial, mesh; see ``em_options``)."""
    options = model.em_options(params, batch, num_restarts=num_restarts, **settings)
    dtype = jax.tree.leaves(params)[0].dtype
    starts = [params] + [
        model.init(jax.random.fold_in(key, r), dtype=dtype) for r in range(1, num_restarts)
    ]
    data = (batch.x, batch.mask, batch.inputs)
    starts = [_start(model, p, data, options.static, options.restart_map, options.constants)
              for p in starts]  # fmt: skip
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # noqa: E731
    no = jnp.zeros((num_restarts,), bool)
    return EMState(
        stack([p for p, _ in starts]), no, no,
        jnp.zeros((num_restarts,), dtype), jnp.zeros((), bool),
        jnp.zeros((num_restarts,), jnp.int32), jnp.asarray(tol, dtype), options.constants,
        stack([m for _, m in starts]), model, options.static, options.restart_map,
    )  # fmt: skip


def _all_finite(tree) -> jax.Array:
    """No NaN and no +inf in ``tree``: a failed M-step. (-inf is a log-probability of
    zero, e.g. a symbol a state never emits: valid.)"""
    ok = [jnp.all(~jnp.isnan(a) & (a != jnp.inf)) for a in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(ok))


def em_update(state: EMState, data) -> tuple[EMState, dict]:
    """One EM iteration of every restart still running (pure; ``data = (x, mask,
    inputs)``). Metrics, each (R,): ``log_likelihood`` and ``objective`` (plus the log
    prior) of the parameters before the M-step, ``ran``, and the model's own."""
    model, options = state.model, state.options

    def one(params):
        stats, log_likelihood = model.expected_statistics(params, data, options)
        new, metrics = model.m_step(params, stats, data, options)
        return new, log_likelihood, model.em_log_prior(params, options), metrics, _all_finite(new)

    stopped = state.converged | state.failed
    if stopped.shape[0] == 1:
        # One start (the usual case): no batching, so the chunked E-step's while loops
        # stay unbatched (a batched while loop selects over its whole carry every step).
        first = jax.tree.map(lambda a: a[0], state.params)
        out = jax.tree.map(lambda a: jnp.asarray(a)[None], one(first))
    elif state.restart_map == "map":
        out = jax.lax.map(one, state.params)
    else:
        out = jax.vmap(one)(state.params)
    new, log_likelihood, log_prior, metrics, finite = out
    keep_old = stopped | ~finite
    keep = lambda old, upd: jnp.where(keep_old.reshape((-1,) + (1,) * (upd.ndim - 1)), old, upd)  # noqa: E731
    objective = log_likelihood + log_prior
    close = jnp.abs(objective - state.previous) <= state.tol * jnp.abs(state.previous)
    new_state = dataclasses.replace(
        state,
        params=jax.tree.map(keep, state.params, new),
        converged=state.converged | (~stopped & finite & state.has_previous & close),
        failed=state.failed | (~stopped & ~finite),
        previous=objective,
        has_previous=jnp.ones((), bool),
        iterations=state.iterations + (~stopped).astype(jnp.int32),
    )
    return new_state, {"log_likelihood": log_likelihood, "objective": objective,
                       "ran": ~stopped, **metrics}  # fmt: skip


def _em_done(state: EMState) -> jax.Array:
    return jnp.all(state.converged | state.failed)


_em_update_jit = jax.jit(em_update)


def _settings(prior, estep, initial, mesh) -> dict:
    """The model-specific settings given (their defaults left out, so a model refuses
    only what was asked of it)."""
    given = {"prior": prior, "estep": estep, "initial": initial, "mesh": mesh}
    defaults = {"prior": None, "estep": "auto", "initial": None, "mesh": None}
    return {k: v for k, v in given.items() if v is not defaults[k]}


def _check_em(model):
    if not (isinstance(model, SequenceModel) and model.supports_em):
        if isinstance(model, HMM):
            _check_hmm(model)  # says why this HMM has none
        raise ValueError(
            "fit_em fits hidden Markov models (probseq.CategoricalHMM, GaussianHMM, HMM) "
            f"and linear-Gaussian state-space models (probseq.LDS); got {model!r}. Use "
            "probseq.fit_sgd for other models."
        )


def _prepare(model, params, data, mask, inputs, num_iters, tol, num_restarts, key, mesh):
    _check_em(model)
    validation.check_int("num_iters", num_iters)
    validation.check_nonnegative_float("tol", tol)
    validation.check_int("num_restarts", num_restarts)
    if num_restarts > 1:
        if key is None:
            raise ValueError("num_restarts > 1 draws random starting points: pass key=.")
        validation.check_key(key)
    return sharding.check_mesh(mesh), as_batch(model, params, data, mask, inputs, name="data")


def _fingerprint(model, batch, state: EMState, key) -> dict:
    """What a checkpoint must equal to be resumed: model, data, settings, starts."""
    from probseq.fit.sgd import _digest, _key_data  # as fit_sgd's checkpoints

    leaves = jax.tree.leaves((state.params, state.constants, state.tol))
    return {"fitter": "fit_em", "model": repr(model), "settings": repr(state.static),
            "data": {"shape": list(np.shape(batch.x)),
                     "sha256": _digest(batch.x, batch.mask, batch.inputs)},
            "start": _digest(*[np.asarray(a) for a in leaves]),
            "key": None if key is None else _key_data(key)}  # fmt: skip


def fit_em(
    model,
    params,
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
    checkpoint_dir=None,
) -> FitResult:
    """Fit a model that declares EM (HMMs, the LDS) by expectation-maximisation.

    Each iteration computes the expected statistics of all sequences under the current
    parameters and applies the model's M-step (one compiled step, batched over
    restarts; :data:`ITERS_PER_CALL` per call). Without a prior the log-likelihood
    never decreases; with one, the log posterior never decreases.

    Args:
        model: a model with ``supports_em``: :class:`probseq.HMM` whose head has a
            closed-form M-step (CategoricalHMM, GaussianHMM, Poisson/Bernoulli heads;
            an input-driven HMM by generalised EM: the transition logits and input
            weights take ``TRANSITION_STEPS`` L-BFGS steps on the expected
            complete-data log-likelihood, kept only if it did not decrease), or a
            :class:`probseq.LDS` (closed-form M-step; ``initial`` applies, and
            ``prior``, ``num_restarts``, ``estep`` and ``mesh`` are refused).
        params: starting parameters (restart 0).
        data, mask, inputs: one sequence, a batch (with a (B, T) prefix ``mask``) or a
            list of ragged sequences; ``inputs`` u_t (B, T, m) of an input-driven model.
        num_iters: maximum number of iterations (M-steps).
        tol: stop when the objective improves by less than ``tol`` relative to its
            magnitude, ``|f_i - f_{i-1}| <= tol * |f_{i-1}|``.
        prior: HMM: None (maximum likelihood), or a :class:`DirichletPrior` / dict
            with keys ``initial``, ``transition``, ``emission`` (MAP).
        num_restarts: run this many fits at once: ``params`` and ``num_restarts - 1``
            draws of ``model.init(fold_in(key, r))``; keep the best.
        key: PRNG key for the random restarts (required when num_restarts > 1).
        estep: HMM: "autodiff", "forward_backward", "chunked" or "auto" (by size;
            :mod:`probseq.families.hmm_em`); all agree to rounding, see the tests.
        progress: show a tqdm progress bar.
        mesh: a ``jax.sharding.Mesh``: split the sequences over its devices
            (parameters replicated; statistics summed across devices by XLA).
        initial: LDS only: ``initial=`` of :func:`probseq.fit_lds_em`.
        checkpoint_dir: write the fit's state there after every call; a later call
            with the same model, data and settings resumes from it (a fit killed at
            any point ends with the parameters of an uninterrupted one).

    Returns:
        :class:`FitResult` with the best restart's params; its :class:`FitHistory`
        has one entry per iteration: ``log_likelihood`` is log p(x | params) before
        each M-step (as hmmlearn's monitor reports it; total over the data),
        ``objective`` adds the log prior (the history's times are NaN, as documented
        by FitHistory); ``info``: ``method``, ``num_iters``, ``converged``, ``failed``,
        ``best_restart``, ``restart_objectives``, ``num_tokens``, ``time_s`` (each
        iteration's seconds of work, measured after it finished), ``compile_time_s``,
        ``resumed_from_step``, ``checkpoint`` and the model's own (``em_info``).
    """
    mesh, batch = _prepare(model, params, data, mask, inputs, num_iters, tol, num_restarts,
                           key, mesh)  # fmt: skip
    state = em_init(model, params, batch, tol=tol, num_restarts=num_restarts, key=key,
                    **_settings(prior, estep, initial, mesh))  # fmt: skip
    arrays = (batch.x, batch.mask, batch.inputs)
    if mesh is not None:
        arrays = tuple(sharding.shard_batch(mesh, *arrays))
        state = sharding.replicate(mesh, state)
    fingerprint = None if checkpoint_dir is None else _fingerprint(model, batch, state, key)
    out = driver.run(
        em_update, _em_done, state, arrays, num_steps=num_iters, steps_per_call=ITERS_PER_CALL,
        name="_em_iterations", progress=progress, desc="EM",
        postfix=lambda rows: {"log_likelihood": f"{np.max(rows['log_likelihood'][-1]):.4f}"},
        checkpoint_dir=checkpoint_dir, fingerprint=fingerprint,
    )  # fmt: skip
    # every process's tokens: the sharded mask is the global array on a multi-process mesh
    num_tokens = int(jnp.sum(arrays[1]))
    return _result(model, batch, out, checkpoint_dir, num_tokens)


def _result(model, batch, out: driver.RunResult, checkpoint_dir, num_tokens) -> FitResult:
    st, rows = out.state, out.metrics
    ran = np.asarray(st.iterations)
    objective = np.asarray(rows["objective"]).reshape(-1, ran.shape[0])
    finals = objective[np.maximum(ran - 1, 0), np.arange(ran.shape[0])]
    best = int(np.argmax(np.where(np.isfinite(finals) & (ran > 0), finals, -np.inf)))
    n = int(ran[best])
    history = FitHistory.from_totals(
        "fit_em",
        log_likelihood=np.asarray(rows["log_likelihood"]).reshape(objective.shape)[:n, best],
        num_tokens=num_tokens,
        objective=objective[:n, best],
        num_steps=np.arange(n),
    )
    pick = lambda tree: jax.tree.map(lambda a: np.asarray(a)[best], tree)  # noqa: E731
    model_rows = {k: np.asarray(v)[:n, best] for k, v in rows.items()
                  if k not in ("log_likelihood", "objective", "ran")}  # fmt: skip
    info = {
        "method": "em",
        "num_iters": n,
        "converged": bool(st.converged[best]),
        "failed": bool(st.failed[best]),
        "best_restart": best,
        "restart_objectives": finals,
        "num_tokens": num_tokens,
        "time_s": out.step_time_s[:n],
        "compile_time_s": out.compile_time_s,
        "resumed_from_step": out.resumed_from,
        "checkpoint": None if checkpoint_dir is None else f"{checkpoint_dir}/checkpoint.npz",
        **model.em_info(st.options, pick(st.start_metrics), model_rows),
    }
    return FitResult(jax.tree.map(lambda a: a[best], st.params), history, info)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _expected_statistics(model, params, x, mask, estep, inputs):
    return _statistics(model, params, x, mask, estep, inputs)


def expected_statistics(
    model: HMM, params: HMMParams, data, mask=None, *, estep: str = "auto", inputs=None
) -> HMMStatistics:
    """The HMM's E-step alone: expected sufficient statistics of ``data`` under ``params``.

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


def em_step(model, params, data, *, mask=None, inputs=None, prior=None, estep: str = "auto",
            mesh=None, initial=None) -> tuple[Any, jax.Array]:  # fmt: skip
    """One EM iteration, for a user-written loop: the :func:`em_update` fit_em repeats.

    Args:
        model, params: a model that declares EM and its current parameters.
        data, mask, inputs, prior, estep, mesh, initial: as for :func:`fit_em`.

    Returns:
        (new params, log p(data | params) under the parameters given): the
        log-likelihood of ``params``, not of the new ones, as hmmlearn's monitor
        reports it; it never decreases from one call to the next.

    Example:
        >>> import jax, jax.numpy as jnp, probseq
        >>> hmm = probseq.CategoricalHMM(2, 3); params = hmm.init(jax.random.key(0))
        >>> for _ in range(5):
        ...     params, log_likelihood = probseq.em_step(hmm, params, jnp.array([[0, 1, 2, 2]]))
    """
    mesh, batch = _prepare(model, params, data, mask, inputs, 1, 0.0, 1, None, mesh)
    state = em_init(model, params, batch, **_settings(prior, estep, initial, mesh))
    arrays = (batch.x, batch.mask, batch.inputs)
    if mesh is not None:
        arrays = tuple(sharding.shard_batch(mesh, *arrays))
        state = sharding.replicate(mesh, state)
    new, metrics = _em_update_jit(state, arrays)
    return jax.tree.map(lambda a: a[0], new.params), metrics["log_likelihood"][0]


def _fit_from_spec(spec, model, params, train, valid, *, progress, checkpoint_dir, mesh):
    """A spec's ``[fit] method = "em"``: its keys (and the family's own, e.g. an LDS's
    ``initial``) as fit_em's keywords; ``prior`` (a Dirichlet concentration) for the
    initial and transition probabilities, and a categorical head's emissions; restarts'
    key from the spec's seed. ``valid`` is not used (EM has no early stopping)."""
    settings = {k: v for k, v in spec.fit.items() if k != "method"}
    prior = settings.pop("prior", None)
    if prior is not None:
        groups = ("initial", "transition") + (
            ("emission",) if spec.model.get("head") == "categorical" else ()
        )
        prior = dict.fromkeys(groups, prior)
    key = jax.random.fold_in(jax.random.key(spec.seed), 1)
    return fit_em(
        model, params, train.x, mask=train.mask, prior=prior, key=key,
        progress=progress, mesh=mesh, checkpoint_dir=checkpoint_dir, **settings,
    )  # fmt: skip


SPEC = register(
    FitterSpec(
        name="em",
        function="fit_em",
        keys={
            "num_iters": POSITIVE_INT,
            "tol": Key((int, float), lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
            "num_restarts": POSITIVE_INT,
            "prior": Key((int, float), lambda v: math.isfinite(v) and v >= 1, "a number >= 1"),
            "estep": choice(*ESTEPS),
        },
        defaults={"num_iters": 100},
        fit=_fit_from_spec,
    )
)
