"""Train, validation and test parts of a text or a series, as padded batches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from probseq.data.arrays import _check_real, _first_nonfinite
from probseq.data.scaling import Standardizer
from probseq.data.text import CharVocabulary
from probseq.validation import check_int

__all__ = ["Split", "DataSplits", "cut_rows", "text_splits", "series_splits", "part_bounds"]


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


def part_bounds(n: int, fractions, what: str = "steps") -> list[tuple[int, int]]:
    """The [start, stop) of the train, valid and test parts that ``fractions`` cut
    from ``n`` units (the bounds :func:`text_splits`, :func:`series_splits` and
    :func:`probseq.data.pair_splits` use), so a comparison can tell which steps
    each run trained on.

    Example:
        >>> part_bounds(10, (0.6, 0.2, 0.2))
        [(0, 6), (6, 8), (8, 10)]
    """
    return _part_bounds(n, fractions, what)


def _check_sequence_length(length, allow_none: bool) -> None:
    check_int("sequence_length", length, allow_none=allow_none)


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
