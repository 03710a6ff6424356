"""Data parallelism over a mesh: the same numbers on 1, 2, 4 and 8 devices as on one.

The cases run in a separate process with 8 CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX
starts), so the rest of the suite keeps one device. Tolerance: 1e-5 relative in
float32 -- sharding changes only the order of the batch sums.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import probseq
from probseq import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_sharding_cases.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", ["2", "4", "8"])
def test_scores_equal_one_device(results, n):
    one, many = results["meshes"]["1"], results["meshes"][n]
    for key in one:
        if key.endswith(("_log_prob", "_steps")) or key == "compare":
            _close(many[key], one[key])


@pytest.mark.parametrize("n", ["2", "4", "8"])
def test_fit_em_equals_one_device(results, n):
    one, many = results["meshes"]["1"], results["meshes"][n]
    for key in ("em_params", "gauss_em_params"):
        for a, b in zip(many[key], one[key], strict=True):
            _close(a, b)
    _close(many["em_history"], one["em_history"])


@pytest.mark.parametrize("n", ["2", "4", "8"])
def test_fit_sgd_equals_one_device(results, n):
    """batch_size 5 (global) over 2, 4, 8 devices: uneven shares, the same fit."""
    one, many = results["meshes"]["1"], results["meshes"][n]
    for a, b in zip(many["sgd_params"], one["sgd_params"], strict=True):
        _close(a, b)
    _close(many["sgd_valid"], one["sgd_valid"])


def test_mesh_of_one_device_equals_no_mesh(results):
    one = results["meshes"]["1"]
    _close(one["cat_log_prob"], results["baseline"]["cat_log_prob"])
    for a, b in zip(one["em_params"], results["baseline"]["em_params"], strict=True):
        _close(a, b)


def test_bad_mesh_is_refused():
    hmm = probseq.CategoricalHMM(2, 3)
    params = hmm.init(jax.random.key(0))
    with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh"):
        probseq.log_prob(hmm, params, np.zeros((2, 3), int), mesh="data")
    if hasattr(jax.sharding, "AxisType"):
        explicit = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
        with pytest.raises(ValueError, match="AxisType.Auto"):
            probseq.fit_em(hmm, params, np.zeros((2, 3), int), num_iters=1, mesh=explicit)
    with pytest.raises(ValueError, match="this process sees"):
        sharding.mesh_of(jax.device_count() + 1)
