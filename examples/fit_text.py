"""Character-level language models on English text that ships with Python.

Fits an LSTM, a GRU, a MinGRU and an LRU with ``fit_sgd`` to the CPython help
topics (``probseq.data.pydoc_text``: no download), with truncated BPTT over long
contiguous streams, validation-based early stopping, and reports held-out bits
per character against the unigram baseline (the entropy of the test text's own
character distribution, the best any unigram model can do on it).

    python examples/fit_text.py [--families lstm,gru,mingru,lru] [--epochs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time

import jax
import numpy as np

import probseq
from probseq import data
from probseq.fit.sgd import fit_sgd

FAMILIES = {
    "lstm": probseq.LSTM,
    "gru": probseq.GRU,
    "mingru": probseq.MinGRU,
    "minlstm": probseq.MinLSTM,
    "lru": probseq.LRU,
}
BITS = 1 / math.log(2)


def unigram_bits(ids, vocab_size: int, reference=None) -> float:
    """Bits per character of a unigram model: the entropy of ``ids``' own character
    distribution, or (with ``reference``) the cross-entropy of ``ids`` under the
    add-one-smoothed distribution of ``reference``."""
    source = ids if reference is None else reference
    counts = np.bincount(source, minlength=vocab_size).astype(np.float64)
    if reference is not None:
        counts += 1
    p = counts / counts.sum()
    return float(-np.mean(np.log2(p[ids])))


def run(args) -> dict:
    text = data.pydoc_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    vocab = data.CharVocabulary.from_text(text)
    ids = vocab.encode(text)
    train, valid, test = data.split_contiguous(ids, (0.9, 0.05, 0.05))
    if args.max_train_chars:
        train = train[: args.max_train_chars]
    streams = data.cut_sequences(train, len(train) // args.batch_size)  # (B, ~len/B)
    valid_x = data.cut_sequences(valid, len(valid) // args.eval_rows)
    test_x = data.cut_sequences(test, len(test) // args.eval_rows)
    print(
        f"pydoc_data text: {len(text):,} chars (sha256 {digest}), {vocab.vocab_size} symbols; "
        f"train {streams.size:,} as {streams.shape[0]} streams, valid {valid_x.size:,}, "
        f"test {test_x.size:,}"
    )
    baseline = unigram_bits(test_x.ravel(), vocab.vocab_size)
    smoothed = unigram_bits(test_x.ravel(), vocab.vocab_size, reference=train)
    print(f"unigram baseline on test: {baseline:.3f} bits/char ({smoothed:.3f} fitted on train)")
    print(
        f"settings: hidden {args.hidden_size}, bptt {args.bptt_length}, batch "
        f"{args.batch_size}, lr {args.learning_rate}, epochs <= {args.epochs}, "
        f"patience {args.patience}"
    )
    results = {"unigram_bits": baseline, "unigram_train_bits": smoothed}
    for name in args.families.split(","):
        model = FAMILIES[name](vocab_size=vocab.vocab_size, hidden_size=args.hidden_size)
        params = model.init(jax.random.key(args.seed))
        start = time.perf_counter()
        fit = fit_sgd(
            model,
            params,
            streams,
            key=jax.random.key(args.seed + 1),
            num_epochs=args.epochs,
            batch_size=args.batch_size,
            bptt_length=args.bptt_length,
            learning_rate=args.learning_rate,
            valid_data=valid_x,
            patience=args.patience,
            progress=args.progress,
        )
        seconds = time.perf_counter() - start
        test_ll = float(np.sum(probseq.log_prob(model, fit.params, test_x))) / test_x.size
        bits = -test_ll * BITS
        results[name] = bits
        h = fit.history
        valid_bits = -fit.info["best_valid_log_lik"] * BITS
        print(
            f"{name:>7}: test {bits:.3f} bits/char (valid {valid_bits:.3f}"
            f", epoch {fit.info['best_epoch']}/{h.num_entries}); {fit.info['num_steps']} steps, "
            f"{seconds:.1f} s incl. {fit.info['compile_time_s']:.1f} s compile, "
            f"{np.mean(h.tokens_per_s):,.0f} tokens/s"
        )
    return results


# What tests/test_api.py runs: the whole script in a few seconds.
TINY_ARGS = [
    *("--families", "gru", "--hidden-size", "8", "--epochs", "1"),
    *("--max-train-chars", "4096", "--bptt-length", "16", "--eval-rows", "64"),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="lstm,gru,mingru,lru")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bptt-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--max-train-chars", type=int, default=0, help="0: all")
    parser.add_argument("--eval-rows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
