r"""Any probseq model as a numpyro distribution over whole sequences.

:class:`SequenceDistribution` wraps ``(model, params)`` as a
:class:`numpyro.distributions.Distribution` whose event is one whole sequence,

.. math::  \log p(x_{1:T}) = \sum_{t \le T,\ \mathrm{mask}_t} \log p(x_t \mid h_t),

so priors on the parameters and NUTS, SVI or ``Predictive`` work for every family:
an HMM's exact marginal likelihood (the forward algorithm) and an RNN's
log-likelihood are the same scan. ``log_prob`` is the pure kernel
:func:`probseq.core.batch_step_log_probs` (no eager checks: ``params`` are traced
under NUTS); ``sample`` is the same ancestral sampler as :func:`probseq.sample`.

Shapes follow numpyro's contract ``sample_shape + batch_shape + event_shape``:
event_shape is ``(T,) + head event shape`` (``(T,)`` for tokens, ``(T, D)`` for
vectors) and batch_shape is the leading shape of ``mask`` ((B,) for a (B, T) mask
of ragged sequences), or () without a mask.

Example:
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, probseq
    >>> from probseq.distribution import SequenceDistribution
    >>> hmm = probseq.CategoricalHMM(num_states=2, vocab_size=3)
    >>> def bayesian_hmm(x, mask):
    ...     pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(2)))
    ...     a = numpyro.sample("A", dist.Dirichlet(jnp.ones((2, 2))).to_event(1))
    ...     b = numpyro.sample("B", dist.Dirichlet(jnp.ones((2, 3))).to_event(1))
    ...     params = probseq.HMMParams(jnp.log(pi), jnp.log(a), {"logits": jnp.log(b)})
    ...     numpyro.sample("x", SequenceDistribution(hmm, params, mask=mask), obs=x)
    >>> d = SequenceDistribution(hmm, hmm.init(jax.random.key(0)), num_timesteps=5)
    >>> d.sample(jax.random.key(1), (4,)).shape
    (4, 5)
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import validate_sample

from probseq import validation
from probseq.core import SequenceModel, _sample_kernel, batch_step_log_probs
from probseq.scan import pairwise_sum

__all__ = ["SequenceDistribution"]


def step_support(head) -> constraints.Constraint:
    """The support of one observation x_t of ``head`` (its distribution's support)."""
    raw = {k: jnp.zeros(s) for k, s in head.raw_shapes().items()}
    return head.distribution(raw).support


def _is_tracer(a) -> bool:
    return isinstance(a, jax.core.Tracer)


def _check_count(value, name) -> int:
    return validation.check_int(name, value)


@functools.partial(jax.jit, static_argnums=0)
def _log_prob_kernel(model, params, x, mask, inputs):
    """(N,) sequence log-likelihoods of x (N, T, *event) with its (N, T) mask.

    Jitted so that eager calls compile once per shape; under NUTS it is inlined into
    the caller's trace like any other jitted function.
    """
    step_event = tuple(model.head.event_shape)
    if model.head.is_token:
        x = x.astype(jnp.int32)
    else:
        x = x.astype(jnp.result_type(jax.tree.leaves(params)[0]))
    # Padding never reaches the model (a NaN there would poison the gradient).
    pad = ~mask.reshape(mask.shape + (1,) * len(step_event))
    x = jnp.where(pad, jnp.zeros((), x.dtype), x)
    lps, _ = batch_step_log_probs(model, params, x, mask, inputs)
    return pairwise_sum(lps, axis=-1)


class SequenceDistribution(dist.Distribution):
    """p(x_{1:T}) of a probseq model, as a numpyro distribution over whole sequences.

    Args:
        model: any probseq model (static configuration).
        params: its parameter pytree; may hold traced values (sampled from priors).
        num_timesteps: T, the sequence length. May be left out when ``mask`` (or,
            for conditional models, ``inputs``) gives it.
        mask: optional boolean prefix mask (..., T): True on the valid steps of ragged
            sequences padded at the end. Its leading shape is the batch_shape, so a
            (B, T) mask makes B independent sequences; masked steps add nothing to
            ``log_prob`` and are 0 in samples.
        inputs: per-step conditioning inputs (..., T, input_dim) for models built
            with ``input_dim > 0``, broadcastable to batch_shape + (T, input_dim).
        validate_args: numpyro's flag; when on, ``log_prob`` warns on values outside
            the support.

    Attributes:
        model, params, num_timesteps, inputs: as given (inputs as an array).
        step_mask: the boolean mask or None (not ``mask``: that name is numpyro's
            ``Distribution.mask`` method).

    Shapes:
        ``event_shape = (T,) + model.head.event_shape``; ``batch_shape =
        mask.shape[:-1]`` (or ()). ``log_prob(x)`` takes ``x`` of shape
        ``sample_shape + batch_shape + event_shape`` (any shape that broadcasts with
        batch_shape) and returns ``sample_shape + batch_shape``.

    Example:
        >>> import probseq
        >>> lstm = probseq.LSTM(obs_dim=2, hidden_size=8)
        >>> d = SequenceDistribution(lstm, lstm.init(jax.random.key(0)), 10)
        >>> x = d.sample(jax.random.key(1), (3,))      # (3, 10, 2)
        >>> d.log_prob(x).shape
        (3,)
    """

    pytree_data_fields = ("params", "step_mask", "inputs")
    pytree_aux_fields = ("model", "num_timesteps")

    def __init__(
        self,
        model: SequenceModel,
        params,
        num_timesteps: int | None = None,
        *,
        mask=None,
        inputs=None,
        validate_args: bool | None = None,
    ):
        if not isinstance(model, SequenceModel):
            raise ValueError(
                f"SequenceDistribution needs a probseq model; got {type(model).__name__}."
            )
        validation.check_params(model, params)  # shapes always; values when concrete
        lengths = {}
        if num_timesteps is not None:
            lengths["num_timesteps"] = _check_count(num_timesteps, "num_timesteps")
        if mask is not None:
            if jnp.ndim(mask) < 1:
                raise ValueError(f"mask must have shape (..., T); got a scalar {mask!r}.")
            lengths["mask.shape[-1]"] = jnp.shape(mask)[-1]
        if inputs is not None:
            if jnp.ndim(inputs) < 2:
                raise ValueError(
                    f"inputs must have shape (..., T, input_dim); got shape {jnp.shape(inputs)}."
                )
            lengths["inputs.shape[-2]"] = jnp.shape(inputs)[-2]
        if not lengths:
            raise ValueError(
                "SequenceDistribution needs the sequence length: pass num_timesteps=T "
                "(or mask= of shape (..., T))."
            )
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the sequence lengths disagree: {lengths}.")
        t = next(iter(lengths.values()))
        batch_shape = ()
        if mask is not None:
            mask = self._prepare_mask(mask, t)
            batch_shape = tuple(mask.shape[:-1])
        inputs = self._prepare_inputs(model, inputs, batch_shape, t)

        self.model = model
        self.params = params
        self.num_timesteps = t
        self.step_mask = mask
        self.inputs = inputs
        super().__init__(
            batch_shape, (t,) + tuple(model.head.event_shape), validate_args=validate_args
        )

    @staticmethod
    def _prepare_mask(mask, t):
        if _is_tracer(mask):
            return mask.astype(bool)
        m = np.asarray(mask)
        # The same rules as everywhere in probseq: boolean or 0/1, valid steps first,
        # no empty sequence.
        flat = m.reshape((-1, t))
        validation._check_mask(flat, flat.shape, "x")
        return jnp.asarray(m.astype(bool))

    @staticmethod
    def _prepare_inputs(model, inputs, batch_shape, t):
        want = batch_shape + (t, model.input_dim)
        note = "(the batch_shape comes from mask)"
        if not validation.check_inputs(model, inputs, want, note=note, broadcast=True):
            return None
        return inputs if _is_tracer(inputs) else jnp.asarray(inputs, jnp.result_type(float))

    # ------------------------------------------------------------------ numpyro API
    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(step_support(self.model.head), 1)

    def _lead_shape(self, value_shape: tuple[int, ...]) -> tuple[int, ...]:
        """sample_shape + batch_shape of an observation array, broadcast."""
        event = self.event_shape
        k = len(event)
        if len(value_shape) < k or tuple(value_shape[len(value_shape) - k :]) != event:
            raise ValueError(
                f"SequenceDistribution.log_prob expects x of shape sample_shape + "
                f"batch_shape {self.batch_shape} + event_shape {event}; got shape "
                f"{tuple(value_shape)}."
            )
        try:
            return jnp.broadcast_shapes(value_shape[: len(value_shape) - k], self.batch_shape)
        except ValueError:
            raise ValueError(
                f"x has leading shape {tuple(value_shape[: len(value_shape) - k])}, which does "
                f"not broadcast with batch_shape {self.batch_shape}."
            ) from None

    @validate_sample
    def log_prob(self, value):
        """log p(x_{1:T}) summed (pairwise) over valid steps: sample + batch shape."""
        t = self.num_timesteps
        x = jnp.asarray(value)
        lead = self._lead_shape(x.shape)
        n = math.prod(lead)
        x = jnp.broadcast_to(x, lead + self.event_shape).reshape((n,) + self.event_shape)
        if self.step_mask is None:
            mask = jnp.ones((n, t), bool)
        else:
            mask = jnp.broadcast_to(self.step_mask, lead + (t,)).reshape((n, t))
        total = _log_prob_kernel(self.model, self.params, x, mask, self._flat_inputs(lead))
        return total.reshape(lead)

    def _validate_sample(self, value):
        # Only valid steps must lie in the support: padding may hold anything.
        ok = step_support(self.model.head)(value)
        if self.step_mask is not None:
            ok = ok | ~self.step_mask
        ok = ok.all(-1)
        if not _is_tracer(ok) and not bool(np.all(ok)):
            warnings.warn(
                "Out-of-support values provided to SequenceDistribution.log_prob: "
                "a valid (unmasked) step is outside the head's support.",
                stacklevel=3,
            )
        return ok

    def _flat_inputs(self, lead):
        if self.inputs is None:
            return None
        shape = (self.num_timesteps, self.model.input_dim)
        return jnp.broadcast_to(self.inputs, lead + shape).reshape((-1,) + shape)

    def sample(self, key, sample_shape=()):
        """Ancestral draws: sample_shape + batch_shape + event_shape (0 on masked steps)."""
        model, t = self.model, self.num_timesteps
        lead = tuple(sample_shape) + self.batch_shape
        n = math.prod(lead)
        h0 = model.initial_state(self.params)
        states = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + jnp.shape(a)), h0)
        keys = jax.random.split(key, n)
        xs = _sample_kernel(model, self.params, keys, states, t, 1.0, self._flat_inputs(lead))
        xs = xs.reshape(lead + self.event_shape)
        if self.step_mask is not None:
            keep = jnp.broadcast_to(self.step_mask, lead + (t,))
            keep = keep.reshape(keep.shape + (1,) * len(model.head.event_shape))
            xs = jnp.where(keep, xs, jnp.zeros((), xs.dtype))
        return xs
