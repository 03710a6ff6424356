"""Two processes on localhost (jax.distributed, coordinator 127.0.0.1 on a free port,
2 CPU devices each, gloo collectives) give the one-process numbers; a fit killed in
its middle resumes from process 0's checkpoint and ends at the same parameters.

Each process runs tests/_multihost_worker.py with its share of the data
(probseq.sharding.process_split). Every subprocess has a timeout, so a hung
collective fails the test instead of hanging CI. Tolerance: 1e-5 relative in float32
(the shares change only the order of the batch sums).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import probseq
from probseq.fit import checkpoint
from probseq.sharding import process_split

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_multihost_worker.py"
TIMEOUT_S = 240

_spec = importlib.util.spec_from_file_location("_multihost_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run_pair(tmp: pathlib.Path, tag: str, mode: str, die_at=None, ckpt=None):
    """Start both processes, wait for both (at most TIMEOUT_S); return their return
    codes, outputs (dicts, or None) and logs."""
    port = _free_port()
    ckpt = str(ckpt or tmp / "ckpt")
    procs, outs, logs = [], [], []
    for pid in range(2):
        out, log = tmp / f"{tag}{pid}.json", tmp / f"{tag}{pid}.log"
        args = [sys.executable, str(WORKER), str(pid), "2", str(port), str(out), ckpt, mode]
        if die_at is not None and pid == 1:
            args.append(str(die_at))
        with open(log, "w") as f:
            procs.append(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=_env()))
        outs.append(out)
        logs.append(log)
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=TIMEOUT_S))
    finally:
        for p in procs:  # a hung collective: never leave a process behind
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [json.loads(o.read_text()) if o.exists() else None for o in outs]
    return codes, results, [log.read_text()[-3000:] for log in logs]


@pytest.fixture(scope="module")
def reference():
    """The one-process, one-device numbers."""
    train, valid = worker.dataset()
    hmm, hmm_p, lstm, lstm_p = worker.models()
    em = probseq.fit_em(hmm, hmm_p, train, num_iters=10, tol=0.0)
    sgd = worker.fit_sgd(lstm, lstm_p, train, valid)
    return {
        "log_prob": np.asarray(probseq.log_prob(hmm, hmm_p, train)),
        "em_params": jax.tree.leaves(em.params),
        "em_log_likelihood": em.history["log_likelihood"],
        "em_num_tokens": em.info["num_tokens"],
        "sgd_params": jax.tree.leaves(sgd.params),
        "sgd_valid": sgd.history["valid_log_likelihood_per_token"],
    }


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-5, atol=1e-6)


def _same_fit(result, reference, names):
    for name in names:
        got, want = result[name], reference[name]
        if isinstance(want, list):
            for a, b in zip(got, want, strict=True):
                _close(a, b)
        else:
            _close(got, want)


@pytest.mark.slow
def test_two_processes_give_the_one_process_numbers(tmp_path, reference):
    codes, results, logs = _run_pair(tmp_path, "run", "all")
    assert codes == [0, 0], logs
    train, _ = worker.dataset()
    for pid, result in enumerate(results):
        assert result["process_index"] == pid and result["num_devices"] == 4
        # log_prob: each process gets the scores of the sequences it passed
        share = process_split(list(reference["log_prob"]), process_index=pid, process_count=2)
        _close(result["log_prob"], share)
        _same_fit(result, reference, ["em_params", "em_log_likelihood", "sgd_params", "sgd_valid"])
        # >= 3 epochs, each of several compiled calls (the boundary is crossed)
        steps = np.diff([0] + result["sgd_steps"])
        assert len(steps) >= 3 and steps.min() > result["sgd_steps_per_call"], steps
        assert result["em_num_tokens"] == reference["em_num_tokens"] == sum(map(len, train))
        assert result["resumed_from_step"] is None
    meta = checkpoint.read_metadata(tmp_path / "ckpt")
    assert meta["run"]["status"] == "completed"
    assert meta["run"]["epoch"] == worker.SGD["num_epochs"]


@pytest.mark.slow
def test_killed_fit_resumes_from_the_checkpoint(tmp_path, reference):
    # Process 1 kills itself (SIGKILL) when epoch 2 ends; process 0 then stops too
    # (the distributed service sees a dead peer) or is killed at the timeout.
    codes, results, logs = _run_pair(tmp_path, "killed", "sgd", die_at=2)
    assert codes[1] == -9, logs
    assert results == [None, None], logs
    meta = checkpoint.read_metadata(tmp_path / "ckpt")
    assert meta["run"]["status"] == "running"
    done = meta["run"]["epoch"]
    assert 1 <= done < worker.SGD["num_epochs"]
    # Restart both: the fit resumes from process 0's checkpoint, ends at the same params.
    codes, results, logs = _run_pair(tmp_path, "resumed", "sgd")
    assert codes == [0, 0], logs
    for result in results:
        assert result["resumed_from_step"] == meta["run"]["num_steps"] > 0
        _same_fit(result, reference, ["sgd_params", "sgd_valid"])
    assert checkpoint.read_metadata(tmp_path / "ckpt")["run"]["status"] == "completed"


def test_process_split_blocks():
    data = list(range(7))
    shares = [process_split(data, process_index=p, process_count=3) for p in range(3)]
    assert shares == [[0, 1], [2, 3], [4, 5, 6]]
    x, m = np.arange(10).reshape(5, 2), np.ones((5, 2), bool)
    sx, sm = process_split((x, m), process_index=1, process_count=2)
    np.testing.assert_array_equal(sx, x[2:5])
    assert sm.shape == (3, 2)
    assert process_split(data) == data  # one process: everything


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"process_index": 2, "process_count": 2}, "0 <= process_index < process_count"),
        ({"process_index": 0, "process_count": 0}, "process_index"),
    ],
)
def test_process_split_rejects_bad_indices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        process_split([1, 2, 3], **kwargs)


def test_process_split_rejects_too_few_sequences():
    with pytest.raises(ValueError, match="1 sequence"):
        process_split([np.zeros(3)], process_index=0, process_count=2)
    with pytest.raises(ValueError, match="different numbers of rows"):
        process_split((np.zeros((3, 2)), np.zeros((2, 2))), process_index=0, process_count=1)


_SPEC = """seed = 0
[data]
kind = "text"
sequence_length = 12
split = [0.8, 0.1, 0.1]
[model]
family = "gru"
hidden_size = 6
[fit]
method = "sgd"
num_epochs = 2
batch_size = 3
learning_rate = 0.05
"""


@pytest.mark.slow
def test_cli_fit_on_two_processes_equals_one(tmp_path):
    """`probseq fit --devices all` with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID: one run directory (written by process 0), the one-process params."""
    from probseq import cli

    spec, text = tmp_path / "gru.toml", tmp_path / "text.txt"
    spec.write_text(_SPEC)
    text.write_text("the quick brown fox jumps over the lazy dog. " * 6)
    one = tmp_path / "one"
    assert cli.main(["fit", str(spec), "--data", str(text), "--out", str(one), "--quiet"]) == 0
    port, two = _free_port(), tmp_path / "two"
    procs = []
    for pid in range(2):
        env = _env()
        env.update(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
        )  # fmt: skip
        args = ["fit", str(spec), "--data", str(text), "--out", str(two), "--devices", "all"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "probseq.cli", *args, "--quiet"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        )
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "saved" in outs[0] and "saved" not in outs[1]  # process 0 alone talks and writes
    a, b = probseq.load(one), probseq.load(two)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        _close(y, x)


def test_cli_distributed_env_needs_devices(tmp_path, monkeypatch, capsys):
    from probseq import cli

    spec = tmp_path / "gru.toml"
    spec.write_text(_SPEC)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    code = cli.main(["fit", str(spec), "--data", "builtin:pydoc", "--out", str(tmp_path / "r")])
    assert code in (1, 2)  # one line, before any work
    assert "needs --devices all" in capsys.readouterr().err
