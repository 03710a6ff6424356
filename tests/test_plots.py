"""probseq.plots: each figure draws the data it was given, validates it, and saves."""

import math
import os
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from probseq import plots
from probseq.fit import FitHistory, FitResult

LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


class Fc(NamedTuple):
    """Stands in for probseq.forecast's result: the four fields plot_forecast reads."""

    mean: np.ndarray | None
    quantiles: np.ndarray | None
    quantile_levels: tuple
    samples: np.ndarray | None


class Comparison:
    """Stands in for probseq.compare's result: to_dict() of columns and a kind."""

    def __init__(self, columns, kind):
        self.columns, self.kind = columns, kind

    def to_dict(self):
        return dict(self.columns)


def make_forecast(horizon=6, num_samples=40, obs_dim=None, levels=LEVELS, seed=0):
    shape = (num_samples, horizon) + (() if obs_dim is None else (obs_dim,))
    s = np.random.default_rng(seed).normal(size=shape).cumsum(axis=1)
    return Fc(s.mean(0), np.quantile(s, levels, axis=0), tuple(levels), s)


def sgd_history(n=5):
    epochs = np.arange(1, n + 1)
    return FitHistory.from_totals(
        "fit_sgd",
        log_likelihood=(-1.0 - 1.0 / epochs) * 100,
        num_tokens=100,
        valid_log_likelihood=(-1.1 - 1.0 / epochs) * 50,
        valid_num_tokens=50,
        num_steps=epochs * 10,
    )


def posteriors(num_timesteps=12, num_states=3, seed=0):
    p = np.random.default_rng(seed).random((num_timesteps, num_states)) + 0.05
    return p / p.sum(axis=1, keepdims=True)


def own_axes():
    fig = Figure()
    return fig, fig.subplots()


# ------------------------------------------------------------------ learning curves
def test_learning_curves_draw_the_sgd_history():
    hist = sgd_history()
    fig = plots.plot_learning_curves(FitResult(None, hist, {}), title="fit")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    train, valid = ax.get_lines()
    assert (train.get_label(), valid.get_label()) == ("train", "valid")
    np.testing.assert_array_equal(train.get_xdata(), hist.iteration)
    np.testing.assert_array_equal(train.get_ydata(), hist.log_likelihood_per_token)
    np.testing.assert_array_equal(valid.get_ydata(), hist.valid_log_likelihood_per_token)
    assert valid.get_linestyle() == "--"
    assert ax.get_xlabel() == "epoch" and "per token" in ax.get_ylabel()
    assert ax.get_title() == "fit"


def test_learning_curves_draw_em_iterations_from_zero():
    ll = np.array([-50.0, -40.0, -38.0, -37.5])
    fig = plots.plot_learning_curves(FitResult(None, {"log_likelihood": ll, "objective": ll}, {}))
    (ax,) = fig.axes
    (line,) = ax.get_lines()  # no prior: the objective equals the log-likelihood, drawn once
    np.testing.assert_array_equal(line.get_xdata(), np.arange(4))
    np.testing.assert_array_equal(line.get_ydata(), ll)
    assert ax.get_xlabel() == "EM iteration"

    fig = plots.plot_learning_curves({"log_likelihood": ll, "objective": ll - 2.0})
    ll_line, objective = fig.axes[0].get_lines()
    np.testing.assert_array_equal(objective.get_ydata(), ll - 2.0)
    assert objective.get_label() == "objective"


def test_learning_curves_overlay_models_one_colour_each():
    # "gru" is a history dict under the names fit_sgd used before FitHistory
    other = {"epoch": np.arange(1, 4), "train_log_lik": np.array([-3.0, -2.0, -1.5])}
    fig = plots.plot_learning_curves({"lstm": FitResult(None, sgd_history(), {}), "gru": other})
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["lstm train", "lstm valid", "gru train"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    np.testing.assert_array_equal(lines[2].get_ydata(), other["train_log_lik"])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][2] == "gru train"


def test_learning_curves_into_given_axes():
    fig, ax = own_axes()
    assert plots.plot_learning_curves(sgd_history(), ax=ax) is fig
    assert len(ax.get_lines()) == 2


