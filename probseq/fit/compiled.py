"""Compiled executables kept across fits: a second fit with the same model, settings
and shapes compiles nothing.

:class:`CompiledSteps` holds the last few executables by (function, static
configuration, argument signature), and the default optimizers by their settings (so
their compiled steps are found again). Every fitter's compiled steps go through
:meth:`CompiledSteps.get`; :data:`SHARED` is the one they use unless given another.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax

__all__ = ["CompiledSteps", "SHARED", "clear_compiled_cache"]


def _signature(args) -> tuple:
    """What a compiled executable is specialised to: tree structure, and each leaf's
    shape, dtype, weak type and placement."""
    leaves, treedef = jax.tree.flatten(args)
    return (treedef,) + tuple(
        (
            np.shape(a),
            str(a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype),  # key<fry> too
            bool(getattr(a, "weak_type", False)),
            getattr(a, "sharding", None),
        )
        for a in leaves
    )


class _BoundedCache:
    """The last ``size`` values by key (least recently used dropped first). A key that
    is None or unhashable (e.g. an optimizer holding arrays) is never stored."""

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: dict = {}

    def get(self, key):
        try:
            value = self._entries.pop(key)
        except (KeyError, TypeError):
            return None
        self._entries[key] = value  # most recently used last
        return value

    def put(self, key, value):
        if key is None:
            return
        try:
            self._entries[key] = value
        except TypeError:
            return
        while len(self._entries) > self.size:
            self._entries.pop(next(iter(self._entries)))

    def clear(self):
        self._entries.clear()


class CompiledSteps:
    """fit_sgd's compiled train and validation steps (and default optimizers), kept
    across calls so that a second fit with the same model, optimizer and shapes
    compiles nothing: the last ``size`` executables by (function, model, optimizer,
    argument signature), the default optimizers by (learning_rate, max_grad_norm).

    ``fit_sgd(..., compiled=CompiledSteps())`` gives a fit its own (e.g. to free its
    executables by dropping the object); the default is :data:`SHARED`.
    """

    def __init__(self, size: int = 8):
        self._executables = _BoundedCache(size)
        self._optimizers = _BoundedCache(size)

    def default_optimizer(self, learning_rate, max_grad_norm):
        """``clip_by_global_norm(max_grad_norm)`` then Adam: the same object for the
        same settings (so that its compiled steps are found again)."""
        key = (learning_rate, max_grad_norm)
        default = self._optimizers.get(key)
        if default is None:
            default = optax.chain(
                optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate)
            )
            self._optimizers.put(key, default)
        return default

    def get(self, cache_key, make) -> _AheadOfTime:
        """The function ``make()`` compiled ahead of time on first call, kept here
        under ``cache_key`` (with the argument signature) for later fits."""
        return _AheadOfTime(make, self, cache_key)

    def clear(self) -> None:
        """Drop every kept executable and default optimizer."""
        self._executables.clear()
        self._optimizers.clear()


#: The :class:`CompiledSteps` fit_sgd and sgd_init use unless given another.
SHARED = CompiledSteps()


def clear_compiled_cache() -> None:
    """Drop the compiled train and validation steps kept across fit_sgd calls."""
    SHARED.clear()


class _AheadOfTime:
    """``jax.jit(make())`` compiled on the first call for exactly those argument types.

    Later calls run the compiled executable: they can never retrace (arguments of
    another shape or dtype raise instead), and the compile time is measured apart.
    ``cache_key`` (hashable; None: no reuse) identifies the function across fit_sgd
    calls: the executable is taken from, and left in, ``compiled`` (CompiledSteps).
    """

    def __init__(self, make, compiled: CompiledSteps, cache_key=None):
        self._make = make
        self._cache = compiled._executables
        self._cache_key = cache_key
        self._compiled = None
        self.compile_time_s = 0.0

    def __call__(self, *args):
        if self._compiled is None:
            key = None if self._cache_key is None else (self._cache_key, _signature(args))
            self._compiled = self._cache.get(key)
            if self._compiled is None:
                start = time.perf_counter()
                self._compiled = jax.jit(self._make()).lower(*args).compile()
                self.compile_time_s = time.perf_counter() - start
                self._cache.put(key, self._compiled)
        return self._compiled(*args)
