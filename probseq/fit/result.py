"""What every fitting routine returns: :class:`FitResult` and its :class:`FitHistory`.

Every fitter (``fit_sgd``, ``fit_em``, ``fit_ls``) records the same typed history:
one entry per epoch (SGD) or per iteration (EM), the log-likelihood both in total and
per token (a token is one observed, unmasked step), under the same field names.

Example:
    >>> import numpy as np
    >>> h = FitHistory.from_totals("fit_em", log_likelihood=[-60.0, -50.0], num_tokens=20)
    >>> h.log_likelihood_per_token.tolist(), h["log_likelihood"].tolist()
    ([-3.0, -2.5], [-60.0, -50.0])
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = ["FitResult", "FitHistory"]

_INT_FIELDS = frozenset(
    {"iteration", "num_tokens", "valid_num_tokens", "num_steps", "skipped_steps"}
)
# Names of the histories before FitHistory (fit_sgd's dict), still read by
# ``history[old_name]`` (with a DeprecationWarning) and by :meth:`FitHistory.from_dict`.
LEGACY_NAMES = {
    "epoch": "iteration",
    "train_log_lik": "log_likelihood_per_token",
    "valid_log_lik": "valid_log_likelihood_per_token",
}


@dataclasses.dataclass(frozen=True, eq=False)
class FitHistory(Mapping):
    """The history of a fit: one entry per epoch (``fit_sgd``) or EM iteration
    (``fit_em``; ``fit_ls`` has one entry), the same fields for every fitter.

    Every field but ``fitter`` is a read-only 1-D NumPy array of one length, int64 for
    counts and float64 otherwise; a quantity a fitter does not have is NaN (floats) or
    0 (token counts). It reads like the dict it replaces: ``history["log_likelihood"]``
    is ``history.log_likelihood``, and ``dict(history)`` gives every field. The old
    ``fit_sgd`` names ``train_log_lik``, ``valid_log_lik`` and ``epoch`` are still
    read, with a DeprecationWarning naming the new field.

    Attributes:
        fitter: "fit_sgd", "fit_em", "fit_ls", or "" (an old history that did not say).
        iteration: fit_sgd: the epoch, from 1 (its log-likelihood is summed over that
            epoch's steps, the parameters changing as it goes); fit_em: the iteration,
            from 0 (the log-likelihood of the parameters after that many M-steps, as
            hmmlearn's monitor records it); fit_ls: 0.
        log_likelihood: the total log-likelihood of the training data (nats).
        log_likelihood_per_token: ``log_likelihood / num_tokens`` (NaN where
            ``num_tokens`` is 0, i.e. not known).
        num_tokens: the observed (unmasked) steps summed over; fit_ls: the regression
            steps (an AR(d) conditions on each row's first d steps).
        valid_log_likelihood: fit_sgd with ``valid_data``: the total log-likelihood of
            the validation data after the epoch; NaN without validation data and
            always NaN for fit_em and fit_ls.
        valid_log_likelihood_per_token: ``valid_log_likelihood / valid_num_tokens``
            (NaN as ``valid_log_likelihood``).
        valid_num_tokens: the validation tokens (0 without validation data).
        objective: what the fitter maximises: fit_em the log-likelihood plus the log
            prior (equal to ``log_likelihood`` without a prior); fit_sgd and fit_ls
            the log-likelihood itself.
        num_steps: fit_sgd: optimizer steps applied so far (cumulative); fit_em:
            M-steps applied (= ``iteration``); fit_ls: 0.
        skipped_steps: fit_sgd: non-finite steps skipped in the epoch; else 0.
        time_s: fit_sgd: seconds of training in the epoch; NaN for fit_em and fit_ls.
        tokens_per_s: fit_sgd: training throughput of the epoch; NaN otherwise.
    """

    fitter: str
    iteration: np.ndarray
    log_likelihood: np.ndarray
    log_likelihood_per_token: np.ndarray
    num_tokens: np.ndarray
    valid_log_likelihood: np.ndarray
    valid_log_likelihood_per_token: np.ndarray
    valid_num_tokens: np.ndarray
    objective: np.ndarray
    num_steps: np.ndarray
    skipped_steps: np.ndarray
    time_s: np.ndarray
    tokens_per_s: np.ndarray

    def __post_init__(self):
        from probseq.fit.registry import fitter_names  # the one list of fitters

        known = (*fitter_names(), "")  # "": an old history that did not say
        if self.fitter not in known:
            raise ValueError(
                f"FitHistory.fitter must be one of {known} (the registered fitters), "
                f"got {self.fitter!r}."
            )
        length = None
        for name in self._array_fields():
            raw = getattr(self, name)
            dtype = np.int64 if name in _INT_FIELDS else np.float64
            try:
                a = np.array(raw, dtype=dtype)  # a copy: the caller's array stays writeable
            except (TypeError, ValueError) as e:
                raise ValueError(f"FitHistory.{name} must be numbers ({e}).") from None
            if a.ndim != 1:
                raise ValueError(
                    f"FitHistory.{name} must be one value per epoch/iteration (1-D), "
                    f"got shape {a.shape}."
                )
            if length is None:
                length = a.shape[0]
            elif a.shape[0] != length:
                raise ValueError(
                    f"FitHistory fields must have one length; {name} has {a.shape[0]} "
                    f"entries, iteration has {length}."
                )
            a.flags.writeable = False
            object.__setattr__(self, name, a)

    # ---- constructors
    @classmethod
    def from_totals(
        cls,
        fitter: str,
        *,
        log_likelihood,
        num_tokens,
        iteration=None,
        valid_log_likelihood=None,
        valid_num_tokens=None,
        objective=None,
        num_steps=None,
        skipped_steps=None,
        time_s=None,
        tokens_per_s=None,
    ) -> FitHistory:
        """A history from total log-likelihoods and token counts (scalars broadcast);
        per-token values are computed here. A field left None gets its documented
        "absent" value: ``iteration`` 0, 1, ... (1, 2, ... for fit_sgd), no validation
        (NaN, 0 tokens), ``objective`` = ``log_likelihood``, 0 steps, NaN times."""
        ll = np.asarray(log_likelihood, np.float64)
        if ll.ndim != 1:
            raise ValueError(
                f"log_likelihood must be one value per epoch/iteration (1-D), got shape {ll.shape}."
            )
        n = ll.shape[0]

        def full(name, value, fill, dtype):
            a = np.asarray(fill if value is None else value, dtype)
            if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != n):
                raise ValueError(
                    f"{name} must be one number or one per entry of log_likelihood ({n}), "
                    f"got shape {a.shape}."
                )
            return np.broadcast_to(a, (n,))

        tokens = full("num_tokens", num_tokens, 0, np.int64)
        valid_ll = full("valid_log_likelihood", valid_log_likelihood, math.nan, np.float64)
        valid_tokens = full("valid_num_tokens", valid_num_tokens, 0, np.int64)
        if iteration is None:
            iteration = np.arange(n) + (1 if fitter == "fit_sgd" else 0)
        return cls(
            fitter=fitter,
            iteration=iteration,
            log_likelihood=ll,
            log_likelihood_per_token=_per_token(ll, tokens),
            num_tokens=tokens,
            valid_log_likelihood=valid_ll,
            valid_log_likelihood_per_token=_per_token(valid_ll, valid_tokens),
            valid_num_tokens=valid_tokens,
            objective=ll if objective is None else objective,
            num_steps=full("num_steps", num_steps, 0, np.int64),
            skipped_steps=full("skipped_steps", skipped_steps, 0, np.int64),
            time_s=full("time_s", time_s, math.nan, np.float64),
            tokens_per_s=full("tokens_per_s", tokens_per_s, math.nan, np.float64),
        )

    @classmethod
    def from_dict(
        cls,
        history: Mapping,
        *,
        num_tokens: int | None = None,
        valid_num_tokens: int | None = None,
    ) -> FitHistory:
        """A history from a dict of lists/arrays: this type's own fields (as
        ``dict(history)`` or history.json give them), or an older history's keys —
        fit_sgd's ``epoch`` / ``train_log_lik`` / ``valid_log_lik`` (per token) /
        ``num_steps`` / ``skipped_steps`` / ``tokens_per_s`` / ``time_s``, fit_em's
        ``log_likelihood`` / ``objective`` (totals), fit_ls's ``log_likelihood``.

        An old fit_sgd history did not store token counts; they are recovered as
        ``round(tokens_per_s * time_s)`` (how tokens_per_s was computed), so that the
        totals are known; its validation totals only with ``valid_num_tokens`` (the
        validation tokens), else NaN with 0 tokens. An old fit_em or fit_ls history
        stored only totals: ``num_tokens`` (the training tokens, e.g. from the run's
        info) gives the per-token values, else they are NaN.

        Raises:
            ValueError: no log-likelihood under any known key, or fields that are not
                1-D numbers of one length.
        """
        if isinstance(history, FitHistory):
            return history
        if not isinstance(history, Mapping):
            raise ValueError(f"a history must be a dict, got {type(history).__name__}.")
        keys = set(history)
        if not keys & {"log_likelihood", "log_likelihood_per_token", "train_log_lik"}:
            raise ValueError(
                "the history has no log-likelihood: expected 'log_likelihood' or "
                "'log_likelihood_per_token' (or an older fit_sgd's 'train_log_lik'), "
                f"found keys {sorted(map(str, keys))}."
            )
        h = {LEGACY_NAMES.get(k, k): v for k, v in history.items()}
        fitter = h.get("fitter")
        if fitter is None:  # an old history: which fitter wrote it, from its keys
            if keys & {"train_log_lik", "valid_log_lik", "epoch", "tokens_per_s", "time_s"}:
                fitter = "fit_sgd"
            elif "objective" in keys:
                fitter = "fit_em"
            else:
                fitter = ""
        fitter = str(fitter)

        def arr(name, dtype=np.float64):
            if name not in h:
                return None
            try:
                a = np.asarray(h[name], dtype)
            except (TypeError, ValueError) as e:
                raise ValueError(f"history[{name!r}] must be numbers ({e}).") from None
            if a.ndim != 1:
                raise ValueError(
                    f"history[{name!r}] must be one value per epoch/iteration (1-D), "
                    f"got shape {a.shape}."
                )
            return a

        curve = arr("log_likelihood")
        n = (arr("log_likelihood_per_token") if curve is None else curve).shape[0]

        tokens = arr("num_tokens", np.int64)
        if tokens is None and "tokens_per_s" in h and "time_s" in h:
            tokens = np.rint(arr("tokens_per_s") * arr("time_s")).astype(np.int64)
        if tokens is None:
            tokens = np.full(n, 0 if num_tokens is None else num_tokens, np.int64)
        valid_tokens = arr("valid_num_tokens", np.int64)
        if valid_tokens is None:
            valid_per = arr("valid_log_likelihood_per_token")
            known = valid_num_tokens is not None and valid_per is not None
            valid_tokens = np.zeros(n, np.int64)
            if known:
                valid_tokens = np.where(np.isfinite(valid_per), valid_num_tokens, 0)
        total, per = _both(arr("log_likelihood"), arr("log_likelihood_per_token"), tokens)
        valid_total, valid_per = _both(
            arr("valid_log_likelihood"), arr("valid_log_likelihood_per_token"), valid_tokens
        )
        if fitter == "fit_sgd":
            default_iteration = np.arange(1, n + 1)
        else:
            default_iteration = np.arange(n)

        def get(name, default):
            value = arr(name, np.int64 if name in _INT_FIELDS else np.float64)
            return default if value is None else value

        return cls(
            fitter=fitter,
            iteration=get("iteration", default_iteration),
            log_likelihood=total,
            log_likelihood_per_token=per,
            num_tokens=tokens,
            valid_log_likelihood=valid_total,
            valid_log_likelihood_per_token=valid_per,
            valid_num_tokens=valid_tokens,
            objective=get("objective", total),
            num_steps=get("num_steps", np.arange(n) if fitter == "fit_em" else np.zeros(n)),
            skipped_steps=get("skipped_steps", np.zeros(n)),
            time_s=get("time_s", np.full(n, math.nan)),
            tokens_per_s=get("tokens_per_s", np.full(n, math.nan)),
        )

    # ---- reading
    @classmethod
    def _array_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "fitter")

    def __len__(self) -> int:
        """The number of fields (as for the dict it replaces), not of entries."""
        return len(dataclasses.fields(self))

    def __iter__(self):
        return iter(f.name for f in dataclasses.fields(self))

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and key in {f.name for f in dataclasses.fields(self)}

    def __getitem__(self, key: str):
        if isinstance(key, str) and key in LEGACY_NAMES:
            warnings.warn(
                f"history[{key!r}] is the old name of history[{LEGACY_NAMES[key]!r}] "
                f"(history.{LEGACY_NAMES[key]}); the old names will go.",
                DeprecationWarning,
                stacklevel=2,
            )
            key = LEGACY_NAMES[key]
        if key not in self:
            raise KeyError(f"{key!r} is not a FitHistory field; the fields are {list(self)}.")
        return getattr(self, key)

    @property
    def num_entries(self) -> int:
        """Epochs (fit_sgd) or iterations (fit_em) recorded."""
        return int(self.iteration.shape[0])

    @property
    def has_validation(self) -> bool:
        """Whether any entry has a validation log-likelihood."""
        return bool(np.isfinite(self.valid_log_likelihood_per_token).any())

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (NumPy arrays, ``fitter`` a str)."""
        return {name: getattr(self, name) for name in self}

    def __eq__(self, other) -> bool:
        if not isinstance(other, FitHistory):
            return NotImplemented
        return self.fitter == other.fitter and all(
            np.array_equal(getattr(self, n), getattr(other, n), equal_nan=True)
            for n in self._array_fields()
        )

    __hash__ = None

    def __repr__(self) -> str:
        ll = self.log_likelihood_per_token
        last = f"{ll[-1]:.6g}" if ll.size else "-"
        return (
            f"FitHistory(fitter={self.fitter!r}, num_entries={self.num_entries}, "
            f"last log_likelihood_per_token={last})"
        )


def _per_token(total: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """total / tokens, NaN where no tokens were counted."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tokens > 0, total / np.maximum(tokens, 1), math.nan)


def _both(total, per, tokens) -> tuple[np.ndarray, np.ndarray]:
    """(total, per token) from whichever is given; NaN for neither."""
    if total is None and per is None:
        nan = np.full(tokens.shape, math.nan)
        return nan, nan
    if total is None:
        return np.where(tokens > 0, per * tokens, math.nan), per
    if per is None:
        return total, _per_token(total, tokens)
    return total, per


class FitResult(NamedTuple):
    """params: the fitted (best) parameters.
    history: the :class:`FitHistory` (one entry per epoch or iteration; the same
        fields for every fitter; ``history["log_likelihood"]`` is the total).
    info: dict of extra facts about the run (steps taken, why it stopped, ...).
    """

    params: Any
    history: FitHistory
    info: dict
