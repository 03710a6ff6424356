"""Figures for fits, state posteriors, forecasts and model comparisons (matplotlib).

Every function returns a :class:`matplotlib.figure.Figure`. They build it with the
object API (``Figure()`` + ``fig.subplots()``), so no pyplot state is touched, no
window opens and no GUI backend is needed; pass ``ax=`` to draw into an Axes of
your own instead (the function then returns ``ax.figure``). :func:`save_figure`
writes one to PNG, PDF or SVG.

matplotlib is an optional dependency (``pip install 'probseq[plot]'``), imported
only when a function here is called: ``import probseq.plots`` does not import it.

Example:
    >>> import jax, probseq
    >>> from probseq import plots
    >>> hmm = probseq.CategoricalHMM(num_states=2, vocab_size=3)
    >>> params = hmm.init(jax.random.key(0))
    >>> x = probseq.sample(hmm, params, jax.random.key(1), 100)
    >>> fig = plots.plot_state_posteriors(hmm.smoother(params, x), observations=x)
    >>> plots.save_figure(fig, "posteriors.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from probseq import atomic, validation
from probseq.fit.result import FitHistory

__all__ = [
    "plot_learning_curves",
    "plot_state_posteriors",
    "plot_forecast",
    "plot_comparison",
    "plot_gradient_diagnostics",
    "save_figure",
]

_SAVE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
_SAVE_DPI = 120
# fit_sgd's per-epoch, per-token curves and fit_em's (fit_ls's) per-iteration totals.
_SGD_KEYS = ("log_likelihood_per_token", "valid_log_likelihood_per_token")
_EM_KEYS = ("log_likelihood", "objective")
_CURVE_STYLES = {  # history field -> (line style, legend label)
    "log_likelihood_per_token": ("-", "train"),
    "valid_log_likelihood_per_token": ("--", "valid"),
    "log_likelihood": ("-", "log-likelihood"),
    "objective": (":", "objective"),
}


# --------------------------------------------------------------------- plumbing
def _matplotlib():
    """Import matplotlib's object API on first use, or say how to install it."""
    try:
        import matplotlib.axes
        import matplotlib.figure
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "probseq.plots needs matplotlib, which is not installed; "
            "`pip install 'probseq[plot]'` (or `pip install matplotlib`).",
            name="matplotlib",
        ) from e
    return matplotlib


def _figure_and_axes(ax, figsize=(7.0, 4.0)):
    """A new Figure with one Axes, or the caller's Axes and its Figure."""
    mpl = _matplotlib()
    if ax is None:
        fig = mpl.figure.Figure(figsize=figsize, layout="constrained")
        return fig, fig.subplots()
    if not isinstance(ax, mpl.axes.Axes):
        raise ValueError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}.")
    return ax.figure, ax


def _state_colors(num_states: int) -> list:
    """Distinct colours for K states (categorical maps, a continuous one beyond 20)."""
    mpl = _matplotlib()
    if num_states <= 10:
        return [mpl.colormaps["tab10"](k) for k in range(num_states)]
    if num_states <= 20:
        return [mpl.colormaps["tab20"](k) for k in range(num_states)]
    cmap = mpl.colormaps["viridis"]
    return [cmap(k / (num_states - 1)) for k in range(num_states)]


# -------------------------------------------------------------- learning curves
def _is_history_source(obj) -> bool:
    return hasattr(obj, "history") and isinstance(obj.history, Mapping)


def _runs(history) -> dict[str | None, Mapping]:
    """{name: history dict}; the name is None for a single run."""
    if _is_history_source(history):
        return {None: history.history}
    if not isinstance(history, Mapping):
        raise ValueError(
            "history must be a FitResult, its .history dict, or a dict "
            f"{{model_name: FitResult or history dict}}; got {type(history).__name__}."
        )
    if not history:
        raise ValueError("history is empty: there is nothing to plot (found no keys).")
    values = list(history.values())
    if all(_is_history_source(v) or isinstance(v, Mapping) for v in values):
        return {
            str(name): (v.history if _is_history_source(v) else v) for name, v in history.items()
        }
    return {None: history}


def _curve(hist, key: str) -> np.ndarray | None:
    """A field of a FitHistory, or None when it is empty or NaN throughout (absent)."""
    y = hist[key]
    return y if np.isfinite(y).any() else None


