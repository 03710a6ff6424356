"""Sequences as arrays: padding ragged sequences into a batch with a mask, and
character-level text data that needs no download.

Example:
    >>> x, mask = pad_sequences([[1, 2, 3], [4]])
    >>> x.tolist(), mask.tolist()
    ([[1, 2, 3], [4, 0, 0]], [[True, True, True], [True, False, False]])

Text, from characters to training sequences:
    >>> text = pydoc_text()                      # English, ships with CPython
    >>> vocab = CharVocabulary.from_text(text)
    >>> ids = vocab.encode(text)                 # np.int32, one id per character
    >>> train, valid, test = split_contiguous(ids, (0.9, 0.05, 0.05))
    >>> x = cut_sequences(train, 128)            # (N, 128): fit_sgd's batch form
    >>> vocab.decode(x[0, :10])
    'The "asser'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = [
    "pad_sequences",
    "pydoc_text",
    "CharVocabulary",
    "split_contiguous",
    "cut_sequences",
]


def pad_sequences(
    sequences: Sequence, *, pad_value=0, name: str = "sequences", event_ndim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stack unequal-length sequences into one padded batch and its mask.

    Args:
        sequences: a non-empty list of arrays, each (T_i,) or (T_i, D), T_i >= 1.
        pad_value: what fills the steps after each sequence's end.
        name: how error messages refer to the list.
        event_ndim: if given, every sequence must have exactly 1 + event_ndim dims.

    Returns:
        (B, T_max[, D]) padded array and the (B, T_max) boolean mask of valid steps.
    """
    arrays = [np.asarray(s) for s in sequences]
    if not arrays:
        raise ValueError(f"{name} is an empty list; give at least one sequence.")
    for i, a in enumerate(arrays):
        ok = a.ndim in (1, 2) if event_ndim is None else a.ndim == event_ndim + 1
        if not ok:
            form = (
                "(T,) or (T, D)" if event_ndim is None else ("(T,)", "(T, D)")[min(event_ndim, 1)]
            )
            raise ValueError(
                f"{name}[{i}] must be one sequence of shape {form}; got shape {a.shape}."
            )
        if a.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"{name}[{i}] has trailing shape {a.shape[1:]}, but {name}[0] has "
                f"{arrays[0].shape[1:]}; all sequences need the same trailing shape."
            )
        if a.shape[0] == 0:
            raise ValueError(f"{name}[{i}] is an empty sequence (length 0).")
    lengths = np.array([len(a) for a in arrays])
    t_max = int(lengths.max())
    out = np.full((len(arrays), t_max) + arrays[0].shape[1:], pad_value, np.result_type(*arrays))
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out, np.arange(t_max)[None, :] < lengths[:, None]


# ----------------------------------------------------------------------------- text
def pydoc_text() -> str:
    """The English text of CPython's help topics (``pydoc_data.topics``), offline.

    The standard library ships the Python Language Reference sections that ``help()``
    shows, as a dict of str; this joins its values in sorted key order (each value
    ends with a newline). The text is PSF-licensed and changes between Python
    versions: record ``len(text)`` or a hash next to any result. On CPython 3.11.7
    it has 79 topics, 464,970 characters, 103 distinct ones, sha256 prefix
    ``37d06970fc926e60``, and a character unigram entropy of 4.69 bits.

    Returns:
        The whole text as one str.
    """
    from pydoc_data.topics import topics

    return "".join(topics[name] for name in sorted(topics))


@dataclasses.dataclass(frozen=True)
class CharVocabulary:
    """A character vocabulary: id i stands for ``chars[i]``.

    Args:
        chars: the distinct characters, in id order.

    Example:
        >>> vocab = CharVocabulary.from_text("hello")
        >>> vocab.chars, vocab.vocab_size
        ('ehlo', 4)
        >>> ids = vocab.encode("hole")
        >>> ids.tolist(), vocab.decode(ids)
        ([1, 3, 2, 0], 'hole')
    """

    chars: str

    def __post_init__(self):
        if not isinstance(self.chars, str) or not self.chars:
            raise ValueError(f"chars must be a non-empty str, got {self.chars!r:.60}")
        if len(set(self.chars)) != len(self.chars):
            dup = next(c for i, c in enumerate(self.chars) if c in self.chars[:i])
            raise ValueError(f"chars must be distinct; {dup!r} appears twice.")

    @classmethod
    def from_text(cls, text: str) -> CharVocabulary:
        """The sorted distinct characters of ``text``."""
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty str.")
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        """Number of characters (the ``vocab_size`` of a model over these ids)."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as a (len(text),) np.int32 array of ids.

        Raises:
            ValueError: ``text`` has a character outside the vocabulary (says which,
                and where).
        """
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}.")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
        order = np.argsort(table)
        pos = np.searchsorted(table[order], codes)
        pos = np.minimum(pos, len(table) - 1)
        ids = order[pos]
        unknown = table[ids] != codes
        if unknown.any():
            i = int(np.argmax(unknown))
            raise ValueError(
                f"text[{i}] = {text[i]!r} is not in the vocabulary of {self.vocab_size} "
                "characters; build it from text that contains every character."
            )
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        """The str for a 1-D sequence of ids in [0, vocab_size)."""
        a = np.asarray(ids)
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"ids must be a 1-D integer array; got {a.dtype} shape {a.shape}.")
        bad = (a < 0) | (a >= self.vocab_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"ids[{i}] = {int(a[i])} is outside [0, {self.vocab_size}).")
        return "".join(self.chars[i] for i in a.tolist())


def split_contiguous(ids, fractions: Sequence[float] = (0.9, 0.05, 0.05)) -> tuple:
    """Cut one long sequence into consecutive, non-overlapping parts.

    Args:
        ids: a 1-D array (e.g. an encoded text).
        fractions: the share of each part, in order, summing to at most 1 (the rest
            is dropped); e.g. (0.9, 0.05, 0.05) for train, validation, test.

    Returns:
        A tuple of 1-D arrays, ``ids[:n0]``, ``ids[n0:n0 + n1]``, ...

    Example:
        >>> [p.tolist() for p in split_contiguous(np.arange(10), (0.6, 0.2, 0.2))]
        [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]
    """
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"ids must be 1-D; got shape {a.shape}.")
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or f.size == 0 or (f <= 0).any() or f.sum() > 1 + 1e-9:
        raise ValueError(f"fractions must be positive and sum to at most 1; got {fractions!r}.")
    bounds = np.floor(np.cumsum(f) * len(a) + 1e-9).astype(int)
    parts = np.split(a, bounds)[: len(f)]
    for i, part in enumerate(parts):
        if len(part) == 0:
            raise ValueError(f"part {i} of {len(a)} ids with {fractions=} is empty.")
    return tuple(parts)


def cut_sequences(ids, length: int) -> np.ndarray:
    """Cut a 1-D sequence into ``len(ids) // length`` consecutive rows of ``length``.

    The remainder (fewer than ``length`` trailing ids) is dropped. With
    ``length = len(ids) // num_rows`` this gives ``num_rows`` long contiguous streams,
    the layout for truncated BPTT (``fit_sgd(..., bptt_length=...)``).

    Example:
        >>> cut_sequences(np.arange(7), 3).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"ids must be 1-D; got shape {a.shape}.")
    if not isinstance(length, int | np.integer) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive int, got {length=}")
    rows = len(a) // length
    if rows == 0:
        raise ValueError(f"{len(a)} ids are fewer than one sequence of {length=}.")
    return a[: rows * length].reshape(rows, length)
