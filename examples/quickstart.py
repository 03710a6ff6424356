"""Quickstart: an HMM and recurrent networks as the same kind of object.

Samples training-free data from the "occasionally dishonest casino" HMM, then scores
it with the true HMM and with freshly initialised RNN families through the same
functions, continues a sequence from a prefix, and samples from every model.

    python examples/quickstart.py [--num-sequences 20] [--num-timesteps 200]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import probseq

# The occasionally dishonest casino (Durbin et al. 1998): a fair die and a loaded
# die that shows a six half of the time.
CASINO_INITIAL = np.array([0.5, 0.5])
CASINO_TRANSITIONS = np.array([[0.95, 0.05], [0.10, 0.90]])
CASINO_EMISSIONS = np.array([[1 / 6] * 6, [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])


# What tests/test_api.py runs: the whole script in a few seconds.
TINY_ARGS = ["--num-sequences", "2", "--num-timesteps", "10", "--hidden-size", "4"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-sequences", type=int, default=20)
    parser.add_argument("--num-timesteps", type=int, default=200)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    key = jax.random.key(args.seed)
    k_data, k_init, k_sample = jax.random.split(key, 3)

    casino = probseq.CategoricalHMM(num_states=2, vocab_size=6)
    casino_params = casino.init(
        k_init,
        initial_probs=CASINO_INITIAL,
        transition_matrix=CASINO_TRANSITIONS,
        emission_probs=CASINO_EMISSIONS,
    )
    rolls = probseq.sample(
        casino, casino_params, k_data, args.num_timesteps, num_samples=args.num_sequences
    )
    num_tokens = rolls.size
    print(f"sampled {args.num_sequences} casino sequences of {args.num_timesteps} rolls")

    models = {
        "casino HMM (true)": (casino, casino_params),
        "uniform": None,
    }
    for family in (probseq.RNN, probseq.LSTM, probseq.GRU, probseq.MinGRU, probseq.LRU):
        model = family(vocab_size=6, hidden_size=args.hidden_size)
        models[f"{family.__name__} (untrained)"] = (model, model.init(k_init))

    print(f"\n{'model':<24}{'nats/roll':>10}{'bits/roll':>10}")
    for name, entry in models.items():
        if entry is None:
            nats = np.log(6.0)
        else:
            model, params = entry
            nats = -float(probseq.log_prob(model, params, rolls).sum()) / num_tokens
        print(f"{name:<24}{nats:>10.4f}{nats / np.log(2):>10.4f}")

    # Filtering: the HMM's state after a run of sixes is its belief about the die.
    sixes = np.full(8, 5)
    belief = probseq.score(casino, casino_params, sixes).final_state
    print(f"\nafter eight sixes, p(loaded die next roll) = {float(belief[1]):.3f}")
    more = probseq.sample(casino, casino_params, k_sample, 20, prefix=sixes)
    print("continuation:", " ".join(str(int(v) + 1) for v in more))

    for name in ("LSTM (untrained)", "LRU (untrained)"):
        model, params = models[name]
        draw = probseq.sample(model, params, k_sample, 20)
        print(f"{name} sample:", " ".join(str(int(v) + 1) for v in draw))


if __name__ == "__main__":
    main()
