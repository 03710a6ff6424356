r"""Scheduled sampling (Bengio et al. 2015): train on the model's own predictions.

Teacher forcing (the default everywhere: the log-likelihood of the observed targets)
feeds the observed y_t to the update. Scheduled sampling feeds, with probability p at
each step, a draw :math:`\tilde y_t \sim p(y_t \mid h_t)` instead (no gradient through
the draw), and still scores the observed y_t:

.. math::  \mathcal{L} = \sum_t \log p(y_t \mid h_t), \quad
           h_{t+1} = f(h_t, c_t \tilde y_t + (1 - c_t) y_t, u_t), \quad
           c_t \sim \mathrm{Bernoulli}(p)

:func:`scheduled_log_probs` is the pure function (explicit key), for user-written
loops. :class:`ScheduledSampling` wraps any model for ``fit_sgd``: the same
parameters, with this loss as its training loss. In training (fit_sgd,
:func:`probseq.sgd_update`) the draws come from the key the fitting state splits at
every optimizer step (a fit is reproducible from its ``key=`` and resumes
bit-identically); ``sgd_init`` without a key is refused. Scored directly (log_prob,
step_log_probs) the draws are seeded by ``seed`` folded with a checksum of the
parameters. With ``probability=0`` it is the wrapped model exactly (the same code runs,
and the key reaches the wrapped model's own training loss). Score and decode with the
wrapped model.

Example:
    >>> train = probseq.ScheduledSampling(model, probability=0.25)  # doctest: +SKIP
    >>> fit = probseq.fit_sgd(train, params, y, source=x, ...)      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from probseq.core import SequenceModel

__all__ = ["ScheduledSampling", "scheduled_log_probs"]


def scheduled_log_probs(model, params, key, state, xs, us=None, probability=0.0):
    """Per-step log p(x_t | h_t) (T,) and the states after each step, feeding the
    update a draw from the model with probability ``probability`` at each step."""

    def step(h, inp):
        x, u, k = inp
        d = model.emission(params, h, u)
        lp = d.log_prob(x)
        k_coin, k_draw = jax.random.split(k)
        draw = jax.lax.stop_gradient(d.sample(k_draw)).astype(x.dtype)
        fed = jnp.where(jax.random.bernoulli(k_coin, probability), draw, x)
        h = model.update(params, h, fed, u)
        return h, (lp, h)

    keys = jax.random.split(key, xs.shape[0])
    _, (lps, after) = jax.lax.scan(step, state, (xs, us, keys))
    return lps, after


@dataclasses.dataclass(frozen=True)
class ScheduledSampling(SequenceModel):
    """``model`` trained with scheduled sampling at rate ``probability`` (see module).

    Args:
        model: any probseq model (e.g. a :class:`probseq.Seq2Seq`).
        probability: p in [0, 1], the chance of feeding the model's own draw.
        seed: seeds the draws when scored directly (folded with a checksum of the
            parameters); training draws from the fitting state's key.
    """

    model: SequenceModel
    probability: float
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.model, SequenceModel):
            raise ValueError(f"model must be a probseq model; got {type(self.model).__name__}.")
        p = self.probability
        if not isinstance(p, int | float) or not math.isfinite(p) or not 0 <= p <= 1:
            raise ValueError(f"probability must be a number in [0, 1]; got probability={p!r}.")
        object.__setattr__(self, "probability", float(p))
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int; got seed={self.seed!r}.")

    @property
    def head(self):
        return self.model.head

    @property
    def input_dim(self):
        return self.model.input_dim

    @property
    def takes_source(self):
        return self.model.takes_source

    def init(self, key, *, dtype=None):
        return self.model.init(key, dtype=dtype)

    def initial_state(self, params):
        return self.model.initial_state(params)

    def prepare_source(self, source, source_mask, target_mask):
        return self.model.prepare_source(source, source_mask, target_mask)

    def source_state(self, params, source, source_mask):
        return self.model.source_state(params, source, source_mask)

    def emission(self, params, state, u=None):
        return self.model.emission(params, state, u)

    def update(self, params, state, x, u=None):
        return self.model.update(params, state, x, u)

    def _key(self, params):
        total = sum(jnp.sum(a.astype(jnp.float32)) for a in jax.tree.leaves(params))
        bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(total), jnp.uint32)
        return jax.random.fold_in(jax.random.key(self.seed), bits)

    def batch_sequence_log_probs(self, params, states, xs, us=None):
        if self.probability == 0.0:
            return self.model.batch_sequence_log_probs(params, states, xs, us)
        return self._scheduled(params, states, xs, us, self._key(params))

    def training_log_probs(self, params, states, xs, us=None, *, key):
        if self.probability == 0.0:
            return self.model.training_log_probs(params, states, xs, us, key=key)
        if key is None:
            raise ValueError(
                "ScheduledSampling draws the fed tokens from the training key: give "
                "sgd_init(..., key=jax.random.key(seed)) (fit_sgd passes its own)."
            )
        return self._scheduled(params, states, xs, us, key)

    def _scheduled(self, params, states, xs, us, key):
        if states is None:
            states = jax.tree.map(
                lambda a: jnp.broadcast_to(a, (xs.shape[0],) + a.shape),
                self.model.initial_state(params),
            )
        keys = jax.random.split(key, xs.shape[0])
        return jax.vmap(
            lambda k, h, x, u: scheduled_log_probs(self.model, params, k, h, x, u, self.probability)
        )(keys, states, xs, us)

    def sequence_log_probs(self, params, state, xs, us=None):
        if self.probability == 0.0:
            return self.model.sequence_log_probs(params, state, xs, us)
        key = self._key(params)
        return scheduled_log_probs(self.model, params, key, state, xs, us, self.probability)
