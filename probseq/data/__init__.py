"""Sequences as arrays: padding ragged sequences into a batch with a mask, text and
CSV files, standardization, built-in data sets that need no download, and the
train/validation/test splits the command line and the examples use.

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

The same in one call, keeping every character (the last row of each part is
shorter, padded and masked):
    >>> splits = text_splits(text, sequence_length=128)
    >>> splits.train.x.shape[1], splits.vocabulary.vocab_size
    (128, 103)

Real-valued series, from a file or a built-in data set to standardized (B, T, D)
batches (the scaler is fit on the training part only):
    >>> nile = series("nile")                    # needs statsmodels
    >>> splits = series_splits(nile.values, fractions=(0.8, 0.1, 0.1))
    >>> splits.train.x.shape                     # one sequence of 80 steps, D = 1
    (1, 80, 1)
    >>> orig = splits.scaler.inverse(splits.valid.x)   # back to 10^8 m^3
    >>> table = read_csv("prices.csv", columns="open,close")  # doctest: +SKIP
    >>> x, mask = from_arrays([np.ones(5), np.ones(3)])       # ragged -> padded

Simulated data with known parameters (the occasionally dishonest casino):
    >>> c = casino(seed=0, num_sequences=2, num_timesteps=100)
    >>> c.rolls.shape, c.transition_matrix.tolist()
    ((2, 100), [[0.95, 0.05], [0.1, 0.9]])
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "pad_sequences",
    "pydoc_text",
    "CharVocabulary",
    "split_contiguous",
    "cut_sequences",
    "read_text",
    "read_csv",
    "CsvColumns",
    "from_arrays",
    "Standardizer",
    "casino",
    "Casino",
    "series",
    "series_names",
    "Series",
    "Split",
    "DataSplits",
    "cut_rows",
    "text_splits",
    "series_splits",
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
    if not isinstance(length, int | np.integer) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive int, got {length=}")
    rows = len(a) // length
    if rows == 0:
        raise ValueError(f"{len(a)} ids are fewer than one sequence of {length=}.")
    return a[: rows * length].reshape(rows, length)


# ----------------------------------------------------------------------------- files
def _file_name(path, what: str) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise ValueError(
            f"{what}: path must be a str or os.PathLike; got {type(path).__name__}."
        ) from None


def _read_file(path, what: str) -> str:
    """A file's text (UTF-8, BOM dropped, newlines made "\\n"), or a one-line ValueError."""
    name = _file_name(path, what)
    if not os.path.exists(name):
        raise ValueError(f"{what}: no such file {name!r}.")
    if os.path.isdir(name):
        raise ValueError(f"{what}: {name!r} is a directory, not a file.")
    with open(name, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{what}: {name!r} is not UTF-8 text: byte {raw[e.start]:#04x} at byte offset "
            f"{e.start} (line {line}) does not decode; re-save the file as UTF-8."
        ) from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        detail = "empty" if not raw else "empty (only whitespace)"
        raise ValueError(f"{what}: {name!r} is {detail}.")
    return text


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


class CsvColumns(NamedTuple):
    """Numeric columns of a CSV file, one row per time step."""

    values: np.ndarray  # (T, D) float64
    names: tuple[str, ...]  # (D,) header names of the chosen columns


def _parse_number(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _name_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _column_indices(columns, header: list[str], where: str) -> list[int]:
    if isinstance(columns, str):
        items: list = [c.strip() for c in columns.split(",")]
    elif isinstance(columns, int | np.integer) and not isinstance(columns, bool):
        items = [columns]
    elif isinstance(columns, list | tuple):
        items = list(columns)
    else:
        raise ValueError(
            f"{where}: columns must be None, a list of column names or 0-based indices, or a "
            f"comma-separated str such as 'a,b'; got {type(columns).__name__}."
        )
    if not items:
        raise ValueError(f"{where}: columns is empty; name at least one column.")
    available = f"the columns are {_name_list(header)}"
    out: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int | np.integer):
            raise ValueError(
                f"{where}: each column must be a name (str) or a 0-based index (int); got {item!r}."
            )
        if isinstance(item, str):
            matches = [j for j, h in enumerate(header) if h == item]
            if len(matches) > 1:
                raise ValueError(
                    f"{where}: the header names {item!r} {len(matches)} times (columns "
                    f"{', '.join(map(str, matches))}); choose it by 0-based index instead."
                )
            if matches:
                index = matches[0]
            elif item.isdecimal():
                index = int(item)
            else:
                raise ValueError(f"{where}: no column named {item!r}; {available}.")
        else:
            index = int(item)
        if not 0 <= index < len(header):
            raise ValueError(
                f"{where}: column index {index} is out of range; the file has {len(header)} "
                f"columns (indices 0 to {len(header) - 1}): {_name_list(header)}."
            )
        if index in out:
            raise ValueError(f"{where}: column {header[index]!r} is chosen twice.")
        out.append(index)
    return out


def read_csv(path, columns=None) -> CsvColumns:
    """Numeric columns of a CSV file whose first row is a header.

    Fields are comma-separated (the ``csv`` module's default dialect, so quoted
    fields may hold commas); header names and cells are stripped of surrounding
    whitespace; blank lines are skipped. Every chosen cell must be a finite
    number: ``nan``, ``inf`` and empty cells are errors (fill gaps before
    reading, e.g. by interpolation).

    Args:
        path: a str or ``os.PathLike``.
        columns: which columns to read, in this order:

            * None: every column that holds a finite number in every row (a
              column with one text or empty cell is left out);
            * a list or tuple of header names or 0-based int indices;
            * a comma-separated str, ``"a,b"`` (the command line's form); an item
              that is no header name but a decimal integer, ``"0,2"``, is an index.

    Returns:
        :class:`CsvColumns`: ``values`` (T, D) float64, ``names`` (D,) str.

    Raises:
        ValueError: one line naming the file, for: a missing, empty or non-UTF-8
            file; no data rows; a row whose number of fields differs from the
            header's; an unknown column name (lists the available ones); an index
            out of range; a chosen cell that is empty or not a finite number (says
            its row number in the file, the header being row 1, the column name
            and the text); no numeric column when ``columns`` is None.

    Example:
        >>> table = read_csv("weather.csv", columns="temp,pressure")  # doctest: +SKIP
        >>> table.values.shape, table.names  # doctest: +SKIP
        ((365, 2), ('temp', 'pressure'))
    """
    name = _file_name(path, "read_csv")
    text = _read_file(path, "read_csv")
    where = f"read_csv: {name!r}"
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    header_line = 1
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header, header_line = [c.strip() for c in row], reader.line_num
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{where} row {reader.line_num} has {len(row)} fields, but the header "
                    f"(row {header_line}) has {len(header)}; every row needs one field per "
                    "column."
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise ValueError(f"{where} row {reader.line_num} is not valid CSV: {e}.") from None
    if header is None:
        raise ValueError(f"{where} has no header row (only blank lines).")
    if not rows:
        raise ValueError(f"{where} has a header but no data rows.")
    if columns is None:
        chosen = [
            j for j in range(len(header)) if all(_parse_number(r[j]) is not None for r in rows)
        ]
        if not chosen:
            raise ValueError(
                f"{where} has no column that holds a finite number in every row (columns: "
                f"{_name_list(header)}); pass columns= to see which cell is not a number."
            )
    else:
        chosen = _column_indices(columns, header, where)
    values = np.empty((len(rows), len(chosen)), np.float64)
    for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
        for k, j in enumerate(chosen):
            v = _parse_number(row[j])
            if v is None:
                cell = row[j].strip()
                what = "is empty" if not cell else f"{cell!r} is not a finite number"
                raise ValueError(f"{where} row {line}, column {header[j]!r}: {what}.")
            values[i, k] = v
    return CsvColumns(values, tuple(header[j] for j in chosen))


# ----------------------------------------------------------------------------- arrays
def _check_real(a: np.ndarray, name: str, hint: str = "") -> None:
    if a.dtype == np.bool_ or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        extra = " (cast booleans with .astype(float))" if a.dtype == np.bool_ else hint
        raise ValueError(f"{name} must hold integers or real numbers; got dtype {a.dtype}{extra}.")


def _first_nonfinite(a: np.ndarray, valid: np.ndarray | None = None) -> tuple[int, ...] | None:
    if not np.issubdtype(a.dtype, np.floating):
        return None
    bad = ~np.isfinite(a)
    if valid is not None:
        bad &= valid.reshape(valid.shape + (1,) * (a.ndim - valid.ndim))
    if not bad.any():
        return None
    return tuple(int(i) for i in np.argwhere(bad)[0])


def from_arrays(data, *, event_ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Make arrays from memory (or ``np.load``) a batch ``(x, mask)`` for any model.

    Integer arrays are token ids (scalar observations, ``event_ndim=0``) and real
    arrays are vectors of ``obs_dim`` values (``event_ndim=1``); pass ``event_ndim``
    to override, e.g. ``event_ndim=1`` for integer counts under a Poisson head.

    * one sequence, tokens (T,) or reals (T,) / (T, D): a batch of one, (1, T) or
      (1, T, D), with a (T,) real series taken as D = 1;
    * a rectangular batch, tokens (B, T) or reals (B, T, D): as it is, all-True mask;
    * a list of sequences of unequal lengths: padded with 0 by :func:`pad_sequences`,
      the mask False on the padding.

    Args:
        data: an array, a list of numbers (one sequence), or a list of arrays.
        event_ndim: 0 (tokens) or 1 (vectors); None infers it from the dtype.

    Returns:
        ``x`` (B, T) or (B, T, D), in the data's dtype, and ``mask`` (B, T) bool.

    Raises:
        ValueError: a non-numeric (or boolean) dtype, a wrong number of dimensions,
            an empty sequence, or a NaN/inf at a valid step (says the index).

    Example:
        >>> x, mask = from_arrays([np.array([1.0, 2.0, 3.0]), np.array([4.0])])
        >>> x.shape, mask.tolist()
        ((2, 3, 1), [[True, True, True], [True, False, False]])
        >>> from_arrays(np.array([0, 1, 2]))[0].shape
        (1, 3)
    """
    if event_ndim is not None and (isinstance(event_ndim, bool) or event_ndim not in (0, 1)):
        raise ValueError(f"event_ndim must be None, 0 (tokens) or 1 (vectors); got {event_ndim!r}.")
    hint = "; tokens must be integers, real values floats"
    if isinstance(data, list | tuple) and data and any(np.ndim(d) > 0 for d in data):
        seqs = [np.asarray(d) for d in data]
        for i, a in enumerate(seqs):
            _check_real(a, f"data[{i}]", hint)
        e = event_ndim
        if e is None:
            e = 0 if np.issubdtype(np.result_type(*seqs), np.integer) else 1
        if e == 1:
            seqs = [a[:, None] if a.ndim == 1 else a for a in seqs]
        x, mask = pad_sequences(seqs, name="data", event_ndim=e)
    else:
        x = np.asarray(data)
        _check_real(x, "data", hint)
        e = event_ndim
        if e is None:
            e = 0 if np.issubdtype(x.dtype, np.integer) else 1
        if e == 1 and x.ndim == 1:
            x = x[:, None]
        if x.ndim == e + 1:
            x = x[None]
        elif x.ndim != e + 2:
            form = "(T,) or (B, T)" if e == 0 else "(T,), (T, D) or (B, T, D)"
            raise ValueError(
                f"data must be {'token ids' if e == 0 else 'real vectors'} of shape {form}; "
                f"got shape {np.shape(data)}."
            )
        if 0 in x.shape:
            raise ValueError(f"data is empty: shape {np.shape(data)}.")
        mask = np.ones(x.shape[:2], bool)
    bad = _first_nonfinite(x, mask)
    if bad is not None:
        raise ValueError(f"data has a non-finite value {x[bad]} at index {bad} (of the batch).")
    return x, mask


# ----------------------------------------------------------------------------- scaling
def _float_tuple(values, name: str) -> tuple[float, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        raise ValueError(f"{name} must be a sequence of numbers; got {type(values).__name__}.")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool | str | bytes) or not isinstance(v, int | float | np.number):
            raise ValueError(f"{name}[{i}] must be a number; got {v!r}.")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{name}[{i}] must be finite; got {f}.")
        out.append(f)
    if not out:
        raise ValueError(f"{name} is empty; give one value per dimension.")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Per-dimension affine scaling ``z = (y - mean) / scale`` and its inverse.

    Fit it on training data only, then apply it to every split, to forecasts and
    to samples. It holds plain tuples of floats, so it is hashable and
    ``to_dict()`` is JSON-ready. Densities change by the Jacobian: per step,
    ``log p_y(y) = log p_z(z) - log_abs_det_jacobian``.

    Args:
        mean: one float per dimension.
        scale: one positive float per dimension.

    Example:
        >>> s = Standardizer.fit(np.array([1.0, 2.0, 3.0]))
        >>> s.mean, s.transform(np.array([3.0])).round(4).tolist()
        ((2.0,), [1.2247])
        >>> Standardizer.from_dict(s.to_dict()) == s
        True
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self):
        mean = _float_tuple(self.mean, "mean")
        scale = _float_tuple(self.scale, "scale")
        if len(mean) != len(scale):
            raise ValueError(
                f"mean has {len(mean)} values but scale has {len(scale)}; give one of each "
                "per dimension."
            )
        for i, s in enumerate(scale):
            if s <= 0:
                raise ValueError(f"scale[{i}] must be positive; got {s}.")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scale", scale)

    @property
    def obs_dim(self) -> int:
        """Number of dimensions D."""
        return len(self.mean)

    @classmethod
    def fit(cls, x, mask=None) -> Standardizer:
        """Mean and standard deviation of each dimension over the valid steps.

        The standard deviation is the population one (divisor N, as in
        scikit-learn's ``StandardScaler``). A dimension that is constant over the
        valid steps gets scale 1.0 rather than 0, so it is centred but not divided
        by zero.

        Args:
            x: real data, (T,) (D = 1), (T, D), (B, T, D), or (B, T) with a mask of
                the same shape (D = 1).
            mask: optional boolean (B, T) (or (T,)) marking valid steps; padding
                is ignored, whatever it holds.

        Raises:
            ValueError: non-numeric data, shapes that do not fit together, no valid
                step, or a NaN/inf at a valid step (says its index in ``x``).
        """
        a = np.asarray(x)
        _check_real(a, "x")
        if mask is None:
            if a.ndim not in (1, 2, 3):
                raise ValueError(
                    f"x must be (T,), (T, D) or (B, T, D); got shape {a.shape} (rank {a.ndim})."
                )
            m = np.ones(a.shape[:-1] if a.ndim > 1 else a.shape, bool)
        else:
            m = np.asarray(mask)
            if m.dtype != np.bool_:
                if not np.issubdtype(m.dtype, np.integer) or ((m != 0) & (m != 1)).any():
                    raise ValueError(f"mask must be boolean (or 0/1); got dtype {m.dtype}.")
                m = m.astype(bool)
            fits = (m.shape == a.shape and a.ndim in (1, 2)) or (
                m.shape == a.shape[:-1] and a.ndim in (2, 3)
            )
            if not fits:
                raise ValueError(
                    f"mask has shape {m.shape}, which does not fit x of shape {a.shape}: give "
                    "x (T, D) or (B, T, D) with mask (T,) or (B, T), or x (T,) or (B, T) "
                    "with a mask of the same shape."
                )
        added = m.shape == a.shape
        if added:
            a = a[..., None]
        if a.shape[-1] == 0:
            raise ValueError(f"x has no dimensions to standardize: shape {np.shape(x)}.")
        bad = _first_nonfinite(a, m)
        if bad is not None:
            idx = bad[:-1] if added else bad
            raise ValueError(f"x has a non-finite value {a[bad]} at index {idx}.")
        valid = a[m].astype(np.float64)
        if len(valid) == 0:
            raise ValueError("mask has no valid step; there is nothing to fit.")
        mean = valid.mean(axis=0)
        std = valid.std(axis=0)
        constant = (np.ptp(valid, axis=0) == 0) | (std == 0)
        scale = np.where(constant, 1.0, std)
        return cls(tuple(mean.tolist()), tuple(scale.tolist()))

    def _broadcast(self, x, name: str):
        a = np.asarray(x)
        _check_real(a, name)
        a = a.astype(np.float64)
        if self.obs_dim == 1:
            return a, self.mean[0], self.scale[0]
        if a.ndim == 0 or a.shape[-1] != self.obs_dim:
            raise ValueError(
                f"{name} has shape {a.shape}, but this Standardizer has {self.obs_dim} "
                f"dimensions: the last axis must have length {self.obs_dim}."
            )
        return a, np.asarray(self.mean), np.asarray(self.scale)

    def transform(self, x) -> np.ndarray:
        """``(x - mean) / scale`` as float64, on any leading shape ``(..., D)``.

        With D = 1 the scaling is a scalar and any shape is accepted, so a (T,)
        series stays (T,).
        """
        a, mean, scale = self._broadcast(x, "x")
        return (a - mean) / scale

    def inverse(self, x) -> np.ndarray:
        """``x * scale + mean`` as float64: back to the original units.

        Takes any leading shape ``(..., D)``: a forecast's sample paths (S, H, D),
        its quantiles, a batch (B, T, D); with D = 1, any shape at all.
        """
        a, mean, scale = self._broadcast(x, "x")
        return a * scale + mean

    @property
    def log_abs_det_jacobian(self) -> float:
        """``sum(log(scale))``, nats per step: the log-density of one original step
        is the standardized one minus this."""
        return float(np.sum(np.log(self.scale)))

    def to_dict(self) -> dict:
        """``{"mean": [...], "scale": [...]}``, lists of floats (JSON-ready)."""
        return {"mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d) -> Standardizer:
        """Inverse of :meth:`to_dict`; the keys must be exactly ``mean`` and ``scale``."""
        if not isinstance(d, Mapping):
            raise ValueError(
                f"Standardizer.from_dict takes a dict with keys 'mean' and 'scale'; got "
                f"{type(d).__name__}."
            )
        missing = [k for k in ("mean", "scale") if k not in d]
        extra = [k for k in d if k not in ("mean", "scale")]
        if missing or extra:
            detail = []
            if missing:
                detail.append(f"missing {', '.join(map(repr, missing))}")
            if extra:
                detail.append(f"unexpected {', '.join(map(repr, extra))}")
            raise ValueError(
                f"Standardizer.from_dict: {'; '.join(detail)}; expected exactly the keys "
                "'mean' and 'scale'."
            )
        return cls(d["mean"], d["scale"])


# ----------------------------------------------------------------------------- built-in data
def _check_count(value, name: str, minimum: int = 1) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {name}={value!r}.")


class Casino(NamedTuple):
    """Rolls of the occasionally dishonest casino and the parameters that made them."""

    rolls: np.ndarray  # (B, T) int32, die face minus 1: 0..5
    states: np.ndarray  # (B, T) int32, 0 = fair die, 1 = loaded die
    initial_probs: np.ndarray  # (2,)
    transition_matrix: np.ndarray  # (2, 2), row = from, column = to
    emission_probs: np.ndarray  # (2, 6), row = die, column = face - 1


def casino(seed: int = 0, *, num_sequences: int = 5, num_timesteps: int = 300) -> Casino:
    """Simulate the occasionally dishonest casino (Durbin et al., 1998, p. 54).

    A casino rolls a fair die, and now and then switches to a loaded one. The
    hidden state is the die (0 fair, 1 loaded); the observation is the face:

    * fair: every face 1/6; loaded: six with probability 1/2, the others 1/10;
    * P(fair -> loaded) = 0.05, P(loaded -> fair) = 0.10;
    * initial state uniform, (0.5, 0.5) (as in dynamax's casino notebooks).

    It is a :class:`probseq.CategoricalHMM` (2 states, 6 symbols) with known
    parameters: ``CategoricalHMM(2, 6).init(key, initial_probs=c.initial_probs,
    transition_matrix=c.transition_matrix, emission_probs=c.emission_probs)``.

    Args:
        seed: a non-negative int for ``numpy.random.default_rng``; the same seed
            gives the same data.
        num_sequences: B, independent sequences.
        num_timesteps: T, rolls per sequence.

    Returns:
        :class:`Casino`.

    Example:
        >>> c = casino(seed=0, num_sequences=2, num_timesteps=6)
        >>> c.rolls.shape, c.rolls.dtype, c.emission_probs[1].tolist()
        ((2, 6), dtype('int32'), [0.1, 0.1, 0.1, 0.1, 0.1, 0.5])
    """
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int such as seed=0; got seed={seed!r}.")
    _check_count(num_sequences, "num_sequences")
    _check_count(num_timesteps, "num_timesteps")
    initial_probs = np.array([0.5, 0.5])
    transition_matrix = np.array([[0.95, 0.05], [0.10, 0.90]])
    emission_probs = np.array([[1 / 6] * 6, [0.1] * 5 + [0.5]])
    rng = np.random.default_rng(int(seed))
    shape = (int(num_sequences), int(num_timesteps))
    u = rng.random(shape)
    states = np.empty(shape, np.int32)
    states[:, 0] = u[:, 0] >= initial_probs[0]
    for t in range(1, shape[1]):
        states[:, t] = u[:, t] >= transition_matrix[states[:, t - 1], 0]
    # Inverse-CDF sampling of the faces: count the cumulative thresholds passed.
    thresholds = np.cumsum(emission_probs, axis=1)[:, :-1]
    v = rng.random(shape)
    rolls = (v[..., None] >= thresholds[states]).sum(axis=-1).astype(np.int32)
    return Casino(rolls, states, initial_probs, transition_matrix, emission_probs)


class Series(NamedTuple):
    """A real time series with its time index and provenance."""

    values: np.ndarray  # (T,) or (T, D) float64
    index: np.ndarray  # (T,) float64 times, decimal years
    name: str
    description: str  # what it measures, units, span, source, any preprocessing


_SERIES_NAMES = ("sunspots", "nile", "co2", "elnino")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def series_names() -> tuple[str, ...]:
    """The names :func:`series` knows."""
    return _SERIES_NAMES


def _decimal_years(dates) -> np.ndarray:
    """datetime64 dates -> year + fraction of that year elapsed."""
    d = np.asarray(dates).astype("datetime64[D]")
    year = d.astype("datetime64[Y]")
    start = year.astype("datetime64[D]")
    length = ((year + 1).astype("datetime64[D]") - start).astype(np.float64)
    return 1970.0 + year.astype(np.float64) + (d - start).astype(np.float64) / length


def _span(index: np.ndarray) -> str:
    return f"{int(index[0])}-{int(index[-1])}"


def _sunspots(datasets) -> Series:
    d = datasets.sunspots.load_pandas().data
    values = d["SUNACTIVITY"].to_numpy(np.float64)
    index = d["YEAR"].to_numpy(np.float64)
    return Series(
        values,
        index,
        "sunspots",
        f"Yearly sunspot activity (column SUNACTIVITY: yearly mean sunspot number, the "
        f"pre-2015 'version 1' series), {_span(index)}, {len(values)} values. Units: "
        "sunspot number (a dimensionless count index). Index: year. Source: NOAA National "
        "Geophysical Data Center, via statsmodels.datasets.sunspots.",
    )


def _nile(datasets) -> Series:
    d = datasets.nile.load_pandas().data
    values = d["volume"].to_numpy(np.float64)
    index = d["year"].to_numpy(np.float64)
    return Series(
        values,
        index,
        "nile",
        f"Annual flow of the river Nile at Aswan (column volume), {_span(index)}, "
        f"{len(values)} values. Units: 10^8 cubic metres per year. Index: year. Source: "
        "Cobb (1978), Biometrika 65(2), 243-251, via statsmodels.datasets.nile.",
    )


def _co2(datasets) -> Series:
    d = datasets.co2.load_pandas().data
    raw = d["co2"].to_numpy(np.float64)
    dates = d.index.to_numpy().astype("datetime64[D]")
    index = _decimal_years(dates)
    known = np.isfinite(raw)
    values = np.interp(index, index[known], raw[known])
    missing = int((~known).sum())
    return Series(
        values,
        index,
        "co2",
        f"Weekly atmospheric CO2 concentration at Mauna Loa Observatory, Hawaii (column "
        f"co2), {dates[0]} to {dates[-1]}, {len(values)} weeks. Units: ppmv (parts per "
        f"million by volume). {missing} missing weeks ({100 * missing / len(values):.1f}%) "
        "were filled by linear interpolation in time. Index: decimal year of each weekly "
        "sample date. Source: Keeling and Whorf (2004), Scripps Institution of "
        "Oceanography (CDIAC), via statsmodels.datasets.co2.",
    )


def _elnino(datasets) -> Series:
    d = datasets.elnino.load_pandas().data
    values = d[list(_MONTHS)].to_numpy(np.float64).reshape(-1)
    years = d["YEAR"].to_numpy(np.float64)
    index = (years[:, None] + np.arange(12)[None, :] / 12.0).reshape(-1)
    return Series(
        values,
        index,
        "elnino",
        f"Monthly mean sea surface temperature in the Nino 1+2 region of the eastern "
        f"Pacific, {_span(index)}, {len(values)} months (the data set's 12 monthly columns "
        "JAN..DEC per year, read year by year into one series). Units: degrees Celsius. "
        "Index: decimal year at the start of each month, year + (month - 1) / 12. Source: "
        "NOAA National Weather Service Climate Prediction Center, ERSST.V3B, via "
        "statsmodels.datasets.elnino.",
    )


_SERIES_LOADERS = {"sunspots": _sunspots, "nile": _nile, "co2": _co2, "elnino": _elnino}


def series(name: str) -> Series:
    """A real time series that statsmodels ships (no download).

    ========  =================================================  ======
    name      what                                               T
    ========  =================================================  ======
    sunspots  yearly sunspot number, 1700-2008                   309
    nile      annual Nile flow at Aswan (10^8 m^3), 1871-1970    100
    co2       weekly Mauna Loa CO2 (ppmv), 1958-2001; 59 gaps    2284
              filled by linear interpolation in time
    elnino    monthly Nino 1+2 sea surface temperature (deg C),  732
              1950-2010
    ========  =================================================  ======

    Args:
        name: one of :func:`series_names`.

    Returns:
        :class:`Series` with ``values`` (T,) float64, ``index`` in decimal years and a
        ``description`` that gives the source and units.

    Raises:
        ValueError: an unknown name (lists the known ones).
        ModuleNotFoundError: statsmodels is not installed
            (``pip install 'probseq[series]'``).

    Example:
        >>> nile = series("nile")
        >>> nile.values.shape, nile.index[:2].tolist()
        ((100,), [1871.0, 1872.0])
    """
    if not isinstance(name, str) or name not in _SERIES_LOADERS:
        raise ValueError(f"unknown series {name!r}; the built-in series are {_SERIES_NAMES}.")
    try:
        from statsmodels import datasets
    except ModuleNotFoundError as e:
        if not (e.name or "statsmodels").startswith("statsmodels"):
            raise
        raise ModuleNotFoundError(
            f"probseq.data.series({name!r}) reads the data sets that statsmodels ships; "
            "install it with: pip install 'probseq[series]'",
            name="statsmodels",
        ) from None
    return _SERIES_LOADERS[name](datasets)


# ----------------------------------------------------------------------------- splits
class Split(NamedTuple):
    """One part of a data set as a padded batch."""

    x: np.ndarray  # (B, T) int32 token ids, or (B, T, D) float64 values
    mask: np.ndarray  # (B, T) bool, True on valid steps (a prefix of each row)


class DataSplits(NamedTuple):
    """Train, validation and test parts, with what encodes them."""

    train: Split
    valid: Split
    test: Split
    vocabulary: CharVocabulary | None  # text: id i is vocabulary.chars[i]
    scaler: Standardizer | None  # series: x = scaler.transform(original values)


_PART_NAMES = ("train", "valid", "test")


def _part_bounds(n: int, fractions, what: str) -> list[tuple[int, int]]:
    try:
        f = [float(v) for v in fractions]
        ok = len(f) == 3 and not any(isinstance(v, bool) for v in fractions)
    except (TypeError, ValueError):
        ok = False
    if not ok or not all(math.isfinite(v) and v > 0 for v in f) or sum(f) > 1 + 1e-9:
        raise ValueError(
            "fractions must be three positive numbers (train, valid, test) summing to at "
            f"most 1; got fractions={fractions!r}."
        )
    ends = [math.floor(c * n + 1e-9) for c in np.cumsum(f)]
    if abs(sum(f) - 1) <= 1e-9:
        ends[-1] = n  # no step lost to rounding
    starts = [0] + ends[:-1]
    for part, a, b in zip(_PART_NAMES, starts, ends, strict=True):
        if b <= a:
            raise ValueError(
                f"the {part} part is empty: {n} {what} with fractions={tuple(fractions)!r} "
                f"leave no step for it; give more data or a larger {part} fraction."
            )
    return list(zip(starts, ends, strict=True))


def _check_sequence_length(length, allow_none: bool) -> None:
    if length is None and allow_none:
        return
    if not isinstance(length, int | np.integer) or isinstance(length, bool) or length < 1:
        form = "None or a positive int" if allow_none else "a positive int"
        raise ValueError(f"sequence_length must be {form}; got sequence_length={length!r}.")


def cut_rows(part, length: int | None) -> Split:
    """Cut a (n, ...) array into consecutive rows of ``length`` steps; the remainder
    is one last, shorter row (padded with 0, mask False), so no step is lost.
    ``length`` None (or >= n): one row.

    Example:
        >>> s = cut_rows(np.arange(5), 2)
        >>> s.x.tolist(), s.mask.sum(axis=1).tolist()
        ([[0, 1], [2, 3], [4, 0]], [2, 2, 1])
    """
    part = np.asarray(part)
    _check_sequence_length(length, allow_none=True)
    n = len(part)
    if length is None or n <= length:
        return Split(part[None], np.ones((1, n), bool))
    full, rem = divmod(n, int(length))
    x = np.zeros((full + (rem > 0), length) + part.shape[1:], part.dtype)
    x[:full] = part[: full * length].reshape((full, length) + part.shape[1:])
    mask = np.zeros(x.shape[:2], bool)
    mask[:full] = True
    if rem:
        x[full, :rem] = part[full * length :]
        mask[full, :rem] = True
    return Split(x, mask)


def text_splits(
    text: str,
    *,
    sequence_length: int,
    fractions: Sequence[float] = (0.9, 0.05, 0.05),
    vocabulary: CharVocabulary | None = None,
) -> DataSplits:
    """Encode a text and cut it into train, validation and test batches.

    The encoded text is split contiguously (the first ``fractions[0]`` for
    training, and so on; fractions summing to less than 1 drop the end of the
    text). Each part is cut into rows of ``sequence_length`` characters; its
    remainder is kept as one last, shorter row (padded with 0, mask False), so no
    character is lost. A part shorter than ``sequence_length`` is one row of its
    own length.

    Args:
        text: a non-empty str.
        sequence_length: characters per row.
        fractions: shares of the train, valid and test parts.
        vocabulary: the characters' ids; None builds it from the whole text.

    Returns:
        :class:`DataSplits` with x (N, min(sequence_length, part length)) int32,
        ``vocabulary`` set and ``scaler`` None.

    Raises:
        ValueError: an empty text, a character outside ``vocabulary`` (from
            :meth:`CharVocabulary.encode`), bad fractions, or a part that would be
            empty (names it).

    Example:
        >>> s = text_splits("abcdefghij" * 3, sequence_length=8, fractions=(0.6, 0.2, 0.2))
        >>> s.train.x.shape, s.train.mask.sum(axis=1).tolist(), s.valid.x.shape
        ((3, 8), [8, 8, 2], (1, 6))
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty str; got {text!r:.60}.")
    _check_sequence_length(sequence_length, allow_none=False)
    if vocabulary is None:
        vocabulary = CharVocabulary.from_text(text)
    elif not isinstance(vocabulary, CharVocabulary):
        raise ValueError(
            f"vocabulary must be a CharVocabulary or None; got {type(vocabulary).__name__}."
        )
    ids = vocabulary.encode(text)
    bounds = _part_bounds(len(ids), fractions, "characters")
    parts = [cut_rows(ids[a:b], sequence_length) for a, b in bounds]
    return DataSplits(*parts, vocabulary=vocabulary, scaler=None)


def series_splits(
    values,
    *,
    sequence_length: int | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    standardize: bool = True,
) -> DataSplits:
    """Split a real series in time into train, validation and test batches.

    The series is split contiguously; with ``standardize`` a :class:`Standardizer`
    is fit on the training part only and applied to all three, so no statistic
    of the held-out future leaks into training. Each part is one sequence, or,
    with ``sequence_length``, rows of that many steps with the remainder kept as
    one last, masked row (as in :func:`text_splits`).

    The output is the form real-valued models take, (B, T, D) with D >= 1 (a (T,)
    series becomes D = 1): ``probseq.log_prob(probseq.GaussianHMM(2, obs_dim=D),
    params, s.train.x, s.train.mask)``. In original units, per step,
    ``log p(y) = log p(z) - s.scaler.log_abs_det_jacobian``.

    Args:
        values: (T,) or (T, D) real values, all finite.
        sequence_length: None (each part one sequence) or steps per row.
        fractions: shares of the train, valid and test parts.
        standardize: fit and apply a :class:`Standardizer` (else ``scaler`` is None
            and the values are kept as they are, as float64).

    Returns:
        :class:`DataSplits` with x (B, T, D) float64, ``scaler`` set (or None) and
        ``vocabulary`` None.

    Raises:
        ValueError: non-numeric values, a wrong shape, a NaN/inf (says its index),
            bad fractions or sequence_length, or a part that would be empty.

    Example:
        >>> s = series_splits(np.arange(10.0), fractions=(0.6, 0.2, 0.2))
        >>> s.train.x.shape, s.valid.x.shape, s.scaler.mean
        ((1, 6, 1), (1, 2, 1), (2.5,))
    """
    a = np.asarray(values)
    _check_real(a, "values")
    if a.ndim not in (1, 2) or 0 in a.shape:
        raise ValueError(
            f"values must be one series of shape (T,) or (T, D) with T, D >= 1; got shape "
            f"{a.shape}."
        )
    bad = _first_nonfinite(a)
    if bad is not None:
        raise ValueError(f"values has a non-finite value {a[bad]} at index {bad}.")
    _check_sequence_length(sequence_length, allow_none=True)
    a = a.astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    bounds = _part_bounds(len(a), fractions, "steps")
    scaler = Standardizer.fit(a[bounds[0][0] : bounds[0][1]]) if standardize else None
    if scaler is not None:
        a = scaler.transform(a)
    parts = [cut_rows(a[s:e], sequence_length) for s, e in bounds]
    return DataSplits(*parts, vocabulary=None, scaler=scaler)