def plot_learning_curves(history, *, title: str | None = None, ax=None):
    """Log-likelihood against epochs (``fit_sgd``) or EM iterations (``fit_em``).

    From a ``fit_sgd`` history it draws ``log_likelihood_per_token`` (solid, "train")
    and, with validation data, ``valid_log_likelihood_per_token`` (dashed, "valid")
    against the epoch. From a ``fit_em`` (or ``fit_ls``) history it draws the total
    ``log_likelihood`` against the iteration (0 = the starting parameters: EM records
    log p(x) before each M-step), and ``objective`` (dotted) where a prior makes it
    differ. Higher is better on both.

    Args:
        history: a :class:`~probseq.FitResult`, its :class:`~probseq.FitHistory`, a
            dict of a history's fields (also an older history's keys, see
            :meth:`~probseq.FitHistory.from_dict`), or a dict ``{model_name:
            FitResult or history}`` to overlay several fits (one colour per model; all
            from ``fit_sgd`` or all from ``fit_em``, since the two are on different
            scales and axes: per token per epoch vs total per iteration).
        title: the axes title.
        ax: a matplotlib Axes to draw into; by default a new Figure.

    Returns:
        The Figure (``ax.figure`` when ``ax`` was given).

    Raises:
        ValueError: a history with none of the known keys (the message lists the
            keys it has), a curve that is not 1-D, or fit_sgd and fit_em histories
            mixed in one overlay.

    Example:
        >>> import numpy as np
        >>> from probseq import FitHistory
        >>> fig = plot_learning_curves(FitHistory.from_totals(
        ...     "fit_sgd", log_likelihood=[-120.0, -100.0, -90.0], num_tokens=100,
        ...     valid_log_likelihood=[-65.0, -55.0, -52.5], valid_num_tokens=50))
        >>> [line.get_label() for line in fig.axes[0].get_lines()]
        ['train', 'valid']
    """
    runs = _runs(history)
    curves = []  # (name, kind, x, [(key, y)])
    for name, hist in runs.items():
        where = "" if name is None else f" (model {name!r})"
        if not isinstance(hist, Mapping):
            raise ValueError(f"history{where} must be a dict, got {type(hist).__name__}.")
        try:
            fit_history = FitHistory.from_dict(hist)
        except ValueError as e:
            raise ValueError(f"history{where} has no learning curve to plot: {e}") from None
        kind = "sgd" if fit_history.fitter == "fit_sgd" else "em"
        keys = _SGD_KEYS if kind == "sgd" else _EM_KEYS
        ys = [(k, y) for k in keys if (y := _curve(fit_history, k)) is not None]
        if not ys:
            raise ValueError(
                f"history{where} has no learning curve to plot: expected fit_sgd's "
                f"{list(_SGD_KEYS)} or fit_em's {list(_EM_KEYS)} (not empty, not all "
                f"NaN), found keys {sorted(map(str, hist))}."
            )
        if len(ys) == 2 and kind == "em" and np.allclose(ys[0][1], ys[1][1], equal_nan=True):
            ys = ys[:1]  # no prior: the objective is the log-likelihood
        curves.append((name, kind, fit_history.iteration.astype(float), ys))
    kinds = {kind for _, kind, _, _ in curves}
    if len(kinds) > 1:
        mixed = {name: kind for name, kind, _, _ in curves}
        raise ValueError(
            "cannot overlay fit_sgd (per-token log-likelihood per epoch) and fit_em "
            f"(total log-likelihood per iteration) histories on one axis; got {mixed}. "
            "Plot them separately."
        )

    fig, ax = _figure_and_axes(ax)
    cycle = [c["color"] for c in _matplotlib().rcParams["axes.prop_cycle"]]
    for i, (name, _, x, ys) in enumerate(curves):
        color = cycle[i % len(cycle)]
        for key, y in ys:
            style, short = _CURVE_STYLES[key]
            label = short if name is None else f"{name} {short}"
            marker = "o" if len(y) <= 30 else None
            ax.plot(x[: len(y)], y, style, color=color, marker=marker, ms=3, label=label)
    (kind,) = kinds
    if kind == "sgd":
        ax.set_xlabel("epoch")
        ax.set_ylabel("log-likelihood per token (nats)")
    else:
        ax.set_xlabel("EM iteration")
        ax.set_ylabel("log-likelihood (nats)")
    ax.grid(True, alpha=0.3)
    if len(ax.get_lines()) > 1:
        ax.legend()
    if title is not None:
        ax.set_title(title)
    return fig


