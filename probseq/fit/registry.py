"""How a fitter describes itself to specs and histories: its ``[fit].method`` name, its
``[fit]`` keys with their checks and defaults, and how a spec runs it, in one
:class:`FitterSpec` that lives in the fitter's own file (as a family's
:class:`~probseq.families.registry.FamilySpec` does).

:mod:`probseq.spec` checks a ``[fit]`` table against the registered fitter it names and
calls its ``fit``; :class:`probseq.FitHistory` accepts the history of any registered
fitter. So adding a fitter touches its own file and the public names, never spec.py,
result.py or the CLI.

Example (a fitter file's last lines)::

    SPEC = register(FitterSpec(
        name="em",
        function="fit_em",
        keys={"num_iters": POSITIVE_INT, "tol": NONNEG_NUMBER},
        defaults={"num_iters": 100},
        fit=_fit_from_spec,
    ))

where ``_fit_from_spec(spec, model, params, train, valid, *, progress, checkpoint_dir,
mesh)`` returns a :class:`probseq.FitResult`: ``spec`` is the
:class:`probseq.spec.Spec` (its ``fit`` table checked, defaults filled, ``method``
included), ``train`` / ``valid`` the split data (:class:`probseq.data.Split`, or
:class:`probseq.data.PairSplit` for pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from probseq.families.registry import Key

__all__ = ["FitterSpec", "register", "unregister", "registered", "fitter_names"]


class FitterSpec(NamedTuple):
    """One fitter, as specs and histories know it.

    Attributes:
        name: the ``[fit].method`` value ("sgd").
        function: the fitter's name in :class:`probseq.FitHistory` ("fit_sgd").
        keys: its ``[fit]`` keys (beside ``method``) and their checks, in the order
            messages list them; a family may add keys of its own
            (:attr:`~probseq.families.registry.FamilySpec.fit_keys`).
        fit: ``fit(spec, model, params, train, valid, *, progress, checkpoint_dir,
            mesh) -> FitResult``.
        defaults: values of ``keys`` a spec need not give.
        families: families this fitter fits beside those whose ``fit_methods`` name it
            (a fitter from outside probseq declares its families here).
    """

    name: str
    function: str
    keys: Mapping[str, Key]
    fit: Callable[..., Any]
    defaults: Mapping[str, Any] = MappingProxyType({})
    families: tuple[str, ...] = ()

    def check(self):
        """Raise ValueError if the description is inconsistent (checked on register)."""
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"a fitter's name is an identifier; got {self.name!r}.")
        if not isinstance(self.function, str) or not self.function:
            raise ValueError(f"fitter {self.name!r}: function must name it; got {self.function!r}.")
        if "method" in self.keys:
            raise ValueError(f"fitter {self.name!r}: the key 'method' is the loader's.")
        if any(not isinstance(k, Key) for k in self.keys.values()):
            raise ValueError(f"fitter {self.name!r}: every key's check must be a Key.")
        stray = [k for k in self.defaults if k not in self.keys]
        if stray:
            raise ValueError(f"fitter {self.name!r}: defaults {stray} are not among its keys.")
        if not callable(self.fit):
            raise ValueError(f"fitter {self.name!r}: fit must be callable.")


_REGISTRY: dict[str, FitterSpec] = {}


def register(spec: FitterSpec) -> FitterSpec:
    """Make a fitter known to specs (``[fit].method = spec.name``) and histories.

    Raises:
        ValueError: the name or function is taken by another fitter, or ``spec`` is
            inconsistent.
    """
    if not isinstance(spec, FitterSpec):
        raise ValueError(f"register takes a FitterSpec, got {type(spec).__name__}.")
    spec.check()
    for known in _REGISTRY.values():
        same = known.name == spec.name or known.function == spec.function
        if same and known != spec:
            raise ValueError(
                f"fitter {spec.name!r} ({spec.function}) clashes with the registered "
                f"{known.name!r} ({known.function})."
            )
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forget the fitter registered as ``name`` (a plugin's or a test's; the built-in
    fitters cannot be removed).

    Raises:
        ValueError: ``name`` is built in or not registered.
    """
    if name in _BUILT_IN or name not in _REGISTRY:
        raise ValueError(f"{name!r} is not a registered fitter that can be removed.")
    del _REGISTRY[name]


_BUILT_IN = ("sgd", "em", "ls")  # listed first, in this order, in messages


def registered() -> Mapping[str, FitterSpec]:
    """The registered fitters by ``[fit].method`` name: the built-in ones (sgd, em, ls)
    first, then the others in registration order."""
    import probseq.fit  # noqa: F401  (the built-in fitters register on import)

    first = [n for n in _BUILT_IN if n in _REGISTRY]
    order = first + [n for n in _REGISTRY if n not in first]
    return MappingProxyType({n: _REGISTRY[n] for n in order})


def fitter_names() -> tuple[str, ...]:
    """Every registered fitter's history name (``FitHistory.fitter`` values)."""
    return tuple(s.function for s in registered().values())
