"""Memory estimates, checked before anything is allocated.

A call whose arrays cannot fit (``sample(..., num_timesteps=10**9)``, a forecast over
a horizon of 1e9 steps, ``hidden_size=10**6``) is refused with one ValueError line
that gives the estimate and the limit, instead of growing until the process is
killed or XLA aborts. Estimates count the arrays a call must hold at once
(parameters, states, draws, outputs); they are lower bounds, so the check never
refuses a call that would have fitted.

The limit, in this order:

1. ``set_memory_limit(nbytes)`` (``None`` restores the default);
2. the ``PROBSEQ_MEMORY_LIMIT`` environment variable, in bytes (``8e9``) or with a
   K/M/G/T suffix (``8G``);
3. the accelerator's own limit (``jax.devices()[0].memory_stats()["bytes_limit"]``)
   where the backend reports one;
4. else half the machine's physical memory (``os.sysconf``): the rest is left to the
   Python process, XLA's workspace and the other programs on the machine.

Example:
    >>> from probseq import memory
    >>> memory.check_fits(10**6, "a small array")
    >>> memory.check_fits(10**30, "sample()")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: sample() needs about 1e+30 bytes, over the memory limit of ...
"""

from __future__ import annotations

import math
import os
import warnings

import jax
import numpy as np

__all__ = ["check_fits", "memory_limit", "set_memory_limit", "nbytes_of", "param_bytes"]

ENV_VAR = "PROBSEQ_MEMORY_LIMIT"
_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
#: Share of physical memory a single call may use when no accelerator reports a limit.
HOST_FRACTION = 0.5
_limit_override: int | None = None


def set_memory_limit(nbytes: int | float | None) -> None:
    """Use ``nbytes`` as the limit of every later check; None restores the default."""
    global _limit_override
    if nbytes is not None and (
        isinstance(nbytes, bool) or not isinstance(nbytes, int | float) or not nbytes > 0
    ):
        raise ValueError(f"the memory limit must be a positive number of bytes, got {nbytes!r}")
    _limit_override = None if nbytes is None else int(nbytes)


def _parse(text: str) -> int:
    raw = text.strip().upper().removesuffix("B")
    scale = _SUFFIXES.get(raw[-1:], 1)
    try:
        value = float(raw[:-1] if scale > 1 else raw) * scale
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{ENV_VAR}={text!r} is not a memory size: write bytes (8e9) or 8G, 512M, ..."
        )
    return int(value)


def _device_limit() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without the query (CPU) raise or return None
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit() -> int | None:
    """The limit in bytes (see the module docstring for its source); None if unknown."""
    if _limit_override is not None:
        return _limit_override
    env = os.environ.get(ENV_VAR)
    if env:
        return _parse(env)
    if (device := _device_limit()) is not None:
        return device
    physical = _physical_memory()
    return None if physical is None else int(physical * HOST_FRACTION)


def _fmt(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def check_fits(nbytes: float, what: str) -> None:
    """Raise ValueError (one line: the estimate and the limit) if ``nbytes`` is over
    the limit. ``what`` names the call, e.g. ``"sample(num_timesteps=1000000000)"``."""
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise ValueError(
            f"{what} needs about {_fmt(nbytes)} ({nbytes:.3g} bytes), over the memory limit "
            f"of {_fmt(limit)}; ask for less, or raise the limit with {ENV_VAR} or "
            "probseq.memory.set_memory_limit()."
        )


def nbytes_of(tree) -> int:
    """Bytes of a pytree of arrays or shape-dtype structs (from ``jax.eval_shape``)."""
    return sum(
        math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)
    )


def param_bytes(model, dtype=None) -> int:
    """Bytes of ``model.init``'s parameters, from the static configuration alone
    (``jax.eval_shape``: nothing is allocated)."""
    with warnings.catch_warnings():  # huge index arithmetic warns of int64 truncation
        warnings.simplefilter("ignore", UserWarning)
        shapes = jax.eval_shape(lambda k: model.init(k, dtype=dtype), jax.random.key(0))
    return nbytes_of(shapes)