# -------------------------------------------------------------- state posteriors
def _check_probs(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim == 3:
        raise ValueError(
            f"probs must be one sequence's (T, K) state probabilities, got shape {p.shape} "
            "(a batch?); pass one row, e.g. probs[i][:length] (padded steps have rows of 0)."
        )
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(
            f"probs must be (T, K) state probabilities with T, K >= 1, got shape {p.shape}."
        )
    if not np.isfinite(p).all():
        t = int(np.argwhere(~np.isfinite(p))[0, 0])
        raise ValueError(f"probs must be finite; row {t} is {p[t].tolist()}.")
    if (p < -1e-6).any() or (p > 1 + 1e-6).any():
        t, k = (int(i) for i in np.argwhere((p < -1e-6) | (p > 1 + 1e-6))[0])
        raise ValueError(
            f"probs must lie in [0, 1] (probabilities, not log-probabilities); "
            f"probs[{t}, {k}] = {p[t, k]:.6g}."
        )
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > 1e-3
    if bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"each row of probs must sum to 1, but row {t} sums to {sums[t]:.6g} "
            "(rows of 0 are padded steps: slice them off, probs[:length])."
        )
    return np.clip(p, 0.0, 1.0)


def _check_state_names(state_names, num_states: int) -> list[str]:
    if state_names is None:
        return [f"state {k}" for k in range(num_states)]
    if isinstance(state_names, str) or not isinstance(state_names, Sequence):
        raise ValueError(f"state_names must be a list of {num_states} names, got {state_names!r}.")
    if len(state_names) != num_states:
        raise ValueError(
            f"state_names must name each of the {num_states} states, got "
            f"{len(state_names)} names: {list(state_names)!r}."
        )
    return [str(n) for n in state_names]


def _check_true_states(true_states, num_timesteps: int, num_states: int) -> np.ndarray:
    z = np.asarray(true_states)
    if z.shape != (num_timesteps,):
        raise ValueError(
            f"true_states must be (T,) = ({num_timesteps},) state ids like probs' rows, "
            f"got shape {z.shape}."
        )
    if z.dtype == np.bool_ or not (
        np.issubdtype(z.dtype, np.integer)
        or (np.issubdtype(z.dtype, np.floating) and np.all(z == np.round(z)))
    ):
        raise ValueError(f"true_states must be integer state ids, got dtype {z.dtype}.")
    z = z.astype(int)
    bad = (z < 0) | (z >= num_states)
    if bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"true_states must lie in [0, {num_states}) (K = {num_states} states); "
            f"true_states[{t}] = {z[t]}."
        )
    return z


def _draw_observations(ax, obs: np.ndarray) -> None:
    """A strip of the observations: coloured cells for tokens, lines for reals."""
    mpl = _matplotlib()
    num_timesteps = obs.shape[0]
    if obs.ndim == 1 and (np.issubdtype(obs.dtype, np.integer) or obs.dtype == np.bool_):
        obs = obs.astype(int)
        vocab = max(int(obs.max()) + 1, 1)
        cmap = mpl.colormaps["tab10" if vocab <= 10 else "tab20" if vocab <= 20 else "viridis"]
        if vocab <= 20:
            cmap = mpl.colors.ListedColormap([cmap(v) for v in range(vocab)])
        ax.imshow(
            obs[None, :],
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            vmin=-0.5,
            vmax=vocab - 0.5,
            extent=(-0.5, num_timesteps - 0.5, 0.0, 1.0),
        )
        ax.set_yticks([])
        ax.set_ylabel("x", rotation=0, labelpad=10, va="center")
    else:
        ax.plot(np.arange(num_timesteps), obs.reshape(num_timesteps, -1), lw=1.0)
        ax.set_ylabel("x")
    ax.tick_params(labelbottom=False)


