"""Fitting: SGD for every model, EM for hidden Markov models."""

from probseq.fit.em import DirichletPrior, HMMStatistics, em_step, expected_statistics, fit_em
from probseq.fit.lds_em import fit_lds_em
from probseq.fit.ls import fit_ls
from probseq.fit.result import FitHistory, FitResult
from probseq.fit.sgd import (
    CheckpointMismatchError,
    NonFiniteLossError,
    SGDState,
    fit_sgd,
    sgd_init,
    sgd_update,
)

__all__ = [
    "FitResult",
    "FitHistory",
    "fit_sgd",
    "NonFiniteLossError",
    "CheckpointMismatchError",
    "fit_em",
    "fit_ls",
    "fit_lds_em",
    "em_step",
    "sgd_init",
    "sgd_update",
    "SGDState",
    "DirichletPrior",
    "HMMStatistics",
    "expected_statistics",
]
