"""Model specifications: one model per TOML file, read by a strict loader.

A spec names the data kind and how it is cut, the family and its sizes, and how
to fit it. Sizes that come from the data (``vocab_size`` for text, ``obs_dim`` for
series) are filled in when the model is built. Every table is checked against
the keys it allows: a typo is an error that lists the allowed keys, never a
silently ignored setting.

Example ``models/lstm_text.toml``::

    description = "LSTM for character-level text"
    seed = 0

    [data]
    kind = "text"            # "text" (characters) or "series" (real values, CSV)
    sequence_length = 256    # rows the data is cut into
    split = [0.9, 0.05, 0.05]

    [model]
    family = "lstm"          # any registered family: probseq.families.FAMILY_SPECS
    hidden_size = 256

    [fit]
    method = "sgd"           # "sgd" (every family), "em" (hmm) or "ls" (ar)
    num_epochs = 3
    batch_size = 32

Sequence to sequence (and the other conditional models) read source/target pairs
(``kind = "pairs"``: a file of ``source<TAB>target`` lines, :mod:`probseq.data.pairs`);
the ``[source]`` table is the encoder, ``[model]`` the decoder::

    [data]
    kind = "pairs"
    target = "sequence"      # "sequence" (Seq2Seq), "label" (SequenceClassifier),
                             # "tags" (SequenceTagger: one tag per source character)
    [source]                 # the encoder
    family = "gru"           # any recurrent family: rnn, lstm, gru, mingru, minlstm, lru
    hidden_size = 64         # and the family's other keys (num_layers, embed_size, ...)
    bidirectional = true     # add a run over the reversed source (default false)
    layers = 1               # stacked (bidirectional) encoder layers (default 1)
    attention = "additive"   # target "sequence": "none" (default), "additive" or "dot"
    [model]                  # the decoder (target "sequence" only; "label" and "tags"
    family = "gru"           # read the encoder's states: their [model] is empty)
    hidden_size = 64

In Python::

    >>> spec = parse_spec({"data": {"kind": "text"}, "model": {"family": "gru",
    ...     "hidden_size": 8}, "fit": {"method": "sgd", "num_epochs": 1}})
    >>> spec.build_model(vocab_size=5)
    GRU(vocab_size=5, hidden_size=8)
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping

import jax

from probseq.data.pairs import TARGETS
from probseq.families import FAMILY_SPECS
from probseq.families.recurrent import RecurrentNetwork
from probseq.families.registry import (
    BOOL,
    HEADS,
    POSITIVE_INT,
    choice,
    make_head,
)
from probseq.fit import registry as fitter_registry

__all__ = ["Spec", "SpecError", "load_spec", "parse_spec", "spec_text", "FAMILIES", "HEADS"]


class SpecError(ValueError):
    """A model spec that cannot be used; the message names the file and the key."""


class _FamilyClasses(Mapping):
    """family name -> class, a live view of the registered families."""

    def __getitem__(self, name):
        return FAMILY_SPECS[name].model

    def __iter__(self):
        return iter(FAMILY_SPECS)

    def __len__(self):
        return len(FAMILY_SPECS)


#: family name -> model class, for every registered family (probseq.families.registry).
FAMILIES = _FamilyClasses()
_KINDS = ("text", "series", "pairs")


def _fractions(v):
    return (
        len(v) == 3
        and all(isinstance(f, int | float) and not isinstance(f, bool) and f > 0 for f in v)
        and sum(v) <= 1 + 1e-9
    )


def _names(v):
    return len(v) > 0 and all(
        (isinstance(c, str) and _valid_text(c)) or (isinstance(c, int) and not isinstance(c, bool))
        for c in v
    )


MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits of a seed (without x64): no more


def _valid_text(v):
    # A lone surrogate cannot be written as UTF-8: spec.toml could not be saved.
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_TOP = {
    "description": ((str,), _valid_text, "a string of valid Unicode"),
    "seed": ((int,), lambda v: 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
}
_DATA = {
    "kind": choice(*_KINDS),
    "sequence_length": POSITIVE_INT,
    "split": (
        (list,),
        _fractions,
        "[train, valid, test]: three positive fractions summing to at most 1",
    ),
    "columns": ((list,), _names, "a non-empty list of column names or 0-based indices"),
    "standardize": BOOL,
    "target": choice(*TARGETS),
}
_ATTENTION = ("none", "additive", "dot")
#: The [source] table's own keys (besides the encoder family's keys).
_SOURCE = {
    "bidirectional": BOOL,
    "layers": POSITIVE_INT,
    "attention": choice(*_ATTENTION),
    "attention_size": POSITIVE_INT,
    "pooling": choice("final", "mean"),
}
_SOURCE_ONLY = {"attention": "sequence", "attention_size": "sequence", "pooling": "label"}
_DATA_DEFAULTS = {"text": {"sequence_length": 256, "split": [0.9, 0.05, 0.05]}}
_DATA_DEFAULTS["series"] = {"split": [0.8, 0.1, 0.1], "standardize": True}
_DATA_DEFAULTS["pairs"] = {"target": "sequence", "split": [0.9, 0.05, 0.05]}


def _check_table(table, allowed: dict, where: str, source: str) -> dict:
    if not isinstance(table, dict):
        raise SpecError(f"{source}: {where} must be a table, got {type(table).__name__}.")
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise SpecError(
            f"{source}: unknown key {unknown[0]!r} in {where}; allowed keys: {', '.join(allowed)}."
        )
    for key, value in table.items():
        types, check, described = allowed[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok or not check(value):
            raise SpecError(f"{source}: {where}.{key} must be {described}; got {value!r}.")
    return dict(table)


def _require(table: dict, key: str, where: str, source: str):
    if key not in table:
        raise SpecError(f"{source}: {where} needs the key {key!r}.")
    return table[key]


@dataclasses.dataclass(frozen=True)
class Spec:
    """A checked model specification (see the module docstring for the format).

    Attributes:
        data, model, fit: the three tables, with defaults filled in.
        seed: seeds the parameter initialisation and the fit.
        description: free text.
        source: where the spec came from (a path or "<dict>"), for messages.
        encoder: the ``[source]`` table (the encoder of a ``kind = "pairs"`` model,
            with defaults filled in), else None.
    """

    data: dict
    model: dict
    fit: dict
    seed: int = 0
    description: str = ""
    source: str = "<dict>"
    encoder: dict | None = None

    @property
    def kind(self) -> str:
        """ "text", "series" or "pairs"."""
        return self.data["kind"]

    @property
    def method(self) -> str:
        """ "sgd", "em" or "ls"."""
        return self.fit["method"]

    def to_dict(self) -> dict:
        """The spec as the nested dict :func:`parse_spec` reads back."""
        out = {"seed": self.seed, "data": dict(self.data)}
        if self.description:
            out["description"] = self.description
        if self.encoder is not None:
            out["source"] = dict(self.encoder)
        out["model"], out["fit"] = dict(self.model), dict(self.fit)
        return out

    def replace(self, **tables) -> Spec:
        """A new spec with keys of ``data=``, ``source=`` (the [source] table),
        ``model=`` or ``fit=`` overridden (and checked again), e.g.
        ``spec.replace(fit={"num_epochs": 1})``."""
        d = self.to_dict()
        for name, updates in tables.items():
            if name not in ("data", "source", "model", "fit"):
                raise SpecError(f"replace() takes data=, source=, model= or fit=; got {name}=.")
            d[name] = {**d.get(name, {}), **updates}
        return parse_spec(d, source=self.source)

    def build_model(
        self,
        *,
        vocab_size: int | None = None,
        obs_dim: int | None = None,
        source_vocab_size: int | None = None,
    ):
        """The model this spec describes, sized for the data.

        Args:
            vocab_size: number of symbols (text data; the targets of pairs).
            obs_dim: dimension of each observation (series data).
            source_vocab_size: number of source symbols (pairs).
        """
        if self.kind == "pairs":
            return self._build_conditional(vocab_size, source_vocab_size)
        m = dict(self.model)
        family = FAMILY_SPECS[m.pop("family")]
        try:
            head = make_head(
                m.pop("head"),
                vocab_size=vocab_size,
                obs_dim=obs_dim,
                num_components=m.pop("num_components", None),
            )
        except ValueError as e:
            raise SpecError(f"{self.source}: {e}") from None
        return family.build(m, head)

    def _build_conditional(self, vocab_size, source_vocab_size):
        """A Seq2Seq, SequenceClassifier or SequenceTagger (``[data].target``)."""
        from probseq.conditional import Encoder, Seq2Seq, SequenceClassifier, SequenceTagger

        if vocab_size is None or source_vocab_size is None:
            raise SpecError(
                f"{self.source}: a pairs model needs vocab_size= (target symbols) and "
                "source_vocab_size= (source symbols)."
            )
        e = dict(self.encoder)
        own = {k: e.pop(k) for k in _SOURCE if k in e}
        cell = FAMILY_SPECS[e.pop("family")].build(
            e, make_head("categorical", vocab_size=source_vocab_size)
        )
        encoder = Encoder(cell, bidirectional=own["bidirectional"], num_layers=own["layers"])
        target = self.data["target"]
        if target == "label":
            return SequenceClassifier(encoder, num_classes=vocab_size, pooling=own["pooling"])
        if target == "tags":
            return SequenceTagger(encoder, num_classes=vocab_size)
        m = dict(self.model)
        m.pop("head")
        decoder = FAMILY_SPECS[m.pop("family")].build(
            m, make_head("categorical", vocab_size=vocab_size)
        )
        attention = None if own["attention"] == "none" else own["attention"]
        return Seq2Seq(encoder, decoder, attention, own.get("attention_size"))

    def init_params(self, model):
        """Random starting parameters from ``seed``."""
        return model.init(jax.random.fold_in(jax.random.key(self.seed), 0))

    def fit_model(
        self, model, params, train, valid=None, *, progress=True, checkpoint_dir=None, mesh=None
    ):
        """Fit ``model`` from ``params`` as the [fit] table says.

        Args:
            train, valid: :class:`probseq.data.Split` (x, mask) pairs (for pairs data,
                :class:`probseq.data.PairSplit`, with the sources); ``valid`` is used
                for early stopping by SGD (EM ignores it).
            progress: show progress bars.
            checkpoint_dir: SGD and EM checkpoints (a killed fit resumes from them).
            mesh: a ``jax.sharding.Mesh`` to split the sequences over (the same fit).

        Returns:
            :class:`probseq.FitResult`.
        """
        fitter = fitter_registry.registered()[self.method]
        return fitter.fit(self, model, params, train, valid, progress=progress,
                          checkpoint_dir=checkpoint_dir, mesh=mesh)  # fmt: skip


def parse_spec(d: dict, *, source: str = "<dict>") -> Spec:
    """Check a spec given as nested dicts (as ``tomllib`` reads it) and fill defaults.

    Raises:
        SpecError: an unknown key (the message lists the allowed ones), a missing
            required key, a value of the wrong type or range, or an inconsistent
            combination (e.g. EM for an LSTM, a categorical head on series data).
    """
    if not isinstance(d, dict):
        raise SpecError(f"{source}: a spec is a table of tables, got {type(d).__name__}.")
    allowed_top = {**_TOP, "data": None, "source": None, "model": None, "fit": None}
    unknown = [k for k in d if k not in allowed_top]
    if unknown:
        raise SpecError(
            f"{source}: unknown key {unknown[0]!r} at the top level; allowed keys: "
            f"{', '.join(allowed_top)}."
        )
    top = _check_table({k: v for k, v in d.items() if k in _TOP}, _TOP, "the top level", source)
    for name in ("data", "fit"):
        _require(d, name, "the spec", source)

    data = _check_table(d["data"], _DATA, "[data]", source)
    kind = _require(data, "kind", "[data]", source)
    for key, kinds in _DATA_KINDS.items():
        if key in data and kind not in kinds:
            raise SpecError(
                f"{source}: [data].{key} applies to kind = {_or(repr(k) for k in kinds)} only."
            )
    data = {**_DATA_DEFAULTS[kind], **data}
    if kind == "pairs":
        encoder, model, family, fit_methods = _conditional_tables(d, data, source)
    else:
        if "source" in d:
            raise SpecError(f"{source}: [source] (an encoder) applies to kind = 'pairs' only.")
        encoder, (model, family, fit_methods) = None, _model_table(d, kind, source)
    fit_keys = None if kind == "pairs" else FAMILY_SPECS[model["family"]].fit_keys
    fit = _fit_table(d, family, fit_methods, source, fit_keys)
    return Spec(
        data=data,
        model=model,
        fit=fit,
        seed=top.get("seed", 0),
        description=top.get("description", ""),
        source=source,
        encoder=encoder,
    )


#: [data] keys that only some kinds take.
_DATA_KINDS = {
    "columns": ("series",),
    "standardize": ("series",),
    "target": ("pairs",),
    "sequence_length": ("text", "series"),
}


def _recurrent_family(table: dict, where: str, source: str):
    """The FamilySpec a [source] or decoder [model] table names (a recurrent family)."""
    recurrent = [n for n, f in FAMILY_SPECS.items() if issubclass(f.model, RecurrentNetwork)]
    family = _require(table, "family", where, source)
    if not isinstance(family, str) or family not in recurrent:
        raise SpecError(
            f"{source}: {where}.family must be a recurrent family ({', '.join(recurrent)}); "
            f"got {family!r}."
        )
    fam = FAMILY_SPECS[family]
    return fam, {"family": choice(*recurrent), **fam.keys}


def _conditional_tables(d: dict, data: dict, source: str):
    """([source] table, [model] table, what the model is called, fit methods) of a
    ``kind = "pairs"`` spec."""
    target = data["target"]
    if "source" not in d:
        raise SpecError(f"{source}: kind = 'pairs' needs a [source] table (the encoder).")
    if not isinstance(d["source"], dict):
        raise SpecError(f"{source}: [source] must be a table.")
    fam, allowed = _recurrent_family(d["source"], "[source]", source)
    where = f"[source] (family {fam.name!r})"
    encoder = _check_table(d["source"], {**allowed, **_SOURCE}, where, source)
    for key in fam.required:
        _require(encoder, key, where, source)
    for key, wanted in _SOURCE_ONLY.items():
        if key in encoder and target != wanted:
            raise SpecError(f"{source}: [source].{key} applies to target = {wanted!r} only.")
    if "attention_size" in encoder and encoder.get("attention") != "additive":
        raise SpecError(f"{source}: [source].attention_size needs attention = 'additive'.")
    defaults = {"bidirectional": False, "layers": 1}
    defaults.update(
        {"sequence": {"attention": "none"}, "label": {"pooling": "final"}}.get(target, {})
    )
    encoder = {**encoder, **{k: v for k, v in defaults.items() if k not in encoder}}
    model = d.get("model", {})
    if not isinstance(model, dict):
        raise SpecError(f"{source}: [model] must be a table.")
    if target != "sequence":
        if model:
            raise SpecError(
                f"{source}: target = {target!r} reads its targets off the encoder's states "
                f"([source]); [model] (a decoder, for target = 'sequence') takes no keys "
                f"here; got {next(iter(model))!r}."
            )
        return encoder, {}, f"kind = 'pairs' (target {target!r})", ("sgd",)
    _require(d, "model", "the spec", source)
    dec, allowed = _recurrent_family(model, "[model]", source)
    where = f"[model] (the decoder, family {dec.name!r})"
    model = _check_table(model, {**allowed, "head": choice("categorical")}, where, source)
    for key in dec.required:
        _require(model, key, where, source)
    model.setdefault("head", "categorical")
    return encoder, model, "kind = 'pairs'", ("sgd",)


def _model_table(d: dict, kind: str, source: str):
    """([model] table, its family's name, fit methods) of a text or series spec."""
    _require(d, "model", "the spec", source)
    if not isinstance(d["model"], dict):
        raise SpecError(f"{source}: [model] must be a table.")
    family = _require(d["model"], "family", "[model]", source)
    if not isinstance(family, str) or family not in FAMILY_SPECS:
        raise SpecError(
            f"{source}: [model].family must be one of {', '.join(FAMILY_SPECS)}; got {family!r}."
        )
    fam = FAMILY_SPECS[family]
    allowed = {"family": choice(*FAMILY_SPECS), **fam.keys, "head": choice(*fam.heads)}
    if "mixture_normal" in fam.heads:
        allowed["num_components"] = POSITIVE_INT
    model = _check_table(d["model"], allowed, f"[model] (family {family!r})", source)
    for key in fam.required:
        _require(model, key, f"[model] (family {family!r})", source)
    real_heads = [h for h in fam.heads if h != "categorical"]
    if kind == "text" and "categorical" not in fam.heads:
        raise SpecError(f"{source}: family {family!r} models real-valued series, not text.")
    if kind == "series" and not real_heads:
        raise SpecError(f"{source}: family {family!r} models tokens, not real-valued series.")
    model.setdefault("head", "categorical" if kind == "text" else real_heads[0])
    if kind == "text" and model["head"] != "categorical":
        raise SpecError(f"{source}: text data needs head = 'categorical'; got {model['head']!r}.")
    if kind == "series" and model["head"] == "categorical":
        raise SpecError(f"{source}: series data needs a real-valued head, not 'categorical'.")
    if "num_components" in model and model["head"] != "mixture_normal":
        raise SpecError(f"{source}: [model].num_components needs head = 'mixture_normal'.")
    return model, repr(family), _methods_of(fam)


def _fit_table(d: dict, family: str, fit_methods, source: str, fit_keys=None) -> dict:
    """The checked [fit] table, for a model (``family``) fitted by ``fit_methods`` that
    takes ``fit_keys`` of its own (:attr:`probseq.families.registry.FamilySpec.fit_keys`);
    the methods and their keys are the registered fitters' (:mod:`probseq.fit.registry`)."""
    if not isinstance(d["fit"], dict):
        raise SpecError(f"{source}: [fit] must be a table.")
    fitters = fitter_registry.registered()
    method = _require(d["fit"], "method", "[fit]", source)
    if method not in fitters:
        raise SpecError(
            f"{source}: [fit].method must be {_or(repr(m) for m in fitters)}; got {method!r}."
        )
    fitter = fitters[method]
    allowed_fit = {"method": choice(*fitters), **fitter.keys, **(fit_keys or {}).get(method, {})}
    fit = _check_table(d["fit"], allowed_fit, f"[fit] (method {method!r})", source)
    if method not in fit_methods:
        fitted = [n for n, f in FAMILY_SPECS.items() if method in _methods_of(f)]
        raise SpecError(
            f"{source}: method = {method!r} fits family = {_or(repr(n) for n in fitted)} only; "
            f"for {family} use {_or(repr(m) for m in fit_methods)}."
        )
    return {**fitter.defaults, **fit}


def _methods_of(family) -> tuple[str, ...]:
    """The ``[fit].method`` values that fit ``family`` (a FamilySpec): its own
    ``fit_methods`` and every registered fitter that names it in ``families``."""
    extra = [n for n, f in fitter_registry.registered().items() if family.name in f.families]
    return tuple(family.fit_methods) + tuple(m for m in extra if m not in family.fit_methods)


def _or(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def load_spec(path) -> Spec:
    """Read and check a TOML spec file.

    Raises:
        SpecError: a missing or unreadable file, invalid TOML (with its line), or
            any problem :func:`parse_spec` reports; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SpecError(f"{path}: no such spec file.")
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e}).") from None
    except RecursionError:
        raise SpecError(f"{path}: not a spec (nested too deeply to read).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read the spec ({e}).") from None
    return parse_spec(d, source=path)


def spec_text(spec: Spec) -> str:
    """The spec as TOML text (what a run directory stores; :func:`load_spec` reads it)."""
    lines = []
    if spec.description:
        lines.append(f"description = {_toml_value(spec.description)}")
    lines.append(f"seed = {spec.seed}")
    tables = {"data": spec.data, "source": spec.encoder, "model": spec.model, "fit": spec.fit}
    for name, table in tables.items():
        if table is None:
            continue
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


# TOML basic strings: these escapes, \uXXXX for every other control character
# (U+0000-U+001F, U+007F); everything else, non-BMP characters too, is written as is.
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n"}
_TOML_ESCAPES.update({"\f": "\\f", "\r": "\\r"})


def _toml_string(v: str) -> str:
    out = []
    for ch in v:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
