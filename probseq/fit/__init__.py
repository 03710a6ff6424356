"""Fitting: SGD for every model, EM for every model that declares it, least squares.

The protocol (optax's and numpyro's SVI shape): a fitter is a pair of pure functions
over one pytree state, ``init(...) -> state`` and ``update(state, data) -> (state,
metrics)``, and one driver, :func:`probseq.fit.driver.run`, owns the loop: compiled
chunks of updates, real timings (it blocks before reading the clock), the progress
bar, and checkpoints of the whole state from which a killed fit resumes
bit-identically. SGD is :func:`~probseq.fit.sgd_step.sgd_init` /
:func:`~probseq.fit.sgd_step.sgd_update` over :class:`~probseq.fit.sgd_step.SGDState`
(TBPTT carry and PRNG key included): :func:`fit_sgd` runs its epochs on the driver, with
each epoch's schedule of rows as the steps' inputs. EM is
:func:`probseq.fit.em.em_init` / :func:`~probseq.fit.em.em_update` over
:class:`~probseq.fit.em.EMState`, for any model whose contract declares EM
(``supports_em``: expected statistics and M-step).

A user-written fitter runs on the same driver (here: Newton's method for a scalar
mean, whose state is (estimate, done)):

    >>> import jax.numpy as jnp
    >>> from probseq.fit import driver
    >>> def update(state, data):
    ...     mean, _ = state
    ...     new = mean - jnp.mean(mean - data)      # one Newton step on the squared error
    ...     return (new, jnp.abs(new - mean) < 1e-6), {"estimate": new}
    >>> out = driver.run(update, lambda s: s[1], (jnp.float32(0.0), jnp.bool_(False)),
    ...                  jnp.arange(5.0), num_steps=10, name="_newton_steps")
    >>> float(out.state[0]), out.metrics["estimate"].shape
    (2.0, (2,))
"""

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
