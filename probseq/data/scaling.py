"""Per-dimension standardization of real-valued data, and its inverse."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from probseq.data.arrays import _check_real, _first_nonfinite

__all__ = ["Standardizer"]


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
        # Squares (and sums) of magnitudes beyond 1e150 overflow float64: such a
        # dimension is divided by an exact power of two first, so its statistics are
        # the same numbers computed without overflow; other dimensions are untouched.
        exponent = np.where(np.abs(valid).max(axis=0) > 1e150, np.frexp(valid)[1].max(axis=0), 0)
        u = np.ldexp(valid, -exponent)
        mean = np.ldexp(u.mean(axis=0), exponent)
        std = np.ldexp(u.std(axis=0), exponent)
        constant = (np.ptp(u, axis=0) == 0) | (std == 0)
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
        with np.errstate(over="ignore", invalid="ignore"):
            z = (a - mean) / scale
            # x - mean overflows only near the float64 limit; the two quotients do not.
            z = np.where(np.isfinite(z) | ~np.isfinite(a), z, a / scale - mean / scale)
        bad = np.isfinite(a) & ~np.isfinite(z)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"x[{idx}] = {a[idx]} is too far from the mean to standardize in float64."
            )
        return z

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
