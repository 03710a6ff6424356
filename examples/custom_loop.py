"""A training loop of your own around ``probseq.sgd_update`` (and ``em_step``).

``fit_sgd`` is the convenient driver (epochs, TBPTT, validation, early stopping,
checkpoints, progress). When you want your own loop -- a custom schedule, logging,
pjit or sharding of your own, several models stepped together -- take the pure step:
``state = probseq.sgd_init(model, params, optimizer)``, then
``state, metrics = probseq.sgd_update(state, (x, mask))``, jit-compiled once. The same
for EM: ``params, log_likelihood = probseq.em_step(hmm, params, x, mask=mask)``.

Here: a GRU and a categorical HMM on English text (CPython's help topics, shipped with
Python), the GRU by Adam with a cosine learning-rate schedule in a hand-written loop,
the HMM by a hand-written EM loop; both scored on held-out text in bits per character.

    python examples/custom_loop.py [--steps 300] [--hidden-size 64] [--num-states 16]

Measured (2026-11-30, 2-core CPU, defaults: 200,000 characters, 300 steps of batch
32 x 64 characters, 15 EM iterations; 27 s in all): the GRU reaches 3.26 bits/char on
the held-out text, the 16-state HMM 4.39 (15 iterations from a random start are barely
past the unigram's ~4.45; the demo's 32-state HMM fitted to convergence reaches ~3.1).
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import probseq
from probseq import data

TINY_ARGS = ["--steps", "3", "--hidden-size", "8", "--num-states", "3", "--chars", "4000"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-states", type=int, default=16)
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    splits = data.text_splits(data.pydoc_text()[: args.chars], sequence_length=64)
    v = splits.vocabulary.vocab_size
    train_x, train_m = jnp.asarray(splits.train.x), jnp.asarray(splits.train.mask)
    key = jax.random.key(args.seed)

    # --- SGD: your loop, the library's pure step
    gru = probseq.GRU(vocab_size=v, hidden_size=args.hidden_size)
    schedule = optax.cosine_decay_schedule(5e-3, args.steps)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    state = probseq.sgd_init(gru, gru.init(key), optimizer)
    step = jax.jit(probseq.sgd_update)
    rows = train_x.shape[0]
    for i in range(args.steps):
        idx = jax.random.choice(jax.random.fold_in(key, i), rows, (min(32, rows),), replace=False)
        state, metrics = step(state, (train_x[idx], train_m[idx]))
        if i % max(args.steps // 5, 1) == 0:
            print(f"step {i:4d}  loss {float(metrics['loss']):.3f} nats/char")

    # --- EM: your loop, the library's pure step
    hmm = probseq.CategoricalHMM(args.num_states, v)
    params = hmm.init(jax.random.fold_in(key, 1))
    num_iters = max(args.steps // 20, 2)
    for _ in range(num_iters):
        params, log_likelihood = probseq.em_step(
            hmm, params, train_x, mask=train_m, prior={"emission": 1.1}
        )
    print(f"EM: log-likelihood {float(log_likelihood):.1f} after {num_iters} iterations")

    test = splits.test
    tokens = float(np.asarray(test.mask).sum())
    out = {}
    for name, (model, p) in {"gru": (gru, state.params), "hmm": (hmm, params)}.items():
        lp = float(jnp.sum(probseq.log_prob(model, p, test.x, test.mask)))
        out[name] = -lp / tokens / math.log(2)
        print(f"{name}: {out[name]:.3f} bits/char on held-out text")
    return out


if __name__ == "__main__":
    main()
