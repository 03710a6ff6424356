"""Arrays from memory made a batch ``(x, mask)`` for any model."""

from __future__ import annotations

import numpy as np

from probseq.padding import pad_sequences

__all__ = ["from_arrays"]


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