def plot_state_posteriors(
    probs,
    *,
    observations=None,
    state_names=None,
    true_states=None,
    kind: str = "area",
    ax=None,
):
    r"""Posterior state probabilities over time, e.g. from ``HMM.smoother`` / ``filter``.

    Draws :math:`p(z_t = k \mid x)` as stacked areas (``kind="area"``: each state's
    share of probability at every step) or as a (state x time) heatmap
    (``kind="heatmap"``, better for many states). ``observations`` adds a strip
    above (coloured cells for token ids, lines for real values) and ``true_states``
    overlays the state path a simulation used: a black step line, on a right-hand
    state axis for the area plot and on the state rows of the heatmap.

    Args:
        probs: (T, K) state probabilities of one sequence, each row summing to 1
            (the padded rows of a batch, which are 0, must be sliced off).
        observations: (T,) token ids or (T,) / (T, D) real values of that sequence.
        state_names: K names for the legend / axis (default ``"state k"``).
        true_states: (T,) integer states in [0, K).
        kind: ``"area"`` or ``"heatmap"``.
        ax: a matplotlib Axes to draw the probabilities into (the observation strip
            goes in an inset above it); by default a new Figure.

    Returns:
        The Figure (``ax.figure`` when ``ax`` was given).

    Raises:
        ValueError: probs not (T, K), outside [0, 1] or with rows not summing to 1;
            observations or true_states of another length; state ids out of range;
            the wrong number of state names; an unknown ``kind``.

    Example:
        >>> import numpy as np
        >>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
        >>> fig = plot_state_posteriors(probs, true_states=[0, 0, 1])
        >>> len(fig.axes[0].collections)  # one filled area per state
        2
    """
    if kind not in ("area", "heatmap"):
        raise ValueError(f"kind must be 'area' or 'heatmap', got {kind=}")
    p = _check_probs(probs)
    num_timesteps, num_states = p.shape
    names = _check_state_names(state_names, num_states)
    z = None if true_states is None else _check_true_states(true_states, *p.shape)
    obs = None
    if observations is not None:
        obs = np.asarray(observations)
        if obs.ndim not in (1, 2) or obs.shape[0] != num_timesteps:
            raise ValueError(
                f"observations must be (T,) or (T, D) with T = {num_timesteps} (probs has "
                f"shape {p.shape}), got shape {obs.shape}."
            )

    mpl = _matplotlib()
    if ax is None:
        fig = mpl.figure.Figure(
            figsize=(9.0, 4.5 if obs is not None else 3.5), layout="constrained"
        )
        if obs is not None:
            ax_obs, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 3])
        else:
            ax = fig.subplots()
    else:
        fig, ax = _figure_and_axes(ax)
        if obs is not None:
            ax_obs = ax.inset_axes([0.0, 1.04, 1.0, 0.22], sharex=ax)
    if obs is not None:
        _draw_observations(ax_obs, obs)

    t = np.arange(num_timesteps)
    colors = _state_colors(num_states)
    if kind == "area":
        ax.stackplot(t, p.T, colors=colors, labels=names, alpha=0.85, linewidth=0)
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel("posterior probability")
        handles, labels = ax.get_legend_handles_labels()
        if z is not None:
            twin = ax.twinx()
            (line,) = twin.step(t, z, where="mid", color="black", lw=1.2, label="true state")
            twin.set_ylim(-0.5, num_states - 0.5)
            twin.set_yticks(range(num_states), names)
            handles, labels = handles + [line], labels + ["true state"]
        if num_states <= 20:
            ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.08, 1.0))
    else:
        image = ax.imshow(
            p.T,
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            cmap="Blues",
            vmin=0.0,
            vmax=1.0,
            extent=(-0.5, num_timesteps - 0.5, -0.5, num_states - 0.5),
        )
        ax.set_yticks(range(num_states), names)
        ax.set_ylabel("state")
        fig.colorbar(image, ax=ax, label="posterior probability")
        if z is not None:
            ax.step(t, z, where="mid", color="black", lw=1.2, label="true state")
            ax.legend(loc="upper right")
    if kind == "area" and num_timesteps > 1:
        ax.set_xlim(0, num_timesteps - 1)
    else:
        ax.set_xlim(-0.5, num_timesteps - 0.5)
    ax.set_xlabel("time step")
    return fig


# ---------------------------------------------------------------------- forecast
def _as_2d(name: str, a, expected_ndim_hint: str) -> np.ndarray:
    if a.ndim == 1:
        return a[:, None]
    if a.ndim == 2:
        return a
    raise ValueError(f"{name} must be {expected_ndim_hint}, got shape {a.shape}.")


def _quantile_pairs(levels: tuple[float, ...]):
    """Symmetric (lo, hi) index pairs, widest first; the median; unpaired levels."""
    pairs, paired = [], set()
    for i, lo in enumerate(levels):
        if lo >= 0.5 or i in paired:
            continue
        for j, hi in enumerate(levels):
            if j not in paired and j != i and abs(hi - (1.0 - lo)) < 1e-6:
                pairs.append((i, j))
                paired |= {i, j}
                break
    pairs.sort(key=lambda ij: levels[ij[0]])
    median = next((i for i, q in enumerate(levels) if abs(q - 0.5) < 1e-6), None)
    rest = [i for i in range(len(levels)) if i not in paired and i != median]
    return pairs, median, rest