def test_learning_curves_errors():
    with pytest.raises(ValueError, match=r"found keys \['foo', 'time_s'\]"):
        plots.plot_learning_curves({"foo": [1.0], "time_s": [2.0]})
    with pytest.raises(ValueError, match="found keys"):
        plots.plot_learning_curves({"train_log_lik": []})  # known key, but empty
    with pytest.raises(ValueError, match="empty"):
        plots.plot_learning_curves({})
    with pytest.raises(ValueError, match="cannot overlay"):
        plots.plot_learning_curves({"a": sgd_history(), "b": {"log_likelihood": [-1.0, -0.5]}})
    with pytest.raises(ValueError, match=r"1-D.*\(2, 3\)"):
        plots.plot_learning_curves({"log_likelihood": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="FitResult"):
        plots.plot_learning_curves([1.0, 2.0])


# ------------------------------------------------------------------ state posteriors
def test_state_posteriors_area_stacks_the_probabilities():
    p = posteriors()
    fig = plots.plot_state_posteriors(p, state_names=["a", "b", "c"])
    (ax,) = fig.axes
    assert len(ax.collections) == 3  # one area per state
    tops = np.cumsum(p, axis=1)
    for k, area in enumerate(ax.collections):
        v = area.get_paths()[0].vertices
        top = [v[np.isclose(v[:, 0], t), 1].max() for t in range(len(p))]
        np.testing.assert_allclose(top, tops[:, k])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    assert ax.get_ylim() == (0.0, 1.0)


def test_state_posteriors_heatmap_with_true_states_and_token_strip():
    p, z = posteriors(), np.arange(12) % 3
    x = np.arange(12) % 4
    fig = plots.plot_state_posteriors(p, observations=x, true_states=z, kind="heatmap")
    strip, ax, colorbar = fig.axes
    np.testing.assert_allclose(ax.images[0].get_array(), p.T)
    np.testing.assert_array_equal(strip.images[0].get_array(), x[None, :])
    (path,) = ax.get_lines()
    np.testing.assert_array_equal(path.get_ydata(), z)


def test_state_posteriors_true_states_on_a_twin_axis_and_real_observations():
    p, z = posteriors(), np.arange(12) % 3
    fig = plots.plot_state_posteriors(p, observations=np.ones((12, 2)), true_states=z)
    strip, ax, twin = fig.axes
    assert len(strip.get_lines()) == 2  # one line per observation dimension
    np.testing.assert_array_equal(twin.get_lines()[0].get_ydata(), z)
    assert [t.get_text() for t in twin.get_yticklabels()] == ["state 0", "state 1", "state 2"]


def test_state_posteriors_into_given_axes_puts_the_strip_in_an_inset():
    fig, ax = own_axes()
    out = plots.plot_state_posteriors(posteriors(), observations=np.zeros(12, int), ax=ax)
    assert out is fig
    assert len(ax.collections) == 3 and len(ax.child_axes) == 1


def test_state_posteriors_take_an_hmm_smoother_output():
    import jax

    import probseq

    hmm = probseq.CategoricalHMM(num_states=2, vocab_size=3)
    params = hmm.init(jax.random.key(0))
    x = probseq.sample(hmm, params, jax.random.key(1), 30)
    fig = plots.plot_state_posteriors(hmm.smoother(params, x), observations=x)
    assert len(fig.axes[1].collections) == 2


@pytest.mark.parametrize(
    "probs, kwargs, match",
    [
        (np.full((2, 5, 3), 1 / 3), {}, r"\(2, 5, 3\).*probs\[i\]"),
        (np.full(5, 0.2), {}, r"\(T, K\).*\(5,\)"),
        (np.array([[0.5, 0.5], [0.0, 0.0]]), {}, "row 1 sums to 0"),
        (np.array([[1.5, -0.5]]), {}, r"\[0, 1\].*probs\[0, 0\] = 1.5"),
        (np.array([[np.nan, 1.0]]), {}, "finite"),
        (posteriors(), {"observations": np.zeros(5)}, r"T = 12.*\(5,\)"),
        (posteriors(), {"true_states": np.full(12, 3)}, r"\[0, 3\).*true_states\[0\] = 3"),
        (posteriors(), {"true_states": np.zeros(11, int)}, r"\(12,\).*\(11,\)"),
        (posteriors(), {"true_states": np.full(12, 0.5)}, "integer"),
        (posteriors(), {"state_names": ["a", "b"]}, "3 states, got 2"),
        (posteriors(), {"state_names": "abc"}, "list of 3 names"),
        (posteriors(), {"kind": "lines"}, "kind must be 'area' or 'heatmap'"),
        (posteriors(), {"ax": "not an axes"}, "matplotlib Axes"),
    ],
)
def test_state_posteriors_errors(probs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_state_posteriors(probs, **kwargs)


# ----------------------------------------------------------------------- forecast
def test_forecast_draws_bands_paths_mean_and_history():
    history, fc = np.sin(np.arange(10) / 3), make_forecast()
    fig = plots.plot_forecast(history, fc, max_paths=5)
    (ax,) = fig.axes
    bands = ax.collections
    assert [b.get_label() for b in bands] == ["90% interval", "50% interval"]
    assert bands[1].get_alpha() > bands[0].get_alpha()  # the inner band is darker
    v = bands[0].get_paths()[0].vertices  # anchored at (9, history[-1]), then 10 .. 15
    for j, t in enumerate(range(10, 16)):
        at_t = v[np.isclose(v[:, 0], t), 1]
        np.testing.assert_allclose([at_t.min(), at_t.max()], fc.quantiles[[0, 4], j])

    lines = {line.get_label(): line for line in ax.get_lines()}
    assert len(ax.get_lines()) == 5 + 3  # paths, history, mean, median
    np.testing.assert_array_equal(lines["history"].get_xdata(), np.arange(10))
    np.testing.assert_array_equal(lines["history"].get_ydata(), history)
    mean = lines["forecast mean"]
    np.testing.assert_array_equal(mean.get_xdata(), np.arange(9, 16))
    np.testing.assert_allclose(mean.get_ydata(), np.concatenate([[history[-1]], fc.mean]))
    np.testing.assert_allclose(lines["median"].get_ydata()[1:], fc.quantiles[2])
    np.testing.assert_allclose(lines["sample paths"].get_ydata()[1:], fc.samples[0])


def test_forecast_picks_a_dimension_and_real_dates():
    history = np.stack([np.zeros(8), np.arange(8.0)], axis=1)
    fc = make_forecast(horizon=4, obs_dim=2)
    time = np.arange("2024-01-01", "2024-01-13", dtype="datetime64[D]")
    fig = plots.plot_forecast(history, fc, dim=1, time=time, max_paths=0)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert "sample paths" not in lines
    np.testing.assert_array_equal(lines["history"].get_ydata(), np.arange(8.0))
    np.testing.assert_allclose(lines["forecast mean"].get_ydata()[1:], fc.mean[:, 1])
    assert ax.get_ylabel() == "x[1]" and ax.get_xlabel() == "time"


def test_forecast_of_a_univariate_model_with_history_of_shape_t():
    # GaussianHMM(obs_dim=1) forecasts have a trailing dimension of 1.
    fc = make_forecast(horizon=3, obs_dim=1)
    fig = plots.plot_forecast(np.arange(5.0), fc)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["forecast mean"].get_ydata()[1:], fc.mean[:, 0])


def test_forecast_levels_without_median_or_partner_and_no_samples():
    fc = make_forecast(levels=(0.1, 0.3, 0.9))._replace(samples=None)
    fig, ax = own_axes()
    assert plots.plot_forecast(np.zeros(4), fc, ax=ax) is fig
    assert [b.get_label() for b in ax.collections] == ["80% interval"]
    assert [line.get_label() for line in ax.get_lines()] == ["history", "forecast mean", "q=0.3"]


@pytest.mark.parametrize(
    "history, fc, kwargs, match",
    [
        (np.zeros(5), make_forecast()._replace(mean=None), {}, "token data"),
        (np.zeros((5, 2)), make_forecast(obs_dim=3), {}, r"2 dimension\(s\)"),
        (np.zeros(5), make_forecast()._replace(mean=np.zeros((2, 6, 1))), {}, "batched"),
        (np.zeros(5), make_forecast()._replace(quantiles=np.zeros((4, 6))), {}, r"\(5, 6\)"),
        (np.zeros(5), make_forecast()._replace(quantile_levels=(0, 1, 2, 3, 4)), {}, r"\(0, 1\)"),
        (np.zeros(5), make_forecast()._replace(samples=np.zeros((3, 7))), {}, r"\(3, 7\)"),
        (np.zeros(5), make_forecast(), {"time": np.arange(10)}, r"\(11,\)"),
        (np.zeros(5), make_forecast(), {"dim": 1}, r"dim must be an int in \[0, 1\)"),
        (np.zeros(5), make_forecast(), {"max_paths": -1}, "max_paths"),
        (np.zeros((2, 3, 4)), make_forecast(), {}, "history must be"),
        (np.zeros(5), object(), {}, "lacks"),
    ],
)
def test_forecast_errors(history, fc, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_forecast(history, fc, **kwargs)


# --------------------------------------------------------------------- comparison
COLUMNS = {
    "name": ["hmm", "gru", "lstm"],
    "bits_per_symbol": [1.5, 1.75, 2.0],
    "nats_per_symbol": [1.5 * math.log(2), 1.75 * math.log(2), 2.0 * math.log(2)],
    "diff_bits_per_symbol": [0.0, 0.25, 0.5],
    "se_bits_per_symbol": [0.0, 0.125, float("nan")],
}


def error_bar_lengths(ax):
    (segments,) = [c.get_segments() for c in ax.collections]
    return [float(s[1, 1] - s[0, 1]) if len(s) else math.nan for s in segments]


def test_comparison_bars_are_the_bits_with_paired_se():
    fig = plots.plot_comparison(Comparison(COLUMNS, "tokens"))
    (ax,) = fig.axes
    assert [bar.get_height() for bar in ax.patches] == COLUMNS["bits_per_symbol"]
    assert [t.get_text() for t in ax.get_xticklabels()] == COLUMNS["name"]
    lengths = error_bar_lengths(ax)  # the bar spans +- se; NaN (unknown) draws none
    np.testing.assert_allclose(lengths[:2], [0.0, 0.25])
    assert math.isnan(lengths[2])
    assert ax.patches[0].get_facecolor() != ax.patches[1].get_facecolor()  # best stands out
    assert ax.patches[1].get_facecolor() == ax.patches[2].get_facecolor()
    assert ax.get_ylabel().startswith("bits per symbol")


def test_comparison_of_real_valued_data_is_in_nats_per_step():
    fig, ax = own_axes()
    columns = dict(COLUMNS, kind="real")
    assert plots.plot_comparison(columns, ax=ax) is fig
    np.testing.assert_allclose([b.get_height() for b in ax.patches], COLUMNS["nats_per_symbol"])
    np.testing.assert_allclose(error_bar_lengths(ax)[:2], [0.0, 0.25 * math.log(2)])
    assert ax.get_ylabel().startswith("nats per step")


def test_comparison_best_is_the_lowest_bar_whatever_the_order():
    columns = dict(COLUMNS, bits_per_symbol=[2.0, 1.0, 3.0])
    ax = plots.plot_comparison(columns).axes[0]
    assert ax.patches[1].get_facecolor() == to_rgba("C0")


@pytest.mark.parametrize(
    "comparison, match",
    [
        ({"name": ["a"], "se_bits_per_symbol": [0.0]}, r"missing \['bits_per_symbol'\]"),
        (dict(COLUMNS, name=["a", "b"]), "one entry per model"),
        (dict(COLUMNS, bits_per_symbol=[1.0, np.inf, 2.0]), "'gru' has inf"),
        (dict(COLUMNS, se_bits_per_symbol=[0.0, -1.0, 0.0]), ">= 0"),
        (dict(COLUMNS, kind="images"), "kind must be 'tokens' or 'real'"),
        ({"name": [], "bits_per_symbol": [], "se_bits_per_symbol": []}, "no models"),
        ([1, 2], "to_dict"),
    ],
)
def test_comparison_errors(comparison, match):
    with pytest.raises(ValueError, match=match):
        plots.plot_comparison(comparison)


# --------------------------------------------------------------------------- save
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<")])
def test_save_figure_writes_the_format_of_the_extension(tmp_path, suffix, magic):
    fig = plots.plot_comparison(COLUMNS)
    path = plots.save_figure(fig, tmp_path / f"cmp{suffix}")
    assert path == tmp_path / f"cmp{suffix}"
    data = path.read_bytes()
    assert len(data) > 100 and data.lstrip().startswith(magic)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


def test_save_figure_replaces_an_existing_file(tmp_path):
    target = tmp_path / "f.png"
    target.write_bytes(b"old")
    plots.save_figure(plots.plot_comparison(COLUMNS), str(target))
    assert target.read_bytes().startswith(b"\x89PNG")


def test_save_figure_errors(tmp_path):
    fig = plots.plot_comparison(COLUMNS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.save_figure(fig, tmp_path / "missing" / "f.png")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(ValueError, match=r"\.jpg"):
        plots.save_figure(fig, tmp_path / "f.jpg")
    with pytest.raises(ValueError, match="Figure"):
        plots.save_figure(fig.axes[0], tmp_path / "f.png")
    assert isinstance(fig.axes[0], Axes) and os.listdir(tmp_path) == []


# ------------------------------------------------------------------ import hygiene
def test_importing_plots_does_not_import_matplotlib_nor_pyplot():
    code = (
        "import sys, probseq, probseq.plots\n"
        "assert 'matplotlib' not in sys.modules, 'imported on import'\n"
        "fig = probseq.plots.plot_comparison({'name': ['a'], 'bits_per_symbol': [1.0],"
        " 'se_bits_per_symbol': [0.0]})\n"
        "assert 'matplotlib' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot touched'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_matplotlib_says_how_to_install_it():
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "import probseq.plots\n"
        "try:\n"
        "    probseq.plots.plot_learning_curves({'log_likelihood': [1.0]})\n"
        "except ModuleNotFoundError as e:\n"
        "    assert \"pip install 'probseq[plot]'\" in str(e), str(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
