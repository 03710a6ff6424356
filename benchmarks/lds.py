"""Linear dynamical system: log-likelihood and one EM iteration, probseq vs dynamax.

    python benchmarks/lds.py [--steps 1000 10000 100000] [--state-dim 4] [--obs-dim 2]
                             [--repeats 3] [--extra 3] [--no-em]

Same data and parameters for both, float32 (their default), one sequence of T steps.
Times are seconds, warm (the first call's compile excluded), the best of --repeats:

* log p(y): ``probseq.log_prob`` with ``LDS(scan="sequential")`` (the square-root
  filter) and ``scan="parallel"`` (the associative scan), against dynamax's
  ``lgssm_filter`` and ``parallel_lgssm_filter`` (marginal log-likelihood), each jitted
  with the data passed as an argument.
* EM: the extra time of one more iteration, (t(1 + n) - t(1)) / n with n = --extra
  (at least 2e4 / T),
  of ``probseq.fit_lds_em`` (tol=0, initial="learn" as dynamax; E-step through the
  sequential and the parallel filter) and of dynamax's ``LinearGaussianSSM.fit_em``
  (its one E-step, the sequential RTS smoother: the anchor of both rows).

ratio = dynamax / probseq (> 1: probseq is faster), sequential against sequential and
parallel against parallel.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

import probseq


def _best(fn, repeats):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def _problem(n, p, t):
    model = probseq.LDS(state_dim=n, obs_dim=p)
    params = model.init(jax.random.key(0), dtype=jnp.float32)
    y = probseq.sample(model, params, jax.random.key(1), t)
    return model, params, y


def _dynamax(model, params):
    before = jax.config.jax_default_matmul_precision
    from dynamax.linear_gaussian_ssm import (
        LinearGaussianSSM,
        lgssm_filter,
        parallel_lgssm_filter,
    )

    jax.config.update("jax_default_matmul_precision", before)  # dynamax sets it on import
    mats = model.matrices(params)
    ssm = LinearGaussianSSM(model.state_dim, model.obs_dim)
    dp, props = ssm.initialize(
        jax.random.key(0),
        initial_mean=mats.initial_mean,
        initial_covariance=mats.initial_covariance,
        dynamics_weights=mats.dynamics,
        dynamics_covariance=mats.dynamics_covariance,
        dynamics_bias=jnp.zeros(model.state_dim),
        emission_weights=mats.emission,
        emission_covariance=mats.emission_covariance,
        emission_bias=jnp.zeros(model.obs_dim),
    )
    return ssm, dp, props, lgssm_filter, parallel_lgssm_filter


CHILD_CAP_S = 300


def _dynamax_parallel_in_child(t, n, p, repeats):
    """dynamax's parallel filter timed in a child process under a time cap: on this
    CPU (jax 0.10.2, 2 cores) its T = 1e5 call never returned (the process sat in a
    futex wait at 0% CPU for minutes, twice), and a hung XLA call cannot be cancelled.
    NaN (printed as such) when the child does not answer within CHILD_CAP_S."""
    cmd = [sys.executable, __file__, "--child-dynamax-parallel", str(t), str(n), str(p),
           str(repeats)]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_CAP_S)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        print(f"  (dynamax parallel filter, T={t}: no answer within {CHILD_CAP_S} s)", flush=True)
        return float("nan")


def _child_dynamax_parallel(t, n, p, repeats):
    model, params, y = _problem(n, p, t)
    _, dp, _, _, par_filter = _dynamax(model, params)
    d_par = jax.jit(lambda q, e: par_filter(q, e).marginal_loglik)
    print(_best(lambda: d_par(dp, y), repeats), flush=True)


def run(steps, n, p, repeats, extra, em):
    """Rows (workload, path, probseq seconds, dynamax seconds) for each T in ``steps``."""
    return [row for t in steps for row in _workload(t, n, p, repeats, extra, em)]


def _workload(t, n, p, repeats, extra, em):
    rows = []
    model, params, y = _problem(n, p, t)
    ssm, dp, props, seq_filter, _ = _dynamax(model, params)  # parallel: in a child
    seq = probseq.LDS(state_dim=n, obs_dim=p, scan="sequential")
    par = probseq.LDS(state_dim=n, obs_dim=p, scan="parallel")
    d_seq = jax.jit(lambda q, e: seq_filter(q, e).marginal_loglik)
    times = {
        "probseq sequential": _best(lambda: probseq.log_prob(seq, params, y), repeats),
        "probseq parallel": _best(lambda: probseq.log_prob(par, params, y), repeats),
        "dynamax sequential": _best(lambda: d_seq(dp, y), repeats),
        "dynamax parallel": _dynamax_parallel_in_child(t, n, p, repeats),
    }
    rows.append((f"log p(y) T={t}", "sequential", times["probseq sequential"],
                 times["dynamax sequential"]))  # fmt: skip
    rows.append((f"log p(y) T={t}", "parallel", times["probseq parallel"],
                 times["dynamax parallel"]))  # fmt: skip
    if em:

        def ours(k, m=seq):
            return probseq.fit_lds_em(m, params, y, num_iters=k, tol=0.0,
                                      initial="learn").params  # fmt: skip

        def theirs(k):
            return ssm.fit_em(dp, props, y, num_iters=k, verbose=False)[0]

        # dynamax's fit_em compiles its step on every call: enough extra iterations that
        # they, not the compile's noise, make the difference (about 2e4 steps' worth).
        extra = max(extra, -(-20_000 // t))
        per = {}
        for name, fn in (("sequential", ours), ("parallel", lambda k: ours(k, par)),
                         ("dynamax", theirs)):  # fmt: skip
            one = _best(lambda fn=fn: fn(1), repeats)
            more = _best(lambda fn=fn: fn(1 + extra), repeats)
            per[name] = max(more - one, 0.0) / extra
        # dynamax's fit_em has one E-step, the sequential RTS smoother: the anchor of both.
        rows.append((f"EM iteration T={t}", "sequential", per["sequential"], per["dynamax"]))
        rows.append((f"EM iteration T={t}", "parallel", per["parallel"], per["dynamax"]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--state-dim", type=int, default=4)
    parser.add_argument("--obs-dim", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra", type=int, default=3)
    parser.add_argument("--no-em", action="store_true")
    parser.add_argument("--child-dynamax-parallel", type=int, nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_dynamax_parallel:
        return _child_dynamax_parallel(*args.child_dynamax_parallel)
    import dynamax

    print(f"# {datetime.date.today()} {platform.machine()}, {jax.default_backend()}, "
          f"python {platform.python_version()}, jax {jax.__version__}, dynamax "
          f"{dynamax.__version__}; n={args.state_dim}, p={args.obs_dim}, float32")  # fmt: skip
    print("| workload | path | probseq s | dynamax s | ratio |")
    print("|---|---|---|---|---|", flush=True)
    for t in args.steps:  # each T's rows as soon as they are measured
        for name, path, ours, theirs in _workload(
            t, args.state_dim, args.obs_dim, args.repeats, args.extra, not args.no_em
        ):
            ratio = theirs / ours if ours > 0 else float("nan")
            print(f"| {name} | {path} | {ours:.4g} | {theirs:.4g} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