def plot_forecast(
    history, forecast, *, time=None, dim: int = 0, ax=None, max_paths: int = 20,
    xlabel=None, ylabel=None,
):  # fmt: skip
    """A fan chart: the observed history, then the forecast's mean, bands and paths.

    Each symmetric pair of quantile levels (0.05 / 0.95, 0.25 / 0.75, ...) becomes a
    shaded band, inner bands darker; a 0.5 level is drawn as a dashed median line,
    and any level without a partner as a dotted line. Up to ``max_paths`` sample
    paths are drawn thin. The forecast curves start at the last observed point,
    since the forecast is conditioned on it.

    Args:
        history: the real-valued series that was conditioned on, (T,) or (T, D).
        forecast: what :func:`probseq.forecast` returns for one (unbatched) series,
            or any object with ``mean`` (H,) / (H, D), ``quantiles`` (Q, H) /
            (Q, H, D), ``quantile_levels`` (Q levels in (0, 1)) and ``samples``
            (S, H) / (S, H, D); ``quantiles`` and ``samples`` may be None.
        time: optional (T + H,) time stamps (numbers or datetime64) for the history
            followed by the horizon; by default steps 0 .. T + H - 1.
        dim: which coordinate of a multivariate series to draw.
        ax: a matplotlib Axes to draw into; by default a new Figure.
        max_paths: at most this many sample paths are drawn (the first ones); 0 for
            none.
        xlabel, ylabel: the axes' labels, in the data's own terms (e.g. "year" and
            the series' name); by default "time" / "time step" and "x" / "x[dim]".

    Returns:
        The Figure (``ax.figure`` when ``ax`` was given).

    Raises:
        ValueError: a token forecast (no mean), a batched forecast, shapes that do
            not agree (history vs forecast dimension, quantiles vs levels, time vs
            T + H), ``dim`` out of range or a negative ``max_paths``.

    Example:
        >>> import numpy as np
        >>> from typing import NamedTuple
        >>> class Fc(NamedTuple):
        ...     mean: np.ndarray
        ...     quantiles: np.ndarray
        ...     quantile_levels: tuple
        ...     samples: np.ndarray
        >>> s = np.random.default_rng(0).normal(size=(50, 5)).cumsum(axis=1)
        >>> levels = (0.05, 0.25, 0.5, 0.75, 0.95)
        >>> fc = Fc(s.mean(0), np.quantile(s, levels, axis=0), levels, s)
        >>> fig = plot_forecast(np.sin(np.arange(30) / 4), fc, max_paths=5)
        >>> len(fig.axes[0].collections)  # two bands: 90% and 50%
        2
    """
    h = _as_2d("history", np.asarray(history, dtype=float), "(T,) or (T, D) real values")
    num_timesteps, obs_dim = h.shape
    if num_timesteps < 1:
        raise ValueError(f"history must have at least one step, got shape {h.shape}.")
    missing = [
        a for a in ("mean", "quantiles", "quantile_levels", "samples") if not hasattr(forecast, a)
    ]
    if missing:
        raise ValueError(
            "forecast must have mean, quantiles, quantile_levels and samples (as "
            f"probseq.forecast returns); a {type(forecast).__name__} lacks {missing}."
        )
    if forecast.mean is None:
        raise ValueError(
            "forecast.mean is None: this is a forecast of token data, which has no mean "
            "or bands to draw; plot_forecast draws real-valued forecasts (for tokens, "
            "see forecast.next_step_probs and forecast.samples)."
        )
    mean_raw = np.asarray(forecast.mean, dtype=float)
    if mean_raw.ndim == 3 or (mean_raw.ndim == 2 and h.shape[1] != mean_raw.shape[1]):
        raise ValueError(
            f"forecast.mean has shape {mean_raw.shape}, but history {np.shape(history)} "
            f"has {obs_dim} dimension(s), so the forecast's should be (H,) or (H, "
            f"{obs_dim}); a batched forecast? plot one series at a time."
        )
    mean = _as_2d("forecast.mean", mean_raw, "(H,) or (H, D)")
    horizon = mean.shape[0]
    if horizon < 1:
        raise ValueError(f"forecast.mean must have at least one step, got shape {mean_raw.shape}.")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim < obs_dim:
        raise ValueError(
            f"dim must be an int in [0, {obs_dim}) for this {obs_dim}-D series, got {dim=}"
        )
    max_paths = validation.check_int("max_paths", max_paths, minimum=0)

    levels: tuple[float, ...] = ()
    bands = None
    if forecast.quantiles is not None:
        try:
            levels = tuple(float(q) for q in forecast.quantile_levels)
        except TypeError:
            raise ValueError(
                f"forecast.quantile_levels must be a sequence of numbers, got "
                f"{forecast.quantile_levels!r}."
            ) from None
        if not all(0.0 < q < 1.0 for q in levels):
            raise ValueError(f"forecast.quantile_levels must lie in (0, 1), got {levels}.")
        q_raw = np.asarray(forecast.quantiles, dtype=float)
        if q_raw.shape != (len(levels),) + mean_raw.shape:
            raise ValueError(
                f"forecast.quantiles must be (Q,) + mean's shape = "
                f"{(len(levels),) + mean_raw.shape} for {len(levels)} levels, got "
                f"{q_raw.shape}."
            )
        bands = q_raw.reshape(len(levels), horizon, obs_dim)[:, :, dim]
    paths = None
    if forecast.samples is not None:
        s_raw = np.asarray(forecast.samples, dtype=float)
        if s_raw.ndim != mean_raw.ndim + 1 or s_raw.shape[1:] != mean_raw.shape:
            raise ValueError(
                f"forecast.samples must be (S,) + mean's shape = (S, *{mean_raw.shape}), "
                f"got {s_raw.shape}."
            )
        paths = s_raw.reshape(s_raw.shape[0], horizon, obs_dim)[:max_paths, :, dim]

    if time is None:
        x = np.arange(num_timesteps + horizon)
    else:
        x = np.asarray(time)
        if x.shape != (num_timesteps + horizon,):
            raise ValueError(
                f"time must be (T + H,) = ({num_timesteps + horizon},) stamps for the "
                f"{num_timesteps} history steps and {horizon} forecast steps, got shape "
                f"{x.shape}."
            )

    fig, ax = _figure_and_axes(ax)
    last = h[-1, dim]
    xf = x[num_timesteps - 1 :]  # the forecast, anchored at the last observation

    def anchored(y):
        return np.concatenate([[last], y])

    color = "C1"
    pairs, median, rest = _quantile_pairs(levels)
    for n, (i, j) in enumerate(pairs):  # widest first, so inner bands draw on top
        alpha = 0.15 + (0.25 * n / (len(pairs) - 1) if len(pairs) > 1 else 0.1)
        width = round(100 * (levels[j] - levels[i]), 6)
        ax.fill_between(
            xf,
            anchored(bands[i]),
            anchored(bands[j]),
            color=color,
            alpha=alpha,
            linewidth=0,
            label=f"{width:g}% interval",
        )
    if paths is not None:
        for k, path in enumerate(paths):
            ax.plot(
                xf,
                anchored(path),
                color="0.35",
                lw=0.5,
                alpha=0.5,
                label="sample paths" if k == 0 else "_nolegend_",
            )
    ax.plot(x[:num_timesteps], h[:, dim], color="black", lw=1.2, label="history")
    ax.plot(xf, anchored(mean[:, dim]), color=color, lw=1.8, label="forecast mean")
    if median is not None:
        ax.plot(xf, anchored(bands[median]), "--", color=color, lw=1.0, label="median")
    for i in rest:
        ax.plot(xf, anchored(bands[i]), ":", color=color, lw=1.0, label=f"q={levels[i]:g}")
    if xlabel is None:
        xlabel = "time" if time is not None else "time step"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if ylabel is not None else (f"x[{dim}]" if obs_dim > 1 else "x"))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return fig


