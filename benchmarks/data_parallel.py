"""Data-parallel fit_sgd and fit_em: the same fit on 1 device and on a mesh of n.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/data_parallel.py

On a CPU the "devices" are slices of the same cores (XLA's host platform split n ways),
so this measures the cost of the mesh (sharded steps, the gradient all-reduce, the
state kept replicated between calls), not a speed-up: one CPU device already uses
every core. On a machine with several accelerators the same script measures scaling.
Each fit runs twice per device count (the first compiles) and the second is timed;
tokens/s is the history's own (its clock reads after the work), checked against the
wall clock. Also prints the largest parameter difference from the one-device fit.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import probseq
from probseq.sharding import mesh_of


def _fit_sgd(model, params, x, mesh, epochs, batch, bptt):
    return probseq.fit_sgd(model, params, x, key=jax.random.key(1), num_epochs=epochs,
                           batch_size=batch, bptt_length=bptt, learning_rate=1e-3,
                           progress=False, mesh=mesh)  # fmt: skip


def _fit_em(model, params, x, mesh, iters):
    return probseq.fit_em(model, params, x, num_iters=iters, tol=0.0, mesh=mesh)


def _diff(a, b):
    return max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)))) for p, q in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    counts = [n for n in (1, 2, 4, 8) if n <= jax.device_count()]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 64, size=(args.rows, args.length))
    tokens = x.size
    lstm = probseq.LSTM(vocab_size=64, hidden_size=args.hidden)
    lstm_p = lstm.init(jax.random.key(0))
    hmm = probseq.CategoricalHMM(32, 64)
    hmm_p = hmm.init(jax.random.key(0))
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, devices {counts}; "
          f"data {args.rows} x {args.length} tokens")  # fmt: skip
    print(f"{'workload':<34} {'devices':>7} {'tokens/s':>11} {'wall s':>8} "
          f"{'vs 1 device':>11} {'max |dparam|':>13}")  # fmt: skip
    workloads = (
        (f"fit_sgd LSTM H{args.hidden} B{args.batch} TBPTT 32",
         lambda mesh: _fit_sgd(lstm, lstm_p, x, mesh, args.epochs, args.batch, 32)),
        ("fit_em CategoricalHMM K32 V64, 20 iters", lambda mesh: _fit_em(hmm, hmm_p, x, mesh, 20)),
    )  # fmt: skip
    for name, fit in workloads:
        base, base_rate = None, None
        for n in counts:
            mesh = None if n == 1 else mesh_of(n)
            fit(mesh)  # compiles
            tic = time.perf_counter()
            result = fit(mesh)
            wall = time.perf_counter() - tic
            if name.startswith("fit_sgd"):
                rate = float(np.sum(result.history.num_tokens) / np.sum(result.history.time_s))
            else:
                rate = tokens * 20 / wall
            base = base or result
            base_rate = base_rate or rate
            print(f"{name:<34} {n:>7} {rate:>11.4g} {wall:>8.2f} {rate / base_rate:>10.2f}x "
                  f"{_diff(result.params, base.params):>13.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
