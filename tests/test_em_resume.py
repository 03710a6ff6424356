"""EM fits resume: a fit killed with SIGKILL mid-run and started again with the same
checkpoint_dir ends with the parameters of an uninterrupted fit (bit-identical: the
checkpoint holds the whole EMState and the compiled iteration is the same), for an
HMM, an input-driven HMM and an LDS from Python, and for an HMM from the CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import probseq
from probseq.fit import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, sys, time
import jax, numpy as np, probseq
from probseq.fit import checkpoint

directory, out = sys.argv[1], sys.argv[2]
save = checkpoint.save_checkpoint
def slow_save(*args, **kwargs):  # each call takes a while, so the parent can kill mid-run
    path = save(*args, **kwargs)
    time.sleep(0.1)
    return path
checkpoint.save_checkpoint = slow_save
{setup}
res = fit(checkpoint_dir=directory)
np.savez(out, *[np.asarray(a) for a in jax.tree.leaves(res.params)])
print(json.dumps({{"resumed_from_step": res.info["resumed_from_step"],
                  "num_iters": res.info["num_iters"],
                  "log_likelihood": res.history["log_likelihood"].tolist()}}))
"""

SETUPS = {
    "hmm": """
model = probseq.CategoricalHMM(3, 4)
x = np.random.default_rng(0).integers(0, 4, size=(6, 40))
fit = lambda **kw: probseq.fit_em(model, model.init(jax.random.key(0)), x, num_iters=40,
                                  tol=0.0, num_restarts=2, key=jax.random.key(1), **kw)
""",
    "input_hmm": """
model = probseq.CategoricalHMM(2, 3, input_dim=1)
rng = np.random.default_rng(1)
x, u = rng.integers(0, 3, size=(4, 30)), rng.normal(size=(4, 30, 1)).astype(np.float32)
fit = lambda **kw: probseq.fit_em(model, model.init(jax.random.key(0)), x, inputs=u,
                                  num_iters=40, tol=0.0, **kw)
""",
    "lds": """
model = probseq.LDS(state_dim=2, obs_dim=2)
y = np.cumsum(np.random.default_rng(2).normal(size=(3, 30, 2)), axis=1).astype(np.float32)
fit = lambda **kw: probseq.fit_lds_em(model, model.init(jax.random.key(0)), 0.3 * y,
                                      num_iters=40, tol=0.0, **kw)
""",
}


def _kill_when(child, directory, reached) -> int:
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and child.poll() is None:
            meta = checkpoint.read_metadata(directory) if os.path.exists(directory) else None
            if meta is not None and reached(meta):
                child.send_signal(signal.SIGKILL)
                return int(meta["position"])
            time.sleep(0.01)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    raise AssertionError(f"the child ended (status {child.returncode}) before it was killed")


