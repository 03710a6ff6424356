"""Ragged sequences made rectangular: a padded batch and its mask.

This sits below the core (``probseq.validation`` pads lists of sequences with it),
so it imports nothing from probseq and knows no file format.

Example:
    >>> x, mask = pad_sequences([[1, 2, 3], [4]])
    >>> x.tolist(), mask.tolist()
    ([[1, 2, 3], [4, 0, 0]], [[True, True, True], [True, False, False]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pad_sequences"]


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
