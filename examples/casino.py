"""The occasionally dishonest casino: one HMM family fitted by EM and by SGD.

A casino switches between a fair die and a loaded one (six comes up half the
time). From the rolls alone, fit a 2-state categorical HMM twice, by EM
(``probseq.fit_em``) and by gradient descent on the same likelihood
(``probseq.fit_sgd``), then compare both with the true model on held-out rolls
(``probseq.compare``) and decode which die was in use (smoothed posteriors).

    python examples/casino.py [--num-sequences 40] [--num-timesteps 300] [--plot casino.png]
"""

from __future__ import annotations

import argparse
import itertools

import jax
import numpy as np

import probseq
from probseq import data


def aligned(true_a, true_b, a, b):
    """Permute the fitted states to best match the true emission matrix."""
    k = true_b.shape[0]
    best = min(itertools.permutations(range(k)), key=lambda p: np.abs(b[list(p)] - true_b).sum())
    p = list(best)
    return a[np.ix_(p, p)], b[p], p


def run(args) -> dict:
    casino = data.casino(args.seed, num_sequences=2 * args.num_sequences,
                         num_timesteps=args.num_timesteps)  # fmt: skip
    train, test = casino.rolls[: args.num_sequences], casino.rolls[args.num_sequences :]
    print(
        f"casino: {train.size:,} training rolls in {len(train)} sequences, "
        f"{test.size:,} held-out rolls"
    )
    hmm = probseq.CategoricalHMM(num_states=2, vocab_size=6)
    truth = hmm.init(
        jax.random.key(0),
        initial_probs=casino.initial_probs,
        transition_matrix=casino.transition_matrix,
        emission_probs=casino.emission_probs,
    )
    start = hmm.init(jax.random.key(args.seed + 1))

    em = probseq.fit_em(hmm, start, train, num_iters=args.em_iters, tol=1e-6)
    sgd = probseq.fit_sgd(
        hmm, start, train, key=jax.random.key(args.seed + 2), num_epochs=args.sgd_epochs,
        batch_size=8, learning_rate=0.05, progress=False,
    )  # fmt: skip
    # both histories have the same fields: the log-likelihood in total and per roll
    print(
        f"EM: {em.history.num_entries} iterations, SGD: {sgd.info['num_steps']} steps; "
        f"last train log-likelihood per roll: EM {em.history.log_likelihood_per_token[-1]:.4f}, "
        f"SGD {sgd.history.log_likelihood_per_token[-1]:.4f} (averaged over its last epoch)"
    )

    np.set_printoptions(precision=3, suppress=True)
    results, perms = {}, {}
    for name, fit in (("EM", em), ("SGD", sgd)):
        _, a, b = (np.asarray(m) for m in hmm.probabilities(fit.params))
        a, b, perms[name] = aligned(casino.transition_matrix, casino.emission_probs, a, b)
        err = max(
            np.abs(a - casino.transition_matrix).max(), np.abs(b - casino.emission_probs).max()
        )
        results[name] = err
        print(f"\n{name}: transition matrix\n{a}\nemission probabilities\n{b}\nmax error {err:.3f}")

    models = {"true": (hmm, truth), "EM": (hmm, em.params), "SGD": (hmm, sgd.params)}
    print("\nheld-out comparison (a fair die alone: ln 6 = 1.792 nats per roll)")
    print(probseq.compare(models, test))

    # P(state | all rolls) of one held-out sequence; columns in (fair, loaded) order
    posterior = np.asarray(hmm.smoother(em.params, test[0]))[:, perms["EM"]]
    truth_states = casino.states[args.num_sequences]
    accuracy = np.mean((posterior[:, 1] > 0.5) == (truth_states == 1))
    print(f"\ndecoding the die in use from held-out rolls: {accuracy:.1%} of rolls right")
    results["accuracy"] = accuracy
    if args.plot:
        from probseq import plots

        fig = plots.plot_state_posteriors(
            posterior, observations=test[0], state_names=["fair", "loaded"],
            true_states=truth_states,
        )  # fmt: skip
        plots.save_figure(fig, args.plot)
        print(f"wrote {args.plot}")
    return results


# What tests/test_api.py runs: the whole script in a few seconds.
TINY_ARGS = ["--num-sequences", "4", "--num-timesteps", "50", "--em-iters", "3",
             "--sgd-epochs", "1"]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-sequences", type=int, default=40)
    parser.add_argument("--num-timesteps", type=int, default=300)
    parser.add_argument("--em-iters", type=int, default=200)
    parser.add_argument("--sgd-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write the decoded posteriors to this image file")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