# -------------------------------------------------------------------- comparison
def _comparison_columns(comparison) -> tuple[dict, str]:
    if hasattr(comparison, "to_dict") and hasattr(comparison, "kind"):
        return dict(comparison.to_dict()), comparison.kind
    if isinstance(comparison, Mapping):
        columns = dict(comparison)
        return columns, columns.pop("kind", "tokens")
    raise ValueError(
        "comparison must be what probseq.compare returns (with .to_dict() and .kind) or "
        f"a dict of columns; got {type(comparison).__name__}."
    )


def plot_comparison(comparison, *, ax=None):
    """Held-out cross-entropy per model as bars, with the paired SE as error bars.

    One bar per model: bits per symbol for token data, nats per step for real-valued
    data (lower is better; a density's can be negative). The error bar on each bar is
    the paired standard error of its difference to the best model (0 for the best,
    which is drawn darker; NaN, with fewer than 2 sequences, draws none), so a gap
    to the best bar larger than about two error bars is a clear difference.

    Args:
        comparison: what :func:`probseq.compare` returns (anything with
            ``to_dict()`` and ``kind``), or a dict of columns ``name``,
            ``bits_per_symbol`` (tokens) or ``nats_per_symbol`` (real),
            ``se_bits_per_symbol`` (an optional ``se_nats_per_symbol`` is used for
            real data, else it is converted), and ``kind`` (``"tokens"``, the
            default, or ``"real"``).
        ax: a matplotlib Axes to draw into; by default a new Figure.

    Returns:
        The Figure (``ax.figure`` when ``ax`` was given).

    Raises:
        ValueError: missing columns (the message lists those found), columns of
            unequal length, no models, non-finite values, negative standard
            errors, or an unknown ``kind``.

    Example:
        >>> fig = plot_comparison({"name": ["hmm", "gru"], "bits_per_symbol": [1.9, 2.1],
        ...                        "se_bits_per_symbol": [0.0, 0.05]})
        >>> [round(float(bar.get_height()), 2) for bar in fig.axes[0].patches]
        [1.9, 2.1]
    """
    columns, kind = _comparison_columns(comparison)
    if kind not in ("tokens", "real"):
        raise ValueError(f"comparison kind must be 'tokens' or 'real', got {kind=}")
    value_key = "bits_per_symbol" if kind == "tokens" else "nats_per_symbol"
    if kind == "real" and value_key not in columns and "bits_per_symbol" in columns:
        columns[value_key] = list(np.asarray(columns["bits_per_symbol"], float) * math.log(2))
    needed = ["name", value_key, "se_bits_per_symbol"]
    if kind == "real" and "se_nats_per_symbol" in columns:
        needed[2] = "se_nats_per_symbol"
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"comparison ({kind} data) needs columns {needed}; missing {missing}, found "
            f"{sorted(map(str, columns))}."
        )
    names = [str(n) for n in columns["name"]]
    values = np.asarray(columns[value_key], dtype=float)
    se = np.asarray(columns[needed[2]], dtype=float)
    if needed[2] == "se_bits_per_symbol" and kind == "real":
        se = se * math.log(2)
    if not names:
        raise ValueError("comparison has no models to plot (the name column is empty).")
    if values.shape != (len(names),) or se.shape != (len(names),):
        raise ValueError(
            f"comparison columns must have one entry per model: {len(names)} names, "
            f"{value_key} of shape {values.shape}, {needed[2]} of shape {se.shape}."
        )
    if not np.isfinite(values).all():
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"{value_key} must be finite; model {names[i]!r} has {values[i]}.")
    if (se < 0).any():
        i = int(np.flatnonzero(se < 0)[0])
        raise ValueError(f"{needed[2]} must be >= 0; model {names[i]!r} has {se[i]}.")
    if np.isinf(se).any():
        i = int(np.flatnonzero(np.isinf(se))[0])
        raise ValueError(f"{needed[2]} must be finite or NaN; model {names[i]!r} has {se[i]}.")

    fig, ax = _figure_and_axes(ax, figsize=(max(5.0, 1.0 + 0.9 * len(names)), 4.0))
    best = int(np.argmin(values))
    colors = ["C0" if i == best else "C7" for i in range(len(names))]
    positions = np.arange(len(names))
    bars = ax.bar(positions, values, yerr=se, capsize=4, color=colors, ecolor="black")
    ax.bar_label(bars, fmt="%.3f", label_type="center", color="white", fontsize=8)
    ax.set_xticks(
        positions,
        names,
        rotation=30 if len(names) > 4 else 0,
        ha="right" if len(names) > 4 else "center",
    )
    unit = "bits per symbol" if kind == "tokens" else "nats per step"
    ax.set_ylabel(f"{unit} (lower is better)")
    ax.set_title("error bars: paired SE of the difference to the best", fontsize=9)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


