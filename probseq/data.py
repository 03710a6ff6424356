"""Sequences as arrays: padding ragged sequences into a batch with a mask.

Example:
    >>> x, mask = pad_sequences([[1, 2, 3], [4]])
    >>> x.tolist(), mask.tolist()
    ([[1, 2, 3], [4, 0, 0]], [[True, True, True], [True, False, False]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pad_sequences"]


def pad_sequences(sequences: Sequence, *, pad_value=0) -> tuple[np.ndarray, np.ndarray]:
    """Stack unequal-length sequences (each (T_i,) or (T_i, D)) into (B, T_max[, D])
    padded at the end with ``pad_value``, and the (B, T_max) boolean mask of valid steps."""
    arrays = [np.asarray(s) for s in sequences]
    if not arrays:
        raise ValueError("pad_sequences needs at least one sequence; got an empty list.")
    for i, a in enumerate(arrays):
        if a.ndim not in (1, 2):
            raise ValueError(f"sequences[{i}] must be (T,) or (T, D); got shape {a.shape}.")
        if a.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"sequences[{i}] has trailing shape {a.shape[1:]}, sequences[0] has "
                f"{arrays[0].shape[1:]}."
            )
    lengths = np.array([len(a) for a in arrays])
    t_max = int(lengths.max())
    out = np.full((len(arrays), t_max) + arrays[0].shape[1:], pad_value, np.result_type(*arrays))
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out, np.arange(t_max)[None, :] < lengths[:, None]
