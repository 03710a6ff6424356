"""Sequence-to-sequence: reverse random digit strings, with and without attention.

A source is a random string of 5-20 digits; the target is the same digits reversed,
then an end-of-sequence token. Two encoder-decoders (a bidirectional GRU encoder, a
GRU decoder) are fitted by teacher forcing with ``probseq.fit_sgd(..., source=...)``:
one with additive (Bahdanau) attention, one without (the decoder sees the source only
through its first state). Each is scored by greedy decoding
(``probseq.decoding.greedy``) on held-out strings: the exact-match accuracy (the whole
reversed string and its EOS right) and the per-digit accuracy.

Measured (defaults: 20,000 training strings, hidden size 64, 10 epochs = 3,130 steps
of batch 64, Adam 3e-3; 2,000 held-out strings; seed 0; a shared 2-core CPU, float32;
fit times of two runs, the accuracies identical in both):

    attention   exact match   per digit   fit time
    additive    0.971         0.987       165-189 s
    none        0.381         0.682        70-95 s

Attention reaches the 95% exact-match target in about 3 minutes; without it the
decoder must carry up to 20 digits in its first state, and long strings fail.

    python examples/reversal.py [--epochs 10] [--hidden-size 64] [--attention additive,none]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import probseq

NUM_DIGITS = 10
EOS = NUM_DIGITS  # target vocabulary: the digits and EOS


def make_pairs(rng: np.random.Generator, num: int, min_len: int, max_len: int):
    """``num`` (source, target) pairs: digits, and the digits reversed then EOS
    (``probseq.data.reversal_pairs``, the data of ``builtin:reversal``)."""
    sources, reversed_ = probseq.data.reversal_pairs(rng, num, min_len, max_len)
    return sources, [np.append(r, EOS) for r in reversed_]


def build(attention, hidden_size: int):
    encoder = probseq.Encoder(
        probseq.GRU(vocab_size=NUM_DIGITS, hidden_size=hidden_size), bidirectional=True
    )
    decoder = probseq.GRU(vocab_size=NUM_DIGITS + 1, hidden_size=hidden_size)
    return probseq.Seq2Seq(encoder, decoder, attention=attention)


def accuracy(model, params, sources, targets, batch_size=500):
    """(exact-match accuracy, per-digit accuracy) of greedy decoding."""
    max_len = max(len(t) for t in targets)
    exact, digits, total = 0, 0, 0
    for i in range(0, len(sources), batch_size):
        src, tgt = sources[i : i + batch_size], targets[i : i + batch_size]
        out = probseq.decoding.greedy(model, params, max_len, source=src, eos=EOS)
        seqs, lengths = np.asarray(out.sequences), np.asarray(out.lengths)
        for seq, n, want in zip(seqs, lengths, tgt, strict=True):
            got = seq[:n]
            exact += int(len(got) == len(want) and np.array_equal(got, want))
            k = min(len(got), len(want)) - 1
            digits += int(np.sum(got[:k] == want[:k])) if k > 0 else 0
            total += len(want) - 1
    return exact / len(sources), digits / total


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    train_src, train_tgt = make_pairs(rng, args.num_train, args.min_len, args.max_len)
    valid_src, valid_tgt = make_pairs(rng, args.num_valid, args.min_len, args.max_len)
    test_src, test_tgt = make_pairs(rng, args.num_test, args.min_len, args.max_len)
    results = {}
    print(f"{'attention':<10} {'exact match':>12} {'per digit':>10} {'fit s':>7}")
    for attention in args.attention:
        model = build(None if attention == "none" else attention, args.hidden_size)
        params = model.init(jax.random.key(args.seed))
        tic = time.perf_counter()
        fit = probseq.fit_sgd(
            model,
            params,
            train_tgt,
            source=train_src,
            valid_data=valid_tgt,
            valid_source=valid_src,
            key=jax.random.key(args.seed + 1),
            num_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            progress=args.progress,
        )
        seconds = time.perf_counter() - tic
        exact, per_digit = accuracy(model, fit.params, test_src, test_tgt)
        results[attention] = {"exact": exact, "per_digit": per_digit, "fit_s": seconds}
        print(f"{attention:<10} {exact:>12.3f} {per_digit:>10.3f} {seconds:>7.0f}")
    return results


TINY_ARGS = [
    *("--num-train", "64", "--num-valid", "16", "--num-test", "16", "--epochs", "1"),
    *("--hidden-size", "8", "--max-len", "7", "--attention", "dot"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", type=lambda s: s.split(","), default=["additive", "none"],
                        help="comma-separated: additive, dot, none")  # fmt: skip
    parser.add_argument("--num-train", type=int, default=20000)
    parser.add_argument("--num-valid", type=int, default=500)
    parser.add_argument("--num-test", type=int, default=2000)
    parser.add_argument("--min-len", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
