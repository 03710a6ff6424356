"""Checks at the API boundary, run eagerly on concrete arrays before anything is traced.

Every public function of probseq funnels user data through here, so one place
decides what valid input is and how an error reads: the argument's name, the
offending index and value, and the form that was expected. JAX clamps
out-of-range gathers silently, so token ids are checked here, never assumed.

The static arguments (sizes, counts, options) are checked by the small helpers
:func:`check_int`, :func:`check_positive_float`, :func:`check_choice`,
:func:`check_stochastic` and :func:`check_inputs`, so that every function says the
same thing about the same mistake:

    >>> check_int("num_states", np.int64(3))     # NumPy integers are ints too
    3
    >>> check_int("num_states", True)
    Traceback (most recent call last):
    ...
    ValueError: num_states must be a positive int, got num_states=True
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probseq.padding import pad_sequences

__all__ = [
    "Batch",
    "prepare_batch",
    "check_params",
    "check_key",
    "check_state",
    "check_int",
    "check_positive_float",
    "check_nonnegative_float",
    "check_choice",
    "check_stochastic",
    "check_inputs",
]


# ------------------------------------------------------------------ static arguments
def check_int(name: str, value, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    """``value`` as a Python int, if it is an integer >= ``minimum`` (else ValueError).

    Python and NumPy integers (``np.int64(3)``, a length from ``len`` or ``.shape``)
    are accepted; bools, floats (even ``3.0``) and strings are not.

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
        minimum: the smallest allowed value (1: "a positive int").
        allow_none: also accept None (returned as None).

    Returns:
        ``int(value)``, or None.

    Raises:
        ValueError: e.g. ``num_iters must be a positive int, got num_iters=0``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= minimum:
        return int(value)
    kind = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
    kind = f"None or {kind}" if allow_none else kind
    raise ValueError(f"{name} must be {kind}, got {name}={value!r}")


def _real_number(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def check_positive_float(name: str, value) -> float:
    """``value`` as a float, if it is a finite real number > 0 (else ValueError)."""
    if _real_number(value) and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")


def check_nonnegative_float(name: str, value) -> float:
    """``value`` as a float, if it is a finite real number >= 0 (else ValueError)."""
    if _real_number(value) and math.isfinite(value) and value >= 0:
        return float(value)
    raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")


def check_choice(name: str, value, choices: tuple):
    """``value``, if it is one of ``choices`` (compared by type and value)."""
    if any(type(value) is type(c) and value == c for c in choices):
        return value
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {name}={value!r}")


def check_stochastic(name: str, p, shape: tuple[int, ...]) -> np.ndarray:
    """``p`` as a float64 array of ``shape`` whose last axis holds probabilities.

    Every entry must be finite and >= 0, and every row (the last axis) must sum to
    1 within 1e-6: an initial distribution (K,), a transition matrix (K, K) whose
    row i is "from state i", or emission probabilities (K, V).

    Raises:
        ValueError: the wrong shape, a negative or non-finite entry (says where), or
            a row that does not sum to 1 (says which, and its sum).
    """
    try:
        a = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of probabilities; got {p!r:.60}.") from None
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


def check_inputs(
    model,
    inputs,
    expected: tuple[int, ...],
    *,
    what="inputs",
    note="",
    broadcast=False,
    name="inputs",
) -> bool:
    """Whether ``model`` takes conditioning inputs, after checking ``inputs`` against it.

    A model built with ``input_dim > 0`` needs inputs of shape ``expected`` (which
    ends in ``(T, input_dim)``); one built without takes none.

    Args:
        model: a probseq model (``input_dim`` 0 or more).
        inputs: what the caller passed, an array, a tracer or None.
        expected: the shape the inputs must have (or broadcast to).
        what: how the message names the inputs, e.g. "future inputs".
        note: appended to the shape message, e.g. "(matching x)".
        broadcast: accept shapes that broadcast to ``expected``.
        name: the argument's name, as the message names it, e.g. "future_inputs".

    Returns:
        False when the model is unconditional (and ``inputs`` is None), True when
        ``inputs`` is to be used.

    Raises:
        ValueError: inputs missing, unexpected, of the wrong shape or not real numbers.
    """
    input_dim = getattr(model, "input_dim", 0)
    if not input_dim:
        if inputs is None:
            return False
        raise ValueError(
            f"{model!r} takes no conditioning inputs (input_dim=0); got {name}= with shape "
            f"{np.shape(inputs)}. Build the model with input_dim=... to use them."
        )
    if inputs is None:
        raise ValueError(
            f"{model!r} is conditioned on inputs of size input_dim={input_dim}: it needs "
            f"{what} of shape {expected}; pass them as {name}=."
        )
    got = tuple(np.shape(inputs))
    note = f" {note}" if note else ""
    if broadcast:
        try:
            fits = np.broadcast_shapes(got, expected) == tuple(expected)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name} has shape {got}, which does not broadcast to batch_shape + "
                f"(T, input_dim) = {tuple(expected)}{note}."
            )
    elif got != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}{note}; got {got}.")
    if not _is_tracer(inputs):
        dtype = getattr(inputs, "dtype", None)
        dtype = np.asarray(inputs).dtype if dtype is None else np.dtype(dtype)
        if dtype == np.bool_ or not (
            np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
        ):
            raise ValueError(f"{name} must hold real numbers; got dtype {dtype}.")
    return True


