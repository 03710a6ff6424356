"""Fitting: SGD for every model, EM for hidden Markov models."""

from probseq.fit.em import DirichletPrior, HMMStatistics, expected_statistics, fit_em
from probseq.fit.result import FitResult
from probseq.fit.sgd import CheckpointMismatchError, NonFiniteLossError, fit_sgd

__all__ = [
    "FitResult",
    "fit_sgd",
    "NonFiniteLossError",
    "CheckpointMismatchError",
    "fit_em",
    "DirichletPrior",
    "HMMStatistics",
    "expected_statistics",
]
