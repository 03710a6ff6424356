"""Bayesian HMM: NUTS on the occasionally dishonest casino, checked with ArviZ.

Rolls of a casino that switches between a fair die and a loaded one (a six half of
the time) are generated here. A 2-state categorical HMM with Dirichlet priors on its
initial, transition and emission probabilities is fitted with NUTS: the HMM's exact
marginal likelihood (the forward algorithm, summing over every hidden path) is a
``probseq.distribution.SequenceDistribution``, so numpyro sees an ordinary
distribution over whole sequences. ArviZ then reports convergence (r_hat, ess_bulk)
and PSIS-LOO over the independent sequences.

    python examples/bayesian_hmm.py [--num-sequences 20] [--num-timesteps 100]
        [--num-warmup 500] [--num-samples 500] [--seed 0]

Label switching: the likelihood and these (exchangeable) priors do not change when
the two states swap names, so each chain settles on one of two mirror-image labelings
and r_hat of the raw parameters compares chains that disagree on names, not on
values. We report invariants: every draw is relabeled so that state 1 is the state
with the higher probability of a six (a function of the unordered pair of states,
hence permutation invariant). An ordering constraint inside the model would do the
same job but needs a custom transform of the Dirichlet rows; with the loaded die
well separated from the fair one (P(six) 0.5 vs 1/6), sorting draws is exact.
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import probseq
from probseq.distribution import SequenceDistribution
from probseq.inference_data import to_inference_data

# The occasionally dishonest casino (Durbin et al. 1998): state 0 a fair die, state 1
# a loaded die; the casino switches to the loaded die w.p. 0.05 and back w.p. 0.1.
CASINO_INITIAL = np.array([0.5, 0.5])
CASINO_TRANSITIONS = np.array([[0.95, 0.05], [0.10, 0.90]])
CASINO_EMISSIONS = np.array([[1 / 6] * 6, [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])

NUM_STATES, NUM_FACES = 2, 6

# What tests/test_api.py runs: the whole script in well under 30 seconds.
TINY_ARGS = [
    "--num-sequences",
    "10",
    "--num-timesteps",
    "20",
    "--num-warmup",
    "20",
    "--num-samples",
    "20",
]


def casino_rolls(seed: int, num_sequences: int, num_timesteps: int):
    """Independent casino sessions: rolls (N, T) in 0..5 (face - 1) and the dice used."""
    rng = np.random.default_rng(seed)
    rolls = np.empty((num_sequences, num_timesteps), np.int32)
    dice = np.empty((num_sequences, num_timesteps), np.int32)
    z = (rng.random(num_sequences) < CASINO_INITIAL[1]).astype(np.int32)
    cumulative = np.cumsum(CASINO_EMISSIONS, axis=1)
    for t in range(num_timesteps):
        dice[:, t] = z
        u = rng.random((num_sequences, 1))
        rolls[:, t] = np.minimum((u > cumulative[z]).sum(axis=1), NUM_FACES - 1)
        z = (rng.random(num_sequences) < CASINO_TRANSITIONS[z, 1]).astype(np.int32)
    return rolls, dice


def bayesian_hmm(hmm, rolls):
    """Dirichlet priors on pi, A (rows, sticky) and B (rows); the forward-algorithm
    likelihood of every sequence (a plate of independent sessions)."""
    k = NUM_STATES
    pi = numpyro.sample("initial_probs", dist.Dirichlet(jnp.ones(k)))
    # Sticky but exchangeable: every row favours staying, no state is singled out.
    sticky = jnp.ones((k, k)) + 4.0 * jnp.eye(k)
    a = numpyro.sample("transition_matrix", dist.Dirichlet(sticky).to_event(1))
    b = numpyro.sample("emission_probs", dist.Dirichlet(jnp.ones((k, NUM_FACES))).to_event(1))
    params = probseq.HMMParams(jnp.log(pi), jnp.log(a), {"logits": jnp.log(b)})
    seq = SequenceDistribution(hmm, params, num_timesteps=rolls.shape[1])
    with numpyro.plate("sequences", rolls.shape[0]):
        numpyro.sample("x", seq, obs=rolls)


def relabel(samples: dict) -> tuple[dict, np.ndarray]:
    """Order each draw's states by P(six): state 1 is the loaded die. Returns the
    relabeled draws (chain, draw, ...) and, per chain, the fraction of swapped draws."""
    pi = np.asarray(samples["initial_probs"])
    a = np.asarray(samples["transition_matrix"])
    b = np.asarray(samples["emission_probs"])
    order = np.argsort(b[..., NUM_FACES - 1], axis=-1)  # (chain, draw, K)
    pi = np.take_along_axis(pi, order, axis=-1)
    b = np.take_along_axis(b, order[..., None], axis=-2)
    a = np.take_along_axis(a, order[..., None], axis=-2)  # rows
    a = np.take_along_axis(a, order[..., None, :], axis=-1)  # columns
    swapped = (order[..., 0] != 0).mean(axis=-1)
    return {"initial_probs": pi, "transition_matrix": a, "emission_probs": b}, swapped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-sequences", type=int, default=20)
    parser.add_argument("--num-timesteps", type=int, default=100)
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rolls, dice = casino_rolls(args.seed, args.num_sequences, args.num_timesteps)
    print(
        f"{args.num_sequences} casino sessions of {args.num_timesteps} rolls; "
        f"loaded die in use {dice.mean():.0%} of the time, sixes {np.mean(rolls == 5):.0%}"
    )

    hmm = probseq.CategoricalHMM(num_states=NUM_STATES, vocab_size=NUM_FACES)
    mcmc = MCMC(
        NUTS(functools.partial(bayesian_hmm, hmm)),
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        num_chains=2,
        chain_method="sequential",
        # With the data as a jit argument and numpyro's per-step loop (the progress
        # bar's), the second chain reuses the first one's compiled NUTS step; with
        # progress_bar=False numpyro 0.22 compiles its whole loop again per chain.
        progress_bar=True,
        jit_model_args=True,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.key(args.seed), rolls, extra_fields=("diverging",))
    seconds = time.perf_counter() - start
    divergences = int(np.sum(mcmc.get_extra_fields()["diverging"]))
    print(
        f"NUTS: 2 chains x ({args.num_warmup} + {args.num_samples}) steps in {seconds:.1f} s "
        f"(with compilation), {divergences} divergences"
    )

    posterior, swapped = relabel(mcmc.get_samples(group_by_chain=True))
    print(
        "draws relabeled (states swapped to put the loaded die second), per chain:",
        ", ".join(f"{s:.0%}" for s in swapped),
    )

    # The same draws as probseq parameters with leading (chain, draw) axes: the
    # log-likelihood of each session under each draw, for LOO.
    draws = probseq.HMMParams(
        jnp.log(posterior["initial_probs"]),
        jnp.log(posterior["transition_matrix"]),
        {"logits": jnp.log(posterior["emission_probs"])},
    )
    idata = to_inference_data(hmm, draws, rolls, posterior=posterior)

    print("\nposterior (state 0 = fair die, state 1 = loaded die); truth:")
    print(f"  A = {CASINO_TRANSITIONS.tolist()}, P(six) = {CASINO_EMISSIONS[:, 5].tolist()}")
    summary = az.summary(
        idata, var_names=["transition_matrix", "emission_probs"], kind="all", round_to=3
    )
    print(summary[["mean", "sd", "hdi_3%", "hdi_97%", "r_hat", "ess_bulk"]].to_string())
    print(
        f"max r_hat = {summary['r_hat'].max():.3f}, min ess_bulk = {summary['ess_bulk'].min():.0f}"
    )

    # PSIS-LOO leaves out one whole session at a time: valid here because the sessions
    # are independent. (Leaving out single rolls of one series would not be.)
    print("\nPSIS-LOO over the independent sessions:")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loo = az.loo(idata)
    print(loo)
    for w in caught:  # e.g. high Pareto k with few draws: reported, not raised
        print(f"arviz warning: {w.message}")


if __name__ == "__main__":
    main()
