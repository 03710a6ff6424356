"""Log-likelihood throughput: probseq vs dynamax vs hmmlearn (HMMs), and the
recurrent families' fast paths vs the generic scan of ``update``.

    python benchmarks/likelihood.py [--quick] [--repeats 5]

Every engine scores the same data with the same parameters; times are the median
of ``--repeats`` warm runs (compilation excluded, reported separately for probseq).
Ratios are anchor time / probseq time: > 1 means probseq is faster.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import probseq
from probseq.core import SequenceModel

HMM_WORKLOADS = {
    "small": dict(k=4, v=6, b=10, t=1000),
    "medium": dict(k=32, v=64, b=64, t=1000),
    "largeK": dict(k=256, v=128, b=8, t=2000),
    "long": dict(k=8, v=16, b=1, t=1_000_000),
}


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _random_hmm(rng, k, v):
    pi = rng.dirichlet(np.ones(k))
    a = rng.dirichlet(np.ones(k), size=k)
    b = rng.dirichlet(np.ones(v), size=k)
    return pi, a, b


def bench_hmm(name, k, v, b, t, repeats):
    rng = np.random.default_rng(0)
    pi, a, em = _random_hmm(rng, k, v)
    x = rng.integers(0, v, size=(b, t))
    row = {"workload": name, "shape": f"K{k} V{v} B{b} T{t}"}

    model = probseq.CategoricalHMM(k, v)
    params = model.init(jax.random.key(0), initial_probs=pi, transition_matrix=a, emission_probs=em)
    t0 = time.perf_counter()
    jax.block_until_ready(probseq.log_prob(model, params, x))
    row["probseq_first"] = time.perf_counter() - t0
    row["probseq"] = _median_time(lambda: probseq.log_prob(model, params, x), repeats)

    try:
        from hmmlearn.hmm import CategoricalHMM as HL

        hl = HL(n_components=k, n_features=v, init_params="", params="")
        hl.startprob_, hl.transmat_, hl.emissionprob_ = pi, a, em
        flat, lengths = x.reshape(-1, 1), [t] * b
        row["hmmlearn"] = _median_time(lambda: hl.score(flat, lengths), max(1, repeats // 2))
    except ImportError:
        row["hmmlearn"] = float("nan")

    try:
        import dynamax.hidden_markov_model as dhmm

        precision = jax.config.jax_default_matmul_precision  # dynamax sets it on import
        dm = dhmm.CategoricalHMM(k, 1, v)
        dparams, _ = dm.initialize(
            jax.random.PRNGKey(0),
            initial_probs=jnp.asarray(pi, jnp.float32),
            transition_matrix=jnp.asarray(a, jnp.float32),
            emission_probs=jnp.asarray(em[:, None, :], jnp.float32),
        )
        score = jax.jit(jax.vmap(dm.marginal_log_prob, in_axes=(None, 0)))
        xd = jnp.asarray(x[..., None])
        jax.block_until_ready(score(dparams, xd))
        row["dynamax"] = _median_time(lambda: score(dparams, xd), repeats)
        jax.config.update("jax_default_matmul_precision", precision)
    except Exception as e:  # noqa: BLE001 - an anchor that fails (e.g. memory) is reported
        print(f"  dynamax failed on {name}: {type(e).__name__}: {str(e)[:120]}")
        row["dynamax"] = float("nan")
    return row


def _kernel(model, path, params, x):
    """A warm, jitted batch of one sequence-scoring path (no API-boundary checks)."""

    def one(xs):
        return path(params, model.initial_state(params), xs)[0].sum()

    fn = jax.jit(jax.vmap(one))
    jax.block_until_ready(fn(x))
    return lambda: fn(x)


def bench_recurrent(b, t, hidden, repeats):
    rows = []
    rng = np.random.default_rng(0)
    x = rng.integers(0, 64, size=(b, t))
    families = [
        ("RNN", probseq.RNN, {}),
        ("LSTM", probseq.LSTM, {}),
        ("GRU", probseq.GRU, {}),
        ("MinGRU seq", probseq.MinGRU, {"scan": "sequential"}),
        ("MinGRU par", probseq.MinGRU, {"scan": "parallel"}),
        ("LRU seq", probseq.LRU, {"scan": "sequential"}),
        ("LRU par", probseq.LRU, {"scan": "parallel"}),
    ]
    for name, family, kw in families:
        model = family(vocab_size=64, hidden_size=hidden, num_layers=2, **kw)
        params = model.init(jax.random.key(0))
        fast = _median_time(_kernel(model, model.sequence_log_probs, params, x), repeats)
        generic_path = lambda *a, m=model: SequenceModel.sequence_log_probs(m, *a)  # noqa: E731
        generic = _median_time(_kernel(model, generic_path, params, x), repeats)
        rows.append((name, fast, generic, b * t / fast))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workloads only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(
        f"{platform.processor() or platform.machine()}, jax {jax.__version__} "
        f"({jax.default_backend()}), python {platform.python_version()}"
    )

    print("\nHMM log-likelihood (seconds per call, median; ratio = anchor / probseq)")
    print(
        f"{'workload':<8} {'shape':<24} {'probseq':>9} {'compile':>8} {'dynamax':>9} "
        f"{'hmmlearn':>9} {'x dyn':>6} {'x hmml':>6}"
    )
    names = ["small"] if args.quick else list(HMM_WORKLOADS)
    for name in names:
        r = bench_hmm(name, **HMM_WORKLOADS[name], repeats=args.repeats)
        print(
            f"{r['workload']:<8} {r['shape']:<24} {r['probseq']:>9.4f} {r['probseq_first']:>8.2f} "
            f"{r['dynamax']:>9.4f} {r['hmmlearn']:>9.4f} {r['dynamax'] / r['probseq']:>6.1f} "
            f"{r['hmmlearn'] / r['probseq']:>6.1f}"
        )

    b, t, hidden = (4, 128, 32) if args.quick else (32, 256, 128)
    print(f"\nRecurrent log-likelihood, 2 layers, B{b} T{t} H{hidden} (seconds per call)")
    print(f"{'family':<12} {'fast path':>10} {'generic':>10} {'speedup':>8} {'tokens/s':>11}")
    for name, fast, generic, tps in bench_recurrent(b, t, hidden, args.repeats):
        print(f"{name:<12} {fast:>10.4f} {generic:>10.4f} {generic / fast:>8.2f} {tps:>11.0f}")


if __name__ == "__main__":
    main()