@pytest.mark.parametrize("case", sorted(SETUPS))
def test_em_killed_with_sigkill_resumes_to_the_same_params(tmp_path, case):
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(setup=SETUPS[case]))
    directory = str(tmp_path / "ckpt")
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(script), directory]
    child = subprocess.Popen(cmd + [str(tmp_path / "killed.npz")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    killed_at = _kill_when(child, directory, lambda m: 8 <= m["position"] < 40)
    assert child.returncode == -signal.SIGKILL
    done = subprocess.run(cmd + [str(tmp_path / "resumed.npz")], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["resumed_from_step"] == killed_at and report["num_iters"] == 40

    scope = {"np": np, "jax": jax, "probseq": probseq}
    exec(SETUPS[case], scope)
    ref = scope["fit"]()
    assert ref.info["resumed_from_step"] is None
    np.testing.assert_array_equal(report["log_likelihood"], ref.history["log_likelihood"])
    with np.load(tmp_path / "resumed.npz") as resumed:
        got = [resumed[f"arr_{i}"] for i in range(len(resumed.files))]
    for a, b in zip(got, jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_em_checkpoint_of_another_fit_is_refused(tmp_path):
    model = probseq.CategoricalHMM(2, 3)
    x = np.random.default_rng(0).integers(0, 3, size=(3, 20))
    probseq.fit_em(model, model.init(jax.random.key(0)), x, num_iters=3,
                   checkpoint_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="cannot resume .* its data differs"):
        probseq.fit_em(model, model.init(jax.random.key(0)), x[:2], num_iters=3,
                       checkpoint_dir=tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="cannot resume .* its start differs"):
        probseq.fit_em(model, model.init(jax.random.key(5)), x, num_iters=3,
                       checkpoint_dir=tmp_path)  # fmt: skip


def test_em_resume_with_more_iterations_continues(tmp_path):
    model = probseq.CategoricalHMM(2, 3)
    x = np.random.default_rng(0).integers(0, 3, size=(3, 20))
    params = model.init(jax.random.key(0))
    first = probseq.fit_em(model, params, x, num_iters=10, tol=0.0, checkpoint_dir=tmp_path)
    more = probseq.fit_em(model, params, x, num_iters=20, tol=0.0, checkpoint_dir=tmp_path)
    ref = probseq.fit_em(model, params, x, num_iters=20, tol=0.0)
    assert first.info["num_iters"] == 10 and more.info["resumed_from_step"] == 10
    np.testing.assert_array_equal(more.history["log_likelihood"], ref.history["log_likelihood"])
    for a, b in zip(jax.tree.leaves(more.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_CLI_CHILD = """
import sys, time
from probseq import cli
from probseq.fit import checkpoint
save = checkpoint.save_checkpoint
def slow_save(*args, **kwargs):
    path = save(*args, **kwargs)
    time.sleep(0.1)
    return path
checkpoint.save_checkpoint = slow_save
raise SystemExit(cli.main(sys.argv[1:]))
"""

_CLI_SPEC = """
seed = 0
[data]
kind = "text"
sequence_length = 50
[model]
family = "hmm"
num_states = 4
[fit]
method = "em"
num_iters = 40
tol = 0.0
"""


def test_cli_em_fit_killed_with_sigkill_resumes_to_the_same_params(tmp_path):
    from probseq import io

    spec = tmp_path / "hmm.toml"
    spec.write_text(_CLI_SPEC)
    text = tmp_path / "corpus.txt"
    text.write_text(probseq.data.pydoc_text()[:3000], encoding="utf-8")
    script = tmp_path / "child.py"
    script.write_text(_CLI_CHILD)
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "run"

    def fit(directory):
        return [sys.executable, str(script), "fit", str(spec), "--data", str(text), "--out",
                str(directory), "--quiet"]  # fmt: skip

    child = subprocess.Popen(fit(out), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)  # fmt: skip
    checkpoints = [str(out / d) for d in ("", "checkpoints")]

    deadline, killed_at = time.monotonic() + 180, None
    try:
        while time.monotonic() < deadline and child.poll() is None and killed_at is None:
            for d in checkpoints:
                meta = None
                try:
                    meta = checkpoint.read_metadata(d) if os.path.isdir(d) else None
                except checkpoint.CheckpointError:
                    pass
                if meta is not None and 8 <= meta.get("position", 0) < 40:
                    child.send_signal(signal.SIGKILL)
                    killed_at = meta["position"]
                    break
            time.sleep(0.01)
    finally:
        if child.poll() is None and killed_at is None:
            child.kill()
        _, err = child.communicate()
    assert killed_at is not None and child.returncode == -signal.SIGKILL, err.decode()[-3000:]
    again = subprocess.run(fit(out), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    ref_out = tmp_path / "ref"
    ref = subprocess.run(fit(ref_out), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    resumed, whole = io.load(str(out)), io.load(str(ref_out))
    assert resumed.history["log_likelihood"].tolist() == whole.history["log_likelihood"].tolist()
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
