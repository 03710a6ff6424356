"""Run by tests/test_sgd_mesh.py in a process with 2 CPU devices (XLA_FLAGS set before
JAX starts): fit_sgd of every registered family that trains by SGD, on one device and
on a 2-device mesh, for 3 epochs of several compiled calls each, with and without
TBPTT, on 11 ragged sequences (the batch of 4 does not divide them; the mesh of 2
divides the batch, so the batch really is split across devices); then a
checkpoint written on the mesh resumed on one device and back. Prints one JSON line."""

import json
import sys
import tempfile

import jax
import numpy as np
import optax

import probseq
from probseq import spec
from probseq.families import registry
from probseq.sharding import mesh_of

REQUIRED = {"num_states": 2, "order": 1, "state_dim": 1}
LENGTHS = (17, 9, 3, 17, 12, 1, 15, 8, 16, 11, 5)  # 11 rows: batch 4 (mesh 2 divides it)


def _model(name, family):
    text = "categorical" in family.heads
    options = {"family": name, **{k: v for k, v in REQUIRED.items() if k in family.keys}}
    if "hidden_size" in family.keys:
        options["hidden_size"] = 4
    data = {"kind": "text" if text else "series", "split": [0.8, 0.1, 0.1]}
    s = spec.parse_spec({"data": data, "model": options, "fit": {"method": "sgd"}})
    model = s.build_model(vocab_size=5) if text else s.build_model(obs_dim=1)
    rng = np.random.default_rng(0)
    if text:
        x = [rng.integers(0, 5, size=n) for n in LENGTHS]
    else:
        x = [rng.normal(size=(n, 1)).astype(np.float32) for n in LENGTHS]
    return model, s.init_params(model), x


def _leaves(tree):
    return [np.asarray(a, np.float64).ravel().tolist() for a in jax.tree.leaves(tree)]


CLI_SPEC = """
seed = 1
[data]
kind = "text"
sequence_length = 40
[model]
family = "lstm"
hidden_size = 6
[fit]
method = "sgd"
num_epochs = 3
batch_size = 4
bptt_length = 8
steps_per_call = 2
learning_rate = 0.02
"""


def _cli():
    """``probseq fit --devices 2`` and the same fit on one device (3 epochs, TBPTT, 2
    steps per compiled call): exit codes, parameters and optimizer steps per epoch."""
    import pathlib

    from probseq import cli, io

    out = {}
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        (d / "lstm.toml").write_text(CLI_SPEC)
        (d / "corpus.txt").write_text(probseq.data.pydoc_text()[:1500], encoding="utf-8")
        for devices in (None, "2"):
            argv = ["fit", str(d / "lstm.toml"), "--data", str(d / "corpus.txt"),
                    "--out", str(d / f"run{devices}"), "--quiet"]  # fmt: skip
            code = cli.main(argv + ([] if devices is None else ["--devices", devices]))
            run = io.load(d / f"run{devices}")
            steps = np.asarray(run.history["num_steps"]).tolist()  # cumulative, per epoch
            out[str(devices)] = {"code": code, "params": _leaves(run.params), "steps": steps}
    return out


def main():
    assert jax.device_count() == 2, jax.device_count()
    out = {}
    # Adam with eps = 1e-3: an entry whose gradient is near zero (S5's lambda_re under a
    # step size of exp(-5.9)) gets a step proportional to its gradient, not +-lr from
    # the sign of rounding noise, which the mesh's other summation order flips
    # (measured 2.3e-4 of the leaf's scale with optax's default eps = 1e-8).
    adam = optax.adam(0.02, eps=1e-3)
    kw = dict(key=jax.random.key(3), num_epochs=3, batch_size=4, optimizer=adam,
              steps_per_call=2, progress=False)  # fmt: skip
    for name, family in registry.registered().items():
        if "sgd" not in family.fit_methods:
            continue
        model, params, x = _model(name, family)
        for bptt in (None, 6):
            row = {}
            for n in (1, 2):
                mesh = None if n == 1 else mesh_of(2)
                fit = probseq.fit_sgd(model, params, x, bptt_length=bptt, mesh=mesh, **kw)
                row[n] = {
                    "params": _leaves(fit.params),
                    "calls_per_epoch": int(
                        -(-fit.history.num_steps[0] // fit.info["steps_per_call"])
                    ),
                }
            out[f"{name}-{bptt}"] = row
    # a checkpoint written on the mesh resumes on one device, and one device's on the mesh
    model, params, x = _model("lstm", registry.registered()["lstm"])
    whole = probseq.fit_sgd(model, params, x, bptt_length=6, **kw)
    resumed = {}
    for first, second in ((2, 1), (1, 2)):
        with tempfile.TemporaryDirectory() as d:
            mesh = {1: None, 2: mesh_of(2)}
            probseq.fit_sgd(model, params, x, bptt_length=6, checkpoint_dir=d,
                            mesh=mesh[first], **{**kw, "num_epochs": 2})  # fmt: skip
            fit = probseq.fit_sgd(model, params, x, bptt_length=6, checkpoint_dir=d,
                                  mesh=mesh[second], **kw)  # fmt: skip
            resumed[f"{first}to{second}"] = {
                "params": _leaves(fit.params),
                "from": fit.info["resumed_from_step"],
            }
    out["resume"] = {"whole": _leaves(whole.params), **resumed}
    out["cli"] = _cli()
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
