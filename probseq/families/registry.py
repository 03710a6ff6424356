"""How a family describes itself to model specs: its ``[model]`` keys, their checks and
its constructor, in one :class:`FamilySpec` that lives in the family's own file.

A spec's ``[model]`` table names a ``family``; :mod:`probseq.spec` looks the name up
here and knows nothing else about the family. So adding a family touches its own
file (the class and its ``SPEC``), the public names (``probseq/families/__init__.py``,
``probseq/__init__.py``) and nothing else.

Example (a family file's last lines)::

    SPEC = FamilySpec(
        name="rnn",
        model=RNN,
        keys={"hidden_size": POSITIVE_INT, "num_layers": POSITIVE_INT},
        build=lambda options, head: RNN(head=head, **options),
    )

and ``probseq/families/__init__.py`` lists it in :data:`probseq.families.FAMILY_SPECS`
(or a package outside probseq calls :func:`register`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from probseq import heads as heads_lib

__all__ = [
    "Key",
    "FamilySpec",
    "register",
    "registered",
    "make_head",
    "choice",
    "HEADS",
    "POSITIVE_INT",
    "NONNEG_INT",
    "POSITIVE_NUMBER",
    "FRACTION",
    "BOOL",
]


class Key(NamedTuple):
    """What a spec key accepts: Python ``types`` (bool only where listed), a ``check`` of
    the value, and how the value is ``described`` in the message when either fails."""

    types: tuple[type, ...]
    check: Callable[[Any], bool]
    described: str


POSITIVE_INT = Key((int,), lambda v: v >= 1, "a positive integer")
NONNEG_INT = Key((int,), lambda v: v >= 0, "an integer >= 0")
POSITIVE_NUMBER = Key((int, float), lambda v: math.isfinite(v) and v > 0, "a positive number")
FRACTION = Key((int, float), lambda v: 0 <= v <= 1, "a number in [0, 1]")
BOOL = Key((bool,), lambda v: True, "true or false")


def choice(*options) -> Key:
    """A key whose value is one of ``options`` (strings)."""
    return Key((str,), lambda v: v in options, "one of " + ", ".join(repr(o) for o in options))


#: Emission head names a spec may give, and the head each builds.
HEADS = ("categorical", "normal", "mixture_normal", "poisson", "bernoulli")
_VECTOR_HEADS = {
    "normal": heads_lib.NormalHead,
    "poisson": heads_lib.PoissonHead,
    "bernoulli": heads_lib.BernoulliHead,
}


def make_head(name: str, *, vocab_size=None, obs_dim=None, num_components=None):
    """The head a spec's ``head = name`` means, sized for the data.

    Raises:
        ValueError: the size the head needs (vocab_size for 'categorical', obs_dim
            otherwise) is missing, or ``name`` is not one of :data:`HEADS`.
    """
    if name not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {name!r}.")
    if name == "categorical":
        if vocab_size is None:
            raise ValueError("a categorical head needs vocab_size.")
        return heads_lib.CategoricalHead(vocab_size)
    if obs_dim is None:
        raise ValueError(f"a {name} head needs obs_dim.")
    if name == "mixture_normal":
        extra = {} if num_components is None else {"num_components": num_components}
        return heads_lib.MixtureNormalHead(obs_dim, **extra)
    return _VECTOR_HEADS[name](obs_dim)


class FamilySpec(NamedTuple):
    """One family as model specs see it.

    Attributes:
        name: the ``[model].family`` value ("lstm").
        model: the family's class (for messages and :data:`probseq.spec.FAMILIES`).
        keys: the family's own ``[model]`` keys and their checks, in the order messages
            list them. ``family``, ``head`` and (with a mixture head) ``num_components``
            are added by the spec loader.
        build: ``build(options, head) -> model``: ``options`` are the checked keys the
            spec gave (a dict, ``keys`` only), ``head`` the emission head built for the
            data (:func:`make_head`).
        heads: head names the family takes (the first real-valued one is the default
            for series data; ``'categorical'`` is the default for text).
        required: keys a spec must give.
        fit_methods: ``[fit].method`` values that fit this family ("sgd", "em", "ls").
        fit_keys: ``[fit]`` keys only this family takes, by method, beside the method's
            own (``{"em": {"initial": choice(...)}}``); passed to the fitter as keywords.
    """

    name: str
    model: type
    keys: Mapping[str, Key]
    build: Callable[[dict, Any], Any]
    heads: tuple[str, ...] = HEADS
    required: tuple[str, ...] = ()
    fit_methods: tuple[str, ...] = ("sgd",)
    fit_keys: Mapping[str, Mapping[str, Key]] = MappingProxyType({})

    def check(self):
        """Raise ValueError if the description is inconsistent (checked on register)."""
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"a family name is an identifier; got {self.name!r}.")
        bad = [h for h in self.heads if h not in HEADS]
        if not self.heads or bad:
            raise ValueError(f"family {self.name!r}: heads must be among {HEADS}; got {bad}.")
        reserved = {"family", "head", "num_components"} & set(self.keys)
        if reserved:
            raise ValueError(f"family {self.name!r}: keys {sorted(reserved)} are the loader's.")
        missing = [k for k in self.required if k not in self.keys]
        if missing:
            raise ValueError(f"family {self.name!r}: required keys {missing} are not in keys.")
        if any(not isinstance(k, Key) for k in self.keys.values()):
            raise ValueError(f"family {self.name!r}: every key's check must be a Key.")
        stray = [m for m in self.fit_keys if m not in self.fit_methods]
        if stray:
            raise ValueError(f"family {self.name!r}: fit_keys for methods {stray} it is "
                             f"not fitted by (fit_methods {self.fit_methods}).")  # fmt: skip
        if any(not isinstance(k, Key) for t in self.fit_keys.values() for k in t.values()):
            raise ValueError(f"family {self.name!r}: every fit key's check must be a Key.")


_REGISTRY: dict[str, FamilySpec] = {}


def register(spec: FamilySpec) -> FamilySpec:
    """Make a family known to model specs (``[model].family = spec.name``).

    Raises:
        ValueError: the name is taken by another family, or ``spec`` is inconsistent.
    """
    if not isinstance(spec, FamilySpec):
        raise ValueError(f"register takes a FamilySpec, got {type(spec).__name__}.")
    spec.check()
    known = _REGISTRY.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"family {spec.name!r} is already registered ({known.model.__name__}).")
    _REGISTRY[spec.name] = spec
    return spec


def registered() -> Mapping[str, FamilySpec]:
    """The registered families by name, in registration order (a read-only view)."""
    return MappingProxyType(_REGISTRY)