# ------------------------------------------------------------ gradient diagnostics
_DIAGNOSTIC_FIELDS = ("jacobian_norms", "singular_values", "loss_gradient_norms",
                      "step_gradient_norms")  # fmt: skip


def _diagnostic_arrays(name: str, d) -> dict[str, np.ndarray]:
    """The four arrays of a GradientDiagnostics, checked against each other."""
    missing = [f for f in _DIAGNOSTIC_FIELDS if not hasattr(d, f)]
    if missing:
        raise ValueError(
            f"diagnostics{name} must be what probseq.diagnostics.gradient_diagnostics returns; "
            f"got {type(d).__name__} without {missing}."
        )
    a = {f: np.asarray(getattr(d, f), dtype=float) for f in _DIAGNOSTIC_FIELDS}
    t = a["loss_gradient_norms"].shape[0] if a["loss_gradient_norms"].ndim == 1 else -1
    expected = {"jacobian_norms": (t + 1,), "loss_gradient_norms": (t,),
                "step_gradient_norms": (t,)}  # fmt: skip
    for f, shape in expected.items():
        if a[f].shape != shape or t < 1:
            raise ValueError(
                f"diagnostics{name}.{f} has shape {a[f].shape}; expected {shape} for "
                f"{max(t, 0)} steps (loss_gradient_norms of shape (T,), T >= 1)."
            )
    sv = a["singular_values"]
    if sv.ndim != 2 or sv.shape[0] != t or sv.shape[1] < 1:
        raise ValueError(
            f"diagnostics{name}.singular_values has shape {sv.shape}; expected ({t}, n)."
        )
    for f, v in a.items():
        if np.isnan(v).any() or (v < 0).any():
            raise ValueError(
                f"diagnostics{name}.{f} must hold norms (>= 0, not NaN); found "
                f"{v[np.isnan(v) | (v < 0)].ravel()[0]}."
            )
    return a


def _positive(v: np.ndarray) -> np.ndarray:
    """Zeros (and inf) as NaN: gaps on a log axis instead of clipped spikes."""
    return np.where((v > 0) & np.isfinite(v), v, np.nan)


