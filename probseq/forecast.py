r"""Forecasting: condition on a history, then sample what comes next.

Written once over the model contract, for every family: the history is filtered
through the model (``probseq.score``), which gives the state after its last step
(for an HMM, the filtered predictive distribution of the next hidden state), and
continuations are drawn by ancestral sampling from that state,

.. math::  x_{T+1:T+H} \sim p(x_{T+1:T+H} \mid x_{1:T}).

For real-valued series the result also holds the Monte Carlo mean and quantile
bands of the sample paths; for tokens, the exact next-step predictive distribution
p(x_{T+1} | x_{1:T}) over the vocabulary.

Example:
    >>> import jax, numpy as np, probseq
    >>> hmm = probseq.GaussianHMM(num_states=2, obs_dim=1)
    >>> params = hmm.init(jax.random.key(0))
    >>> history = np.sin(np.arange(50) / 5.0)[:, None]
    >>> fc = probseq.forecast(hmm, params, jax.random.key(1), history, 10, 200)
    >>> fc.samples.shape, fc.mean.shape, fc.quantiles.shape
    ((200, 10, 1), (10, 1), (5, 10, 1))
"""

from __future__ import annotations

import math
import statistics
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probseq import memory, validation
from probseq.core import SequenceModel, check_possible, sample, sample_bytes, score

__all__ = ["Forecast", "forecast", "DEFAULT_QUANTILES"]

DEFAULT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class Forecast(NamedTuple):
    """What :func:`forecast` returns. ``[B]`` is present when the history was a batch.

    samples: (num_samples, [B,] horizon, *event) sampled continuations.
    mean: ([B,] horizon, *event) mean of the sample paths (real-valued data), else None.
    quantiles: (Q, [B,] horizon, *event) per-step quantiles of the sample paths at
        ``quantile_levels`` (real-valued data), else None.
    quantile_levels: the Q levels, increasing.
    next_step_probs: ([B,] vocab_size) exact p(x_{T+1} = v | history) for token
        data, else None.
    history_log_prob: log p(history), () or (B,).
    final_state: the filtered state after the history (continue from it with
        ``initial_state=``).
    """

    samples: np.ndarray
    mean: np.ndarray | None
    quantiles: np.ndarray | None
    quantile_levels: tuple[float, ...]
    next_step_probs: np.ndarray | None
    history_log_prob: np.ndarray
    final_state: Any


def _check_levels(quantiles) -> tuple[float, ...]:
    try:
        if isinstance(quantiles, str):
            raise TypeError
        levels = tuple(float(q) for q in quantiles)
    except (TypeError, ValueError):
        raise ValueError(f"quantiles must be a sequence of numbers, got {quantiles!r}") from None
    if not levels or any(not (0.0 < q < 1.0) or not math.isfinite(q) for q in levels):
        raise ValueError(f"quantiles must be numbers strictly between 0 and 1, got {quantiles!r}")
    if list(levels) != sorted(set(levels)):
        raise ValueError(f"quantiles must be distinct and increasing, got {quantiles!r}")
    return levels


@jax.jit
def _token_probs(log_probs):
    return jnp.exp(log_probs - jax.scipy.special.logsumexp(log_probs, axis=-1, keepdims=True))


def _next_step_probs(model: SequenceModel, params, state, batched: bool) -> np.ndarray:
    values = jnp.arange(model.head.vocab_size)

    def one(h):
        return model.emission(params, h).log_prob(values)

    log_probs = jax.vmap(one)(state) if batched else one(state)
    return np.asarray(_token_probs(log_probs))


def _exact_bands(model, params, state, horizon, levels, batched, future_inputs):
    """Mean and per-coordinate quantiles of ``model.predict``'s Gaussian predictive."""

    def one(h, u):
        return model.predict(params, h, horizon, u)

    us = None if future_inputs is None else jnp.asarray(future_inputs)
    mean, cov = jax.vmap(one)(state, us) if batched else one(state, us)
    mean = np.asarray(mean, np.float64)
    sd = np.sqrt(np.diagonal(np.asarray(cov, np.float64), axis1=-2, axis2=-1))
    z = np.array([statistics.NormalDist().inv_cdf(q) for q in levels])
    return mean, mean[None] + z.reshape((-1,) + (1,) * mean.ndim) * sd[None]


def forecast(
    model: SequenceModel,
    params,
    key: jax.Array,
    history,
    horizon: int,
    num_samples: int = 100,
    *,
    mask=None,
    quantiles=DEFAULT_QUANTILES,
    temperature: float = 1.0,
    inputs=None,
    future_inputs=None,
) -> Forecast:
    """Condition on ``history`` (the filtered state) and sample ``horizon`` steps on.

    Args:
        model, params: any probseq model and its parameters.
        key: a PRNG key (``jax.random.key(seed)``).
        history: one sequence (T,) / (T, D), a batch (B, T[, D]) (with ``mask`` for
            ragged rows) or a list of unequal-length sequences: what is known so far.
        horizon: number of future steps to draw.
        num_samples: number of sample paths per history.
        mask: (B, T) prefix mask of the history batch.
        quantiles: levels of the per-step bands for real-valued data.
        temperature: sampling temperature (1 samples the model; 0 is greedy).
        inputs: conditioning inputs over the history (conditional models).
        future_inputs: conditioning inputs over the horizon (conditional models).

    Returns:
        A :class:`Forecast`. Real-valued bands are Monte Carlo estimates from the
        ``num_samples`` paths: their error shrinks as 1/sqrt(num_samples); a model with
        a closed-form predictive (``model.predict``: :class:`probseq.AR`,
        :class:`probseq.LDS`) gets the
        exact mean and Normal quantiles instead (temperature 1).
    """
    horizon = validation.check_int("horizon", horizon)
    num_samples = validation.check_int("num_samples", num_samples)
    levels = _check_levels(quantiles)
    res = score(model, params, history, mask, inputs=inputs)
    check_possible(res, "history")
    batched = np.ndim(res.log_prob) == 1
    paths = num_samples * (res.log_prob.shape[0] if batched else 1)
    needed = sample_bytes(model, params, paths, horizon)
    if not model.head.is_token:  # float64 copies for the mean and the quantile bands
        needed += 8 * paths * horizon * math.prod(model.head.event_shape) * 2
    memory.check_fits(needed, f"forecast(horizon={horizon}, num_samples={num_samples})")
    samples = sample(
        model,
        params,
        key,
        horizon,
        num_samples=num_samples,
        temperature=temperature,
        inputs=future_inputs,
        initial_state=res.final_state,
    )
    samples = np.asarray(samples)
    if model.head.is_token:
        mean = bands = None
        probs = _next_step_probs(model, params, res.final_state, batched)
    elif model.supports_predict and temperature == 1:
        # A closed-form predictive (probseq.AR, probseq.LDS): the exact mean and Normal bands.
        mean, bands = _exact_bands(model, params, res.final_state, horizon, levels, batched,
                                   future_inputs)  # fmt: skip
        probs = None
    else:
        mean = samples.mean(axis=0)
        bands = np.quantile(samples, levels, axis=0)
        probs = None
    return Forecast(
        samples=samples,
        mean=mean,
        quantiles=bands,
        quantile_levels=levels,
        next_step_probs=probs,
        history_log_prob=np.asarray(res.log_prob),
        final_state=res.final_state,
    )
