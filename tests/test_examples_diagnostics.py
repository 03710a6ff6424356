"""examples/vanishing_gradients.py with tiny arguments: it fits every family at every
gap, reports accuracies in [0, 1], measures the diagnostics before and after the fit,
and writes its plot."""

import pathlib
import runpy

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_vanishing_gradients_example_runs_tiny(tmp_path, capsys):
    module = runpy.run_path(str(ROOT / "examples" / "vanishing_gradients.py"), run_name="example")
    data = module["recall_data"](np.random.default_rng(0), 5, 3)
    assert data.shape == (5, 6) and (data[:, 0] == data[:, -1]).all()
    assert (data[:, 4] == module["MARKER"]).all() and (data[:, 1:4] >= 4).all()
    plot = tmp_path / "grads.png"
    accuracy, curves = module["main"](list(module["TINY_ARGS"]) + ["--plot", str(plot)])
    out = capsys.readouterr().out
    assert "held-out recall accuracy" in out and "||ds_T/ds_0||" in out
    assert set(accuracy) == {"RNN", "LSTM", "LRU"}
    assert all(len(a) == 1 and 0.0 <= a[0] <= 1.0 for a in accuracy.values())
    assert len(curves) == 6
    for d in curves.values():  # gap 2: T = 5 steps
        assert d.jacobian_norms.shape == (6,) and float(d.jacobian_norms[-1]) == 1.0
    assert plot.stat().st_size > 0
