r"""Source/target pairs for conditional models: a text file of tab-separated lines.

The pair format (what ``probseq fit`` reads for a spec with ``kind = "pairs"``): a
UTF-8 text file with one pair per line,

::

    source<TAB>target

characters as tokens on both sides. Exactly one tab per line; neither side may be
empty; blank lines are skipped. What the target means is the spec's
``[data].target``:

* ``"sequence"`` (:class:`probseq.Seq2Seq`): a string of target characters; the
  model's target vocabulary is those characters plus an end-of-sequence token
  (id ``vocab_size - 1``) appended to every target.
* ``"label"`` (:class:`probseq.SequenceClassifier`): the whole target field is one
  class label (e.g. ``positive``).
* ``"tags"`` (:class:`probseq.SequenceTagger`): one tag character per source
  character (the two sides have equal lengths).

The source and target vocabularies are separate, built from the data a run is
fitted on (sorted), and saved with the run (:class:`PairEncoding`), so that new
files are encoded the same way; a symbol outside them is an error that names the
file, the line and the symbol.

``builtin:reversal`` (:func:`builtin_pairs`) is 20,000 random digit strings of
length 5-20 and their reversals, drawn from a fixed seed (no download).

Example:
    >>> pairs = builtin_pairs("reversal")
    >>> pairs.sources[0][::-1] == pairs.targets[0]
    True
    >>> enc = PairEncoding.from_pairs(pairs, "sequence")
    >>> enc.target_vocab_size, enc.eos           # 10 digits and the end token
    (11, 10)
    >>> src, tgt = enc.encode(pairs)
    >>> splits = pair_splits(src, tgt, (0.9, 0.05, 0.05))
    >>> splits.train.x.shape, splits.train.source.shape
    ((18000, 21), (18000, 20))
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from probseq.data._files import _file_name, _read_file
from probseq.data.builtin import reversal_pairs
from probseq.data.splits import _part_bounds
from probseq.data.text import CharVocabulary
from probseq.padding import pad_sequences

__all__ = [
    "Pairs",
    "PairEncoding",
    "PairSplit",
    "PairSplits",
    "TARGETS",
    "read_pairs",
    "builtin_pairs",
    "pair_names",
    "pair_batch",
    "pair_splits",
]

#: What a pair's target is: a character sequence, one class label, or a tag per source step.
TARGETS = ("sequence", "label", "tags")


class Pairs(NamedTuple):
    """Source/target pairs as strings, with where each came from.

    sources, targets: the two sides, one str each per pair.
    lines: (num_pairs,) the 1-based line of each pair in its file (for messages).
    origin: the file name or ``builtin:NAME``.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    lines: tuple[int, ...]
    origin: str

    def sha256(self) -> str:
        """SHA-256 of the pairs as ``source<TAB>target`` lines (their identity)."""
        digest = hashlib.sha256()
        for s, t in zip(self.sources, self.targets, strict=True):
            digest.update(f"{s}\t{t}\n".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()


def read_pairs(path) -> Pairs:
    """Read a pair file: ``source<TAB>target`` per line (see the module docstring).

    Raises:
        ValueError: a missing, empty or non-UTF-8 file, or a line without a tab,
            with more than one, or with an empty side (the message names the file
            and the line).
    """
    name = _file_name(path, "read_pairs")
    text = _read_file(path, "read_pairs")
    sources, targets, lines = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{name}, line {number}"
        if len(fields) != 2:
            what = "no tab" if len(fields) == 1 else f"{len(fields) - 1} tabs"
            raise ValueError(
                f"{where}: {what}; each line of a pair file is source<TAB>target "
                f"(exactly one tab); got {line[:60]!r}."
            )
        source, target = fields
        for side, value in (("source", source), ("target", target)):
            if not value:
                raise ValueError(f"{where}: the {side} is empty; got {line[:60]!r}.")
        sources.append(source)
        targets.append(target)
        lines.append(number)
    return Pairs(tuple(sources), tuple(targets), tuple(lines), name)


_BUILTIN = {"reversal": dict(seed=0, num=20_000, min_len=5, max_len=20)}


def pair_names() -> tuple[str, ...]:
    """Names of the built-in pair data sets (``builtin:NAME``)."""
    return tuple(_BUILTIN)


def builtin_pairs(name: str) -> Pairs:
    """A built-in pair data set, generated from a fixed seed (no download).

    ``"reversal"``: 20,000 random digit strings of length 5-20 (uniform) and their
    reversals, :func:`probseq.data.reversal_pairs` with ``numpy.random.default_rng(0)``.

    Raises:
        ValueError: an unknown name (lists the known ones).
    """
    if name not in _BUILTIN:
        raise ValueError(
            f"unknown built-in pairs {name!r}; available: "
            + ", ".join(f"builtin:{n}" for n in _BUILTIN)
            + "."
        )
    b = _BUILTIN[name]
    src, tgt = reversal_pairs(
        np.random.default_rng(b["seed"]), b["num"], b["min_len"], b["max_len"]
    )

    def digits(a):
        return "".join(map(str, a.tolist()))

    return Pairs(
        tuple(map(digits, src)),
        tuple(map(digits, tgt)),
        tuple(range(1, len(src) + 1)),
        f"builtin:{name}",
    )


def _index(symbols) -> dict:
    return {s: i for i, s in enumerate(symbols)}


def _encode_chars(text: str, index: dict, where: str, side: str) -> np.ndarray:
    try:
        return np.fromiter((index[c] for c in text), np.int32, len(text))
    except KeyError as e:
        raise ValueError(
            f"{where}: {side} symbol {e.args[0]!r} is not in the run's {side} vocabulary of "
            f"{len(index)} symbols ({''.join(index)[:40]!r}); fit on data that contains it."
        ) from None


@dataclasses.dataclass(frozen=True)
class PairEncoding:
    """How pairs become token ids: the source characters and the target symbols.

    Attributes:
        source: the source :class:`CharVocabulary` (id i is ``source.chars[i]``).
        target: what a target is, one of :data:`TARGETS`.
        symbols: the target symbols in id order: characters ("sequence", "tags") or
            whole labels ("label"). With "sequence", id ``len(symbols)`` is the
            end-of-sequence token.
    """

    source: CharVocabulary
    target: str
    symbols: tuple[str, ...]

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}; got {self.target!r}.")
        symbols = tuple(self.symbols)
        if not symbols or len(set(symbols)) != len(symbols):
            raise ValueError(f"target symbols must be distinct and not empty; got {symbols!r:.80}")
        if self.target != "label" and any(len(s) != 1 for s in symbols):
            raise ValueError(f"target = {self.target!r} takes single characters as symbols.")
        object.__setattr__(self, "symbols", symbols)

    @classmethod
    def from_pairs(cls, pairs: Pairs, target: str) -> PairEncoding:
        """The sorted distinct source characters and target symbols of ``pairs``."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}; got {target!r}.")
        source = CharVocabulary.from_text("".join(pairs.sources))
        if target == "label":
            symbols = tuple(sorted(set(pairs.targets)))
        else:
            symbols = tuple(sorted(set("".join(pairs.targets))))
        return cls(source, target, symbols)

    @property
    def target_vocab_size(self) -> int:
        """Target ids a model emits (the end token included for "sequence")."""
        return len(self.symbols) + (self.target == "sequence")

    @property
    def eos(self) -> int | None:
        """The end-of-sequence id ("sequence"), else None."""
        return len(self.symbols) if self.target == "sequence" else None

    def encode_source(self, text: str, where: str = "source") -> np.ndarray:
        """One source string as (len,) int32 ids (ValueError naming ``where``)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: a source is a non-empty string; got {text!r}.")
        return _encode_chars(text, _index(self.source.chars), where, "source")

    def encode(self, pairs: Pairs) -> tuple[list, list]:
        """(sources, targets): lists of int32 id arrays (targets of "sequence" end with
        the end token; of "label" are one id).

        Raises:
            ValueError: a symbol outside the vocabularies, or ("tags") a target whose
                length differs from its source's; the message names file and line.
        """
        src_index, tgt_index = _index(self.source.chars), _index(self.symbols)
        sources, targets = [], []
        for s, t, line in zip(pairs.sources, pairs.targets, pairs.lines, strict=True):
            where = f"{pairs.origin}, line {line}"
            sources.append(_encode_chars(s, src_index, where, "source"))
            if self.target == "label":
                if t not in tgt_index:
                    raise ValueError(
                        f"{where}: label {t!r} is not among the run's {len(self.symbols)} "
                        f"labels ({', '.join(map(repr, self.symbols[:10]))})."
                    )
                targets.append(np.array([tgt_index[t]], np.int32))
                continue
            ids = _encode_chars(t, tgt_index, where, "target")
            if self.target == "sequence":
                ids = np.append(ids, np.int32(self.eos)).astype(np.int32)
            elif len(t) != len(s):
                raise ValueError(
                    f"{where}: target = 'tags' needs one tag per source character; got a "
                    f"source of {len(s)} and {len(t)} tags."
                )
            targets.append(ids)
        return sources, targets

    def decode_target(self, ids) -> str:
        """Target ids as text: up to (without) the end token for "sequence"; the label
        for "label"; the tag characters for "tags"."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if self.target == "sequence" and self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        if self.target == "label":
            return self.symbols[ids[0]]
        return "".join(self.symbols[i] for i in ids)

    def to_dict(self) -> dict:
        """JSON form (what a run's ``data.json`` holds); :meth:`from_dict` reads it."""
        return {"source": self.source.chars, "target": self.target, "symbols": list(self.symbols)}

    @classmethod
    def from_dict(cls, d: dict) -> PairEncoding:
        """The encoding :meth:`to_dict` wrote."""
        return cls(CharVocabulary(d["source"]), d["target"], tuple(d["symbols"]))


class PairSplit(NamedTuple):
    """One part of a pair data set as padded batches: targets ``x`` (B, T) with
    ``mask``, and their sources (B, S) with ``source_mask``."""

    x: np.ndarray
    mask: np.ndarray
    source: np.ndarray
    source_mask: np.ndarray


class PairSplits(NamedTuple):
    """Train, validation and test parts of a pair data set."""

    train: PairSplit
    valid: PairSplit
    test: PairSplit


def pair_batch(sources: Sequence, targets: Sequence) -> PairSplit:
    """Pad encoded sources and targets (lists of id arrays) into a :class:`PairSplit`."""
    x, mask = pad_sequences(targets, name="targets")
    s, smask = pad_sequences(sources, name="sources")
    return PairSplit(x.astype(np.int32), mask, s.astype(np.int32), smask)


def pair_splits(sources: Sequence, targets: Sequence, fractions=(0.9, 0.05, 0.05)) -> PairSplits:
    """Contiguous train/valid/test parts of encoded pairs (the first ``fractions[0]``
    of the pairs, in file order, for training, and so on), each padded.

    Raises:
        ValueError: bad fractions, or a part that would have no pair.
    """
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets.")
    bounds = _part_bounds(len(sources), fractions, "pairs")
    return PairSplits(*(pair_batch(sources[a:b], targets[a:b]) for a, b in bounds))
