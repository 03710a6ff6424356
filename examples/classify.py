"""Many-to-one: classify token sequences by which of two motifs comes first.

Each sequence is 10-30 random tokens over 8 symbols in which two different 3-token
motifs (of three) are planted without overlap, each once (backgrounds that hold a
motif by chance are redrawn, so every label is unambiguous); the label is the index
of the motif that comes first: the classifier must remember the first motif it saw
until the end of the sequence, whatever comes after it. A
``probseq.SequenceClassifier`` (a GRU encoder; a categorical head on its final state)
models p(label | x_1..x_T) and is fitted with
``probseq.fit_sgd(clf, params, labels[:, None], source=sequences)``: the label is a
length-1 target sequence. Prediction is the most probable label
(``probseq.decoding.greedy(clf, params, 1, source=...)``).

Measured (defaults: 6,000 training sequences, hidden size 32, 8 epochs = 752 steps of
batch 64, Adam 5e-3; 2,000 held-out sequences; seed 0; a shared 2-core CPU, float32):
held-out accuracy 0.999 (log loss 0.0065 nats), fit 14-17 s.

    python examples/classify.py [--epochs 8] [--hidden-size 32]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import probseq

VOCAB = 8
MOTIFS = np.array([[3, 1, 4], [1, 5, 2], [6, 2, 6]])


def _count(seq, motif) -> int:
    k = len(motif)
    return sum(np.array_equal(seq[i : i + k], motif) for i in range(len(seq) - k + 1))


def make_data(rng: np.random.Generator, num: int, min_len=10, max_len=30):
    """(sequences: list of int arrays, labels (num,)): two different motifs planted
    without overlap, nothing else motif-like; the label is the one that comes first."""
    seqs, labels = [], rng.integers(0, len(MOTIFS), size=num)
    for label in labels:
        n = int(rng.integers(min_len, max_len + 1))
        other = int(rng.choice([k for k in range(len(MOTIFS)) if k != label]))
        while True:
            seq = rng.integers(0, VOCAB, size=n)
            first = int(rng.integers(0, n - 5))
            second = int(rng.integers(first + 3, n - 2))
            seq[first : first + 3] = MOTIFS[label]
            seq[second : second + 3] = MOTIFS[other]
            if all(_count(seq, m) == (k in (label, other)) for k, m in enumerate(MOTIFS)):
                break
        seqs.append(seq)
    return seqs, labels


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    train_x, train_y = make_data(rng, args.num_train)
    valid_x, valid_y = make_data(rng, args.num_valid)
    test_x, test_y = make_data(rng, args.num_test)
    clf = probseq.SequenceClassifier(
        probseq.GRU(vocab_size=VOCAB, hidden_size=args.hidden_size), num_classes=len(MOTIFS)
    )
    params = clf.init(jax.random.key(args.seed))
    tic = time.perf_counter()
    fit = probseq.fit_sgd(
        clf,
        params,
        train_y[:, None],
        source=train_x,
        valid_data=valid_y[:, None],
        valid_source=valid_x,
        key=jax.random.key(args.seed + 1),
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        progress=args.progress,
    )
    seconds = time.perf_counter() - tic
    pred = np.asarray(probseq.decoding.greedy(clf, fit.params, 1, source=test_x).sequences[:, 0])
    acc = float(np.mean(pred == test_y))
    nll = -float(np.mean(probseq.log_prob(clf, fit.params, test_y[:, None], source=test_x)))
    print(f"held-out accuracy {acc:.4f}, log loss {nll:.4f} nats, fit {seconds:.0f} s")
    return {"accuracy": acc, "log_loss": nll, "fit_s": seconds}


TINY_ARGS = [*("--num-train", "64", "--num-valid", "16", "--num-test", "16", "--epochs", "1")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-valid", type=int, default=500)
    parser.add_argument("--num-test", type=int, default=2000)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
