"""Fitting: EM for hidden Markov models (and, alongside, SGD for every model)."""

from probseq.fit.em import DirichletPrior, HMMStatistics, expected_statistics, fit_em
from probseq.fit.result import FitResult

__all__ = ["FitResult", "DirichletPrior", "HMMStatistics", "expected_statistics", "fit_em"]
