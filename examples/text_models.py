"""HMM vs LSTM vs LRU on English text, with the Python API.

What ``probseq demo`` does through specs, written out as a script: the CPython
help topics (no download) cut into 128-character rows, a categorical HMM fitted
by EM, an LSTM and an LRU by SGD, all three compared on held-out text (bits per
character with paired standard errors) and sampled from the same prompt.

    python examples/text_models.py [--max-chars 200000] [--plot compare.png]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import probseq
from probseq import data


def run(args):
    text = data.pydoc_text()[: args.max_chars or None]
    splits = data.text_splits(text, sequence_length=128, fractions=(0.9, 0.05, 0.05))
    vocab, train, valid, test = splits.vocabulary, splits.train, splits.valid, splits.test
    print(f"{len(text):,} characters, {vocab.vocab_size} symbols; train {train.x.shape}")

    key = jax.random.key(args.seed)
    hmm = probseq.CategoricalHMM(num_states=args.num_states, vocab_size=vocab.vocab_size)
    # Dirichlet pseudo-counts of 0.01 (MAP): a character unseen in training keeps a
    # small probability instead of zero (an infinite loss on held-out text).
    prior = probseq.DirichletPrior(initial=1.01, transition=1.01, emission=1.01)
    fits = {
        "hmm": (hmm, probseq.fit_em(hmm, hmm.init(key), train.x, mask=train.mask, prior=prior,
                                    num_iters=args.em_iters, progress=args.progress)),
    }  # fmt: skip
    for name, family in (("lstm", probseq.LSTM), ("lru", probseq.LRU)):
        model = family(vocab_size=vocab.vocab_size, hidden_size=args.hidden_size)
        fit = probseq.fit_sgd(
            model, model.init(key), train.x, mask=train.mask, key=jax.random.fold_in(key, 1),
            num_epochs=args.epochs, batch_size=32, learning_rate=5e-3,
            valid_data=valid.x, valid_mask=valid.mask, progress=args.progress,
        )  # fmt: skip
        fits[name] = (model, fit)

    table = probseq.compare({n: (m, f.params) for n, (m, f) in fits.items()}, test.x, test.mask)
    print(table)
    prompt = vocab.encode("The ")
    for i, (name, (model, fit)) in enumerate(fits.items()):
        xs = probseq.sample(model, fit.params, jax.random.key(100 + i), 80, prefix=prompt,
                            temperature=0.8)  # fmt: skip
        print(f"[{name}] {'The ' + vocab.decode(np.asarray(xs))!r}")
    if args.plot:
        probseq.plots.save_figure(probseq.plots.plot_comparison(table), args.plot)
        print(f"wrote {args.plot}")
    return table


# What tests/test_api.py runs: the whole script in a few seconds.
TINY_ARGS = ["--max-chars", "6000", "--num-states", "4", "--em-iters", "2", "--hidden-size", "8",
             "--epochs", "1"]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-chars", type=int, default=0, help="0: all ~465k")
    parser.add_argument("--num-states", type=int, default=32)
    parser.add_argument("--em-iters", type=int, default=60)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--plot", help="write the comparison bar chart to this image file")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
