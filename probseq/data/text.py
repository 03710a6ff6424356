"""Text as token ids: the built-in English corpus, character vocabularies, text
files, and cutting one long id sequence into parts and rows.

Example:
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

from probseq.data._files import _read_file
from probseq.validation import check_int

__all__ = ["pydoc_text", "CharVocabulary", "split_contiguous", "cut_sequences", "read_text"]


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
        ids: a 1-D array (e.g. an encoded text), or a (T, ...) array such as a
            (T, D) series, cut along its first (time) axis.
        fractions: the share of each part, in order, summing to at most 1 (the rest
            is dropped); e.g. (0.9, 0.05, 0.05) for train, validation, test.

    Returns:
        A tuple of arrays, ``ids[:n0]``, ``ids[n0:n0 + n1]``, ...

    Example:
        >>> [p.tolist() for p in split_contiguous(np.arange(10), (0.6, 0.2, 0.2))]
        [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]]
    """
    a = np.asarray(ids)
    if a.ndim < 1:
        raise ValueError(f"ids must be 1-D or (T, ...) with time first; got shape {a.shape}.")
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
    length = check_int("length", length)
    rows = len(a) // length
    if rows == 0:
        raise ValueError(f"{len(a)} ids are fewer than one sequence of {length=}.")
    return a[: rows * length].reshape(rows, length)


def read_text(path) -> str:
    """The text of a UTF-8 file, e.g. a corpus for :func:`text_splits`.

    A leading byte-order mark is dropped and line endings become ``"\\n"`` (as
    Python's ``open`` does in text mode); nothing else is changed.

    Args:
        path: a str or ``os.PathLike``.

    Returns:
        The whole text as one str.

    Raises:
        ValueError: the file does not exist, is a directory, is empty (or only
            whitespace), or is not UTF-8 (says the byte offset and line).

    Example:
        >>> text = read_text("corpus.txt")  # doctest: +SKIP
        >>> splits = text_splits(text, sequence_length=128)  # doctest: +SKIP
    """
    return _read_file(path, "read_text")