class Batch(NamedTuple):
    """Observations made rectangular: x (B, T, *event), mask (B, T) bool prefix mask,
    inputs (B, T, input_dim) or None, and whether the user passed a single sequence."""

    x: Any
    mask: Any
    inputs: Any
    batched: bool


def _is_tracer(a) -> bool:
    return isinstance(a, jax.core.Tracer)


def _check_mask(mask, shape, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(
            f"mask has shape {m.shape}, but {name} has batch and time shape {shape}; "
            f"mask must be (B, T) like {name} without its event dimensions."
        )
    if m.dtype != np.bool_:
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
            raise ValueError(f"mask must be boolean or 0/1; got dtype {m.dtype}.")
        bad = (m != 0) & (m != 1)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"mask must be boolean or 0/1; got {m[idx].tolist()!r} at index {idx}."
            )
        m = m.astype(bool)
    # Valid steps must come first: a True after a False is a hole, which this API
    # does not define (an RNN has no input to consume for a missing step).
    holes = m[..., 1:] & ~m[..., :-1]
    if holes.any():
        idx = tuple(int(i) for i in np.argwhere(holes)[0])
        row, t = idx[:-1], idx[-1] + 1
        raise ValueError(
            f"mask row {row} has a valid step at t={t} after a masked step: masks mark "
            "ragged sequences, so each row must be True for its first steps and False "
            "after (trailing padding only)."
        )
    empty = ~m.any(axis=-1)
    if empty.any():
        row = tuple(int(i) for i in np.argwhere(empty)[0])
        raise ValueError(f"mask row {row} has no valid step: sequence {row} is empty.")
    return m


def prepare_batch(model, x, mask=None, inputs=None, *, name: str = "x") -> Batch:
    """Validate observations (and mask, inputs) for ``model``; return them as a batch.

    Accepts a single sequence (T, *event), a batch (B, T, *event), or a list of
    unequal-length sequences (padded here, with the mask built from the lengths).
    """
    head = model.head
    event_ndim = len(head.event_shape)
    if isinstance(x, list | tuple):
        if mask is not None:
            raise ValueError(
                f"{name} is a list of sequences, which carries its own lengths; pass mask=None."
            )
        x, mask = pad_sequences(x, name=name, event_ndim=event_ndim)
        if isinstance(inputs, list | tuple):
            inputs, _ = pad_sequences(inputs, name="inputs", event_ndim=1)
    traced = _is_tracer(x)
    if not traced:
        x = np.asarray(x)
    shape = tuple(x.shape)
    if len(shape) not in (event_ndim + 1, event_ndim + 2):
        form = "(T,) or (B, T)" if event_ndim == 0 else f"(T, {head.event_shape[0]}) or (B, T, ...)"
        raise ValueError(
            f"{name} must have shape {form} for {model!r}; got shape {shape} (rank {len(shape)})."
        )
    if shape[len(shape) - event_ndim :] != head.event_shape:
        raise ValueError(
            f"{name} has event shape {shape[len(shape) - event_ndim :]} but {model!r} expects "
            f"observations of shape {head.event_shape}; got {name}.shape={shape}."
        )
    batched = len(shape) == event_ndim + 2
    bt = shape[: len(shape) - event_ndim]
    if 0 in bt:
        raise ValueError(f"{name} is empty: shape {shape}; every sequence needs at least one step.")
    if not batched:
        x = x[None]
        bt = (1,) + bt
        if mask is not None:
            mask = np.asarray(mask)[None] if not _is_tracer(mask) else mask[None]
    if mask is None:
        mask = np.ones(bt, bool)
    elif _is_tracer(mask):
        if tuple(mask.shape) != bt:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {bt}.")
    else:
        mask = _check_mask(mask, bt, name)
    if not traced and not _is_tracer(mask):
        x = head.check_observations(x, mask, name)
        # Padding never reaches the model: replace it by a valid value (0).
        pad = ~mask.reshape(mask.shape + (1,) * event_ndim)
        x = np.where(pad, np.zeros((), x.dtype), x)
    inputs = _prepare_inputs(model, inputs, bt, batched, mask)
    return Batch(jnp.asarray(x), jnp.asarray(mask), inputs, batched)


