"""One process of tests/test_multihost.py's two-process runs (a jax.distributed job on
localhost, 2 CPU devices per process; XLA_FLAGS is set by the test before JAX starts).

    python tests/_multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON CKPT_DIR MODE [DIE_AT]

Each process passes only its own share of the data (probseq.sharding.process_split)
to the same calls with a mesh over every process's devices, and writes what it got to
OUT_JSON. MODE "all": log_prob, fit_em and fit_sgd; "sgd": fit_sgd only. With
DIE_AT=e the process kills itself (SIGKILL) when fit_sgd logs the end of epoch e: a
fit killed in its middle, which a second run resumes from CKPT_DIR.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import numpy as np

VOCAB = 5
# 4 epochs of TBPTT windows, 2 optimizer steps per compiled call: every epoch crosses
# several calls (the state's layout must survive each; issue 26)
SGD = {"num_epochs": 4, "batch_size": 5, "bptt_length": 8, "checkpoint_every": 3,
       "steps_per_call": 2}  # fmt: skip


def dataset():
    """Ragged token sequences (train, valid), the same in every process and in the test."""
    rng = np.random.default_rng(0)
    lengths = (17, 5, 12, 17, 1, 9, 14, 3, 11)
    train = [rng.integers(0, VOCAB, size=n) for n in lengths]
    valid = [rng.integers(0, VOCAB, size=n) for n in (10, 4, 7)]
    return train, valid


def models():
    import jax

    import probseq

    hmm = probseq.CategoricalHMM(3, VOCAB)
    lstm = probseq.LSTM(vocab_size=VOCAB, hidden_size=6)
    return hmm, hmm.init(jax.random.key(0)), lstm, lstm.init(jax.random.key(2))


def fit_sgd(lstm, params, train, valid, checkpoint_dir=None, mesh=None):
    import jax

    import probseq

    return probseq.fit_sgd(
        lstm,
        params,
        train,
        key=jax.random.key(3),
        valid_data=valid,
        learning_rate=0.05,
        progress=False,
        checkpoint_dir=checkpoint_dir,
        mesh=mesh,
        **SGD,
    )


class _DieAt(logging.Handler):
    def __init__(self, epoch):
        super().__init__()
        self.marker = f"epoch {epoch}/"

    def emit(self, record):
        if record.getMessage().startswith(self.marker):
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv):
    process_id, num_processes, port = int(argv[0]), int(argv[1]), int(argv[2])
    out_path, checkpoint_dir = argv[3], argv[4]
    mode = argv[5]
    die_at = int(argv[6]) if len(argv) > 6 else None

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=10,
    )
    import probseq
    from probseq.sharding import mesh_of, process_split

    assert jax.process_count() == num_processes and jax.local_device_count() == 2
    mesh = mesh_of("all")
    train, valid = dataset()
    hmm, hmm_p, lstm, lstm_p = models()
    my_train, my_valid = process_split(train), process_split(valid)
    out = {"process_index": jax.process_index(), "num_devices": jax.device_count()}
    if mode == "all":
        out["log_prob"] = np.asarray(probseq.log_prob(hmm, hmm_p, my_train, mesh=mesh)).tolist()
        em = probseq.fit_em(hmm, hmm_p, my_train, num_iters=10, tol=0.0, mesh=mesh)
        out["em_params"] = [np.asarray(a).tolist() for a in jax.tree.leaves(em.params)]
        out["em_log_likelihood"] = np.asarray(em.history["log_likelihood"]).tolist()
        out["em_num_tokens"] = em.info["num_tokens"]
    if die_at is not None:
        log = logging.getLogger("probseq.fit.sgd")
        log.setLevel(logging.INFO)
        log.addHandler(_DieAt(die_at))
    sgd = fit_sgd(lstm, lstm_p, my_train, my_valid, checkpoint_dir=checkpoint_dir, mesh=mesh)
    out["sgd_params"] = [np.asarray(a).tolist() for a in jax.tree.leaves(sgd.params)]
    out["sgd_valid"] = np.asarray(sgd.history["valid_log_likelihood_per_token"]).tolist()
    out["resumed_from_step"] = sgd.info["resumed_from_step"]
    out["sgd_steps"] = np.asarray(sgd.history["num_steps"]).tolist()  # cumulative
    out["sgd_steps_per_call"] = sgd.info["steps_per_call"]
    with open(out_path, "w") as f:
        json.dump(out, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
