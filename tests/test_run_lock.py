"""Two fits into one --out: a lock file (O_EXCL) lets one write it, the other is refused
with one line naming the directory and the holder's pid; the lock of a killed fit
(SIGKILL) blocks no later fit or resume. Real processes, as a user would start them."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from probseq import cli, io

LOCK = ".probseq-lock"
HMM = """seed = 0
[data]
kind = "text"
sequence_length = 64
split = [0.8, 0.1, 0.1]
[model]
family = "hmm"
num_states = 3
[fit]
method = "em"
num_iters = 20
"""
# Imports first, then waits for the go file: both fits reach their claim together.
WAIT_THEN_FIT = """
import os, sys, time
from probseq import cli
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.fixture()
def files(tmp_path):
    spec = tmp_path / "hmm.toml"
    spec.write_text(HMM)
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    return spec, text


def _start(go, argv, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-c", WAIT_THEN_FIT, str(go), *map(str, argv)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_fits_into_one_new_out_at_the_same_moment(files, tmp_path):
    spec, text = files
    out = tmp_path / "runs" / "hmm"
    go = tmp_path / "go"
    argv = ["fit", spec, "--data", text, "--out", out, "--quiet"]
    procs = [_start(go, argv, tmp_path) for _ in range(2)]
    time.sleep(4.0)  # both have imported probseq and wait
    go.write_text("")
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 1], [(p.returncode, err) for p, _, err in results]
    (winner, _, _), (loser, _, err) = sorted(results, key=lambda r: r[0].returncode)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probseq: error: "), err
    assert str(out) in lines[0] and f"pid {winner.pid}" in lines[0], lines[0]
    assert not (out / LOCK).exists()  # released when the run was saved
    io.load(out)


def test_a_lock_left_by_a_sigkilled_fit_blocks_no_later_fit(files, tmp_path):
    spec, text = files
    out = tmp_path / "hmm"
    go = tmp_path / "go"
    go.write_text("")
    argv = ["fit", spec, "--data", text, "--out", out, "--quiet"]
    proc = _start(go, argv, tmp_path)
    deadline = time.time() + 120
    while not (out / LOCK).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    held = (out / LOCK).exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert held, "the fit took no lock file in --out"
    assert (out / LOCK).exists()  # a SIGKILL runs no cleanup: the lock stays behind
    assert cli.main([str(a) for a in argv]) == 0  # taken over: a new fit or a resume
    assert not (out / LOCK).exists()
    io.load(out)


def _record(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    start = raw[raw.rfind(b")") + 2 :].split()[19].decode()
    return {"pid": pid, "host": socket.gethostname(), "start": start, "since": "now", "token": "x"}


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_live_holder_refuses_a_fit_and_a_dead_one_does_not(files, tmp_path, capsys):
    spec, text = files
    out = tmp_path / "hmm"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps(_record(holder.pid)))
        argv = ["fit", str(spec), "--data", str(text), "--out", str(out), "--quiet"]
        assert cli.main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {holder.pid}" in err[0] and str(out) in err[0], err
        assert sorted(os.listdir(out)) == [LOCK]  # nothing written; the holder's lock kept
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(argv) == 0  # the holder is gone: its lock is stale
    assert LOCK not in os.listdir(out)
    io.load(out)