def plot_gradient_diagnostics(diagnostics, *, title: str | None = None):
    """Three panels of :func:`probseq.diagnostics.gradient_diagnostics` against the
    step t, on log axes (zeros are left out):

    1. ||ds_T / ds_t||_2, how much of a change in s_t reaches the last state;
    2. the largest singular value of each step's Jacobian ds_{t+1} / ds_t (solid) and
       the median of its numerically non-zero ones (dashed; above 1e-6 of the
       largest, since parts of a state the update does not read give exact zeros);
    3. ||dL / ds_t|| (solid) and the norm of the parameter gradient step t
       contributes (dashed).

    Args:
        diagnostics: a ``GradientDiagnostics``, or a dict ``{name: GradientDiagnostics}``
            to overlay several models (one colour each; sequences may differ in length).
        title: the figure's title.

    Returns:
        A new Figure with three Axes.

    Raises:
        ValueError: not diagnostics (the message names the missing fields), an empty
            dict, arrays of inconsistent shapes, or negative / NaN norms.

    Example:
        >>> d = probseq.diagnostics.gradient_diagnostics(model, params, x)  # doctest: +SKIP
        >>> plot_gradient_diagnostics({"LSTM": d}).axes[0].get_yscale()  # doctest: +SKIP
        'log'
    """
    if isinstance(diagnostics, Mapping):
        if not diagnostics:
            raise ValueError("diagnostics is an empty dict: there is nothing to plot.")
        runs = {str(k): _diagnostic_arrays(f"[{k!r}]", v) for k, v in diagnostics.items()}
    else:
        runs = {None: _diagnostic_arrays("", diagnostics)}
    mpl = _matplotlib()
    fig = mpl.figure.Figure(figsize=(7.0, 8.0), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    for i, (name, a) in enumerate(runs.items()):
        color = f"C{i % 10}"
        t = a["loss_gradient_norms"].shape[0]
        steps = np.arange(t)
        axes[0].plot(np.arange(t + 1), _positive(a["jacobian_norms"]), color=color, label=name)
        sv = a["singular_values"]
        top = sv.max(axis=1)
        kept = np.where(sv > 1e-6 * top[:, None], sv, np.nan)
        with np.errstate(all="ignore"):
            median = np.nanmedian(np.where(np.isnan(kept).all(axis=1)[:, None], 0.0, kept), 1)
        axes[1].plot(steps, _positive(top), color=color, label=name)
        axes[1].plot(steps, _positive(median), color=color, ls="--")
        axes[2].plot(steps, _positive(a["loss_gradient_norms"]), color=color, label=name)
        axes[2].plot(steps, _positive(a["step_gradient_norms"]), color=color, ls="--")
    labels = (
        r"$\|\partial s_T / \partial s_t\|_2$",
        r"singular values of $\partial s_{t+1} / \partial s_t$" + "\n(max solid, median dashed)",
        r"$\|\partial L / \partial s_t\|$ (solid)" + "\nstep's parameter gradient (dashed)",
    )
    for ax, label in zip(axes, labels, strict=True):
        ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].axhline(1.0, color="black", lw=0.8)
    axes[2].set_xlabel("step t")
    if len(runs) > 1:
        axes[0].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


# -------------------------------------------------------------------------- save
def save_figure(fig, path) -> pathlib.Path:
    """Write ``fig`` to ``path`` as PNG, PDF or SVG (by its extension), at 120 dpi.

    The file is written to a temporary file in the same directory and then renamed
    over ``path`` (:func:`os.replace`), so a reader never sees half a file and an
    existing file is only replaced by a complete one. No directory is created.

    Args:
        fig: a matplotlib Figure (what the ``plot_*`` functions return).
        path: the file to write; its extension picks the format (``.png``,
            ``.pdf``, ``.svg``).

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ValueError: ``fig`` is not a Figure, or the extension is not one of the three.
        FileNotFoundError: the directory of ``path`` does not exist.

    Example:
        >>> fig = plot_comparison({"name": ["a"], "bits_per_symbol": [1.0],
        ...                        "se_bits_per_symbol": [0.0]})
        >>> save_figure(fig, "comparison.svg")  # doctest: +SKIP
        PosixPath('comparison.svg')
    """
    mpl = _matplotlib()
    if not isinstance(fig, mpl.figure.Figure):
        raise ValueError(f"fig must be a matplotlib Figure, got {type(fig).__name__}.")
    path = pathlib.Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"path must end in one of {sorted(_SAVE_FORMATS)} (the format is taken from "
            f"the extension), got {str(path)!r}."
        )
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            f"cannot write {str(path)!r}: the directory {str(directory)!r} does not exist "
            "(save_figure does not create directories; make it first)."
        )
    # The one atomic writer of the package (mode from the umask, never a torn file).
    atomic.write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=_SAVE_DPI))
    return path
