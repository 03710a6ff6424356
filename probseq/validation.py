"""Checks at the API boundary, run eagerly on concrete arrays before anything is traced.

Every public function of probseq funnels user data through here, so one place
decides what valid input is and how an error reads: the argument's name, the
offending index and value, and the form that was expected. JAX clamps
out-of-range gathers silently, so token ids are checked here, never assumed.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from probseq.padding import pad_sequences

__all__ = ["Batch", "prepare_batch", "check_params", "check_key", "check_state"]


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
    input_dim = getattr(model, "input_dim", 0)
    if inputs is None:
        if input_dim:
            raise ValueError(
                f"{model!r} is conditioned on inputs of size input_dim={input_dim}; pass "
                f"inputs= of shape {bt[1:] if not batched else bt} + ({input_dim},)."
            )
        return None
    if not input_dim:
        raise ValueError(
            f"{model!r} takes no conditioning inputs (input_dim=0); got inputs= "
            f"with shape {np.shape(inputs)}. Build the model with input_dim=... to use them."
        )
    if _is_tracer(inputs):
        u = inputs if batched else inputs[None]
        if tuple(u.shape) != bt + (input_dim,):
            raise ValueError(
                f"inputs has shape {tuple(inputs.shape)}, expected {bt + (input_dim,)}."
            )
        return u
    u = np.asarray(inputs)
    expected = (bt if batched else bt[1:]) + (input_dim,)
    if u.shape != expected:
        raise ValueError(f"inputs must have shape {expected} (matching x); got {u.shape}.")
    if not (np.issubdtype(u.dtype, np.floating) or np.issubdtype(u.dtype, np.integer)):
        raise ValueError(f"inputs must hold real numbers; got dtype {u.dtype}.")
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
