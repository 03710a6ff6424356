"""Per-device memory of a data-parallel fit step, from ``compiled.memory_analysis()``.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/sharding_memory.py

One EM iteration of a categorical HMM (K32 V64 B256 T1000) and one SGD gradient step of
an LSTM (H128 V64 B256 T256) compiled with the batch split over 1, 2, 4 and 8 devices
(parameters replicated, as ``mesh=`` does); prints the per-device argument and
temporary bytes XLA plans for each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import probseq
from probseq import sharding
from probseq.core import batch_step_log_probs
from probseq.fit import em


def main():
    rng = np.random.default_rng(0)
    hmm = probseq.CategoricalHMM(32, 64)
    hmm_p = hmm.init(jax.random.key(0))
    x_hmm = jnp.asarray(rng.integers(0, 64, size=(256, 1000)))
    lstm = probseq.LSTM(vocab_size=64, hidden_size=128)
    lstm_p = lstm.init(jax.random.key(1))
    x_lstm = jnp.asarray(rng.integers(0, 64, size=(256, 256)))
    prior = em._prior(hmm, None, jnp.float32)

    def em_step(p, x, m):
        return em._em_update(hmm, p, x, m, prior, "forward_backward")[0]

    def sgd_grad(p, x, m):
        return jax.grad(lambda q: -jnp.sum(batch_step_log_probs(lstm, q, x, m)[0]))(p)

    print(f"{'step':<10} {'devices':>7} {'arguments MB':>13} {'temporaries MB':>15}")
    for name, fn, params, x in (
        ("EM", em_step, hmm_p, x_hmm),
        ("SGD", sgd_grad, lstm_p, x_lstm),
    ):
        for n in (1, 2, 4, 8):
            if n > jax.device_count():
                break
            mesh = sharding.mesh_of(n)
            xs, ms = sharding.shard_batch(mesh, x, jnp.ones(x.shape, bool))
            compiled = jax.jit(fn).lower(sharding.replicate(mesh, params), xs, ms).compile()
            mem = compiled.memory_analysis()
            print(
                f"{name:<10} {n:>7} {mem.argument_size_in_bytes / 1e6:>13.1f} "
                f"{mem.temp_size_in_bytes / 1e6:>15.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