def _prepare_inputs(model, inputs, bt, batched: bool, mask):
    expected = (bt if batched else bt[1:]) + (getattr(model, "input_dim", 0),)
    if not check_inputs(model, inputs, expected, note="(matching x)"):
        return None
    if _is_tracer(inputs):
        return inputs if batched else inputs[None]
    u = np.asarray(inputs)
    if not batched:
        u = u[None]
    if not _is_tracer(mask):
        bad = np.asarray(mask) & ~np.isfinite(u).all(-1)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"inputs contains a non-finite value (NaN or inf) at index {idx}.")
        u = np.where(np.asarray(mask)[..., None], u, 0.0)
    return jnp.asarray(u, dtype=jnp.result_type(float))


# ------------------------------------------------------------------ params / keys
@functools.lru_cache(maxsize=256)
def _param_template(model):
    return jax.eval_shape(lambda: model.init(jax.random.key(0)))


def _path_str(path) -> str:
    return "params" + jax.tree_util.keystr(path)


def check_params(model, params) -> None:
    """Raise ValueError unless ``params`` has the structure and shapes ``model.init`` makes."""
    template = _param_template(model)
    expected = dict(jax.tree_util.tree_flatten_with_path(template)[0])
    try:
        got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    except Exception as e:  # pragma: no cover - exotic pytrees
        raise ValueError(f"params is not a pytree of arrays for {model!r}: {e}") from None
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(template):
        missing = [_path_str(p) for p in expected if p not in got]
        extra = [_path_str(p) for p in got if p not in expected]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing[:4])}")
        if extra:
            detail.append(f"unexpected {', '.join(extra[:4])}")
        if not detail:
            detail.append(
                f"container types differ (got {type(params).__name__}, "
                f"expected {type(template).__name__})"
            )
        raise ValueError(
            f"params does not belong to {model!r}: {'; '.join(detail)}. "
            "Create params with model.init(key) for this model."
        )
    for path, leaf in got.items():
        want = expected[path]
        shape = tuple(np.shape(leaf))
        if shape != tuple(want.shape):
            raise ValueError(
                f"{_path_str(path)} has shape {shape}, but {model!r} expects "
                f"{tuple(want.shape)}. Create params with model.init(key) for this model."
            )
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if jnp.issubdtype(want.dtype, jnp.floating) and not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{_path_str(path)} must be a floating array; got dtype {dtype}.")
    leaves = list(got.values())
    if any(_is_tracer(leaf) for leaf in leaves):
        return
    # One compiled reduction per call (a flag per leaf), not a host copy of every leaf.
    # -inf is allowed (log of a structural zero of an HMM); NaN and +inf are not.
    with jax.ensure_compile_time_eval():  # concrete params inside a user's jit: check now
        flags = np.asarray(_bad_value_flags(leaves))
    if flags.any():
        path, leaf = list(got.items())[int(np.argmax(flags))]
        a = np.asarray(leaf)
        idx = tuple(int(i) for i in np.argwhere(np.isnan(a) | np.isposinf(a))[0])
        raise ValueError(
            f"{_path_str(path)} has a non-finite value at index {idx}: {a[idx].tolist()}."
        )


@jax.jit
def _bad_value_flags(leaves):
    return jnp.stack([jnp.any(jnp.isnan(a) | jnp.isposinf(a)) for a in leaves])


def check_key(key, name: str = "key") -> None:
    """A PRNG key: ``jax.random.key(seed)`` or the legacy ``jax.random.PRNGKey(seed)``."""
    if _is_tracer(key):
        return
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ():
        return
    if dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return
    raise ValueError(
        f"{name} must be a single PRNG key such as jax.random.key(0); got "
        f"{type(key).__name__} with shape {getattr(key, 'shape', None)} and dtype {dtype}."
    )


def check_state(model, params, state, batch_shape: tuple[int, ...], name="initial_state"):
    """``state`` must look like ``model.initial_state(params)`` with leading ``batch_shape``."""
    template = jax.eval_shape(model.initial_state, params)
    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(template):
        raise ValueError(
            f"{name} does not match {model!r}'s state structure; use the final_state returned "
            "by probseq.score or model.initial_state(params)."
        )
    for path, (leaf, want) in zip(
        [p for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]],
        zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(template), strict=True),
        strict=True,
    ):
        expect = tuple(batch_shape) + tuple(want.shape)
        if tuple(np.shape(leaf)) != expect:
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} has shape {tuple(np.shape(leaf))}, expected "
                f"{expect} (batch {tuple(batch_shape)} + state {tuple(want.shape)})."
            )
