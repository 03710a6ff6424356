"""What every fitting routine returns."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["FitResult"]


class FitResult(NamedTuple):
    """params: the fitted (best) parameters.
    history: dict of per-epoch / per-iteration NumPy arrays (e.g. "train_log_lik",
        "valid_log_lik" per token for fit_sgd; "log_likelihood" for fit_em).
    info: dict of extra facts about the run (steps taken, why it stopped, ...).
    """

    params: Any
    history: dict
    info: dict
