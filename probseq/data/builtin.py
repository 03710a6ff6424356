"""Built-in data sets that need no download: the occasionally dishonest casino
(simulated, with known parameters), random digit strings and their reversals (a
sequence-to-sequence task), and real series that statsmodels ships.

Example:
    >>> c = casino(seed=0, num_sequences=2, num_timesteps=100)
    >>> c.rolls.shape, c.transition_matrix.tolist()
    ((2, 100), [[0.95, 0.05], [0.1, 0.9]])
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from probseq.validation import check_int

__all__ = ["casino", "Casino", "reversal_pairs", "series", "series_names", "Series"]


def _check_count(value, name: str) -> int:
    return check_int(name, value)


class Casino(NamedTuple):
    """Rolls of the occasionally dishonest casino and the parameters that made them."""

    rolls: np.ndarray  # (B, T) int32, die face minus 1: 0..5
    states: np.ndarray  # (B, T) int32, 0 = fair die, 1 = loaded die
    initial_probs: np.ndarray  # (2,)
    transition_matrix: np.ndarray  # (2, 2), row = from, column = to
    emission_probs: np.ndarray  # (2, 6), row = die, column = face - 1


def casino(seed: int = 0, *, num_sequences: int = 5, num_timesteps: int = 300) -> Casino:
    """Simulate the occasionally dishonest casino (Durbin et al., 1998, p. 54).

    A casino rolls a fair die, and now and then switches to a loaded one. The
    hidden state is the die (0 fair, 1 loaded); the observation is the face:

    * fair: every face 1/6; loaded: six with probability 1/2, the others 1/10;
    * P(fair -> loaded) = 0.05, P(loaded -> fair) = 0.10;
    * initial state uniform, (0.5, 0.5) (as in dynamax's casino notebooks).

    It is a :class:`probseq.CategoricalHMM` (2 states, 6 symbols) with known
    parameters: ``CategoricalHMM(2, 6).init(key, initial_probs=c.initial_probs,
    transition_matrix=c.transition_matrix, emission_probs=c.emission_probs)``.

    Args:
        seed: a non-negative int for ``numpy.random.default_rng``; the same seed
            gives the same data.
        num_sequences: B, independent sequences.
        num_timesteps: T, rolls per sequence.

    Returns:
        :class:`Casino`.

    Example:
        >>> c = casino(seed=0, num_sequences=2, num_timesteps=6)
        >>> c.rolls.shape, c.rolls.dtype, c.emission_probs[1].tolist()
        ((2, 6), dtype('int32'), [0.1, 0.1, 0.1, 0.1, 0.1, 0.5])
    """
    check_int("seed", seed, minimum=0)
    _check_count(num_sequences, "num_sequences")
    _check_count(num_timesteps, "num_timesteps")
    initial_probs = np.array([0.5, 0.5])
    transition_matrix = np.array([[0.95, 0.05], [0.10, 0.90]])
    emission_probs = np.array([[1 / 6] * 6, [0.1] * 5 + [0.5]])
    rng = np.random.default_rng(int(seed))
    shape = (int(num_sequences), int(num_timesteps))
    u = rng.random(shape)
    states = np.empty(shape, np.int32)
    states[:, 0] = u[:, 0] >= initial_probs[0]
    for t in range(1, shape[1]):
        states[:, t] = u[:, t] >= transition_matrix[states[:, t - 1], 0]
    # Inverse-CDF sampling of the faces: count the cumulative thresholds passed.
    thresholds = np.cumsum(emission_probs, axis=1)[:, :-1]
    v = rng.random(shape)
    rolls = (v[..., None] >= thresholds[states]).sum(axis=-1).astype(np.int32)
    return Casino(rolls, states, initial_probs, transition_matrix, emission_probs)


def reversal_pairs(rng: np.random.Generator, num: int, min_len: int = 5, max_len: int = 20):
    """``num`` random digit strings and their reversals (a sequence-to-sequence task).

    Each source has a length drawn uniformly from [min_len, max_len] and uniform
    digits 0-9; its target is the same digits in reverse order (no end token: a model
    adds its own). The draws are, in order, the lengths, then each source's digits,
    so the same generator state gives the same pairs.

    Args:
        rng: a ``numpy.random.Generator`` (advanced by the draws).
        num: number of pairs.
        min_len, max_len: shortest and longest source.

    Returns:
        (sources, targets): two lists of ``num`` int64 arrays.

    Example:
        >>> src, tgt = reversal_pairs(np.random.default_rng(0), 2, 3, 4)
        >>> [s[::-1].tolist() == t.tolist() for s, t in zip(src, tgt)]
        [True, True]
    """
    num = check_int("num", num)
    min_len = check_int("min_len", min_len)
    max_len = check_int("max_len", max_len)
    if max_len < min_len:
        raise ValueError(f"max_len must be >= min_len; got {min_len=}, {max_len=}.")
    lengths = rng.integers(min_len, max_len + 1, size=num)
    sources = [rng.integers(0, 10, size=n) for n in lengths]
    return sources, [s[::-1] for s in sources]


class Series(NamedTuple):
    """A real time series with its time index and provenance."""

    values: np.ndarray  # (T,) or (T, D) float64
    index: np.ndarray  # (T,) float64 times, decimal years
    name: str
    description: str  # what it measures, units, span, source, any preprocessing


_SERIES_NAMES = ("sunspots", "nile", "co2", "elnino")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def series_names() -> tuple[str, ...]:
    """The names :func:`series` knows."""
    return _SERIES_NAMES


def _decimal_years(dates) -> np.ndarray:
    """datetime64 dates -> year + fraction of that year elapsed."""
    d = np.asarray(dates).astype("datetime64[D]")
    year = d.astype("datetime64[Y]")
    start = year.astype("datetime64[D]")
    length = ((year + 1).astype("datetime64[D]") - start).astype(np.float64)
    return 1970.0 + year.astype(np.float64) + (d - start).astype(np.float64) / length


def _span(index: np.ndarray) -> str:
    return f"{int(index[0])}-{int(index[-1])}"


def _sunspots(datasets) -> Series:
    d = datasets.sunspots.load_pandas().data
    values = d["SUNACTIVITY"].to_numpy(np.float64)
    index = d["YEAR"].to_numpy(np.float64)
    return Series(
        values,
        index,
        "sunspots",
        f"Yearly sunspot activity (column SUNACTIVITY: yearly mean sunspot number, the "
        f"pre-2015 'version 1' series), {_span(index)}, {len(values)} values. Units: "
        "sunspot number (a dimensionless count index). Index: year. Source: NOAA National "
        "Geophysical Data Center, via statsmodels.datasets.sunspots.",
    )


def _nile(datasets) -> Series:
    d = datasets.nile.load_pandas().data
    values = d["volume"].to_numpy(np.float64)
    index = d["year"].to_numpy(np.float64)
    return Series(
        values,
        index,
        "nile",
        f"Annual flow of the river Nile at Aswan (column volume), {_span(index)}, "
        f"{len(values)} values. Units: 10^8 cubic metres per year. Index: year. Source: "
        "Cobb (1978), Biometrika 65(2), 243-251, via statsmodels.datasets.nile.",
    )


def _co2(datasets) -> Series:
    d = datasets.co2.load_pandas().data
    raw = d["co2"].to_numpy(np.float64)
    dates = d.index.to_numpy().astype("datetime64[D]")
    index = _decimal_years(dates)
    known = np.isfinite(raw)
    values = np.interp(index, index[known], raw[known])
    missing = int((~known).sum())
    return Series(
        values,
        index,
        "co2",
        f"Weekly atmospheric CO2 concentration at Mauna Loa Observatory, Hawaii (column "
        f"co2), {dates[0]} to {dates[-1]}, {len(values)} weeks. Units: ppmv (parts per "
        f"million by volume). {missing} missing weeks ({100 * missing / len(values):.1f}%) "
        "were filled by linear interpolation in time. Index: decimal year of each weekly "
        "sample date. Source: Keeling and Whorf (2004), Scripps Institution of "
        "Oceanography (CDIAC), via statsmodels.datasets.co2.",
    )


def _elnino(datasets) -> Series:
    d = datasets.elnino.load_pandas().data
    values = d[list(_MONTHS)].to_numpy(np.float64).reshape(-1)
    years = d["YEAR"].to_numpy(np.float64)
    index = (years[:, None] + np.arange(12)[None, :] / 12.0).reshape(-1)
    return Series(
        values,
        index,
        "elnino",
        f"Monthly mean sea surface temperature in the Nino 1+2 region of the eastern "
        f"Pacific, {_span(index)}, {len(values)} months (the data set's 12 monthly columns "
        "JAN..DEC per year, read year by year into one series). Units: degrees Celsius. "
        "Index: decimal year at the start of each month, year + (month - 1) / 12. Source: "
        "NOAA National Weather Service Climate Prediction Center, ERSST.V3B, via "
        "statsmodels.datasets.elnino.",
    )


_SERIES_LOADERS = {"sunspots": _sunspots, "nile": _nile, "co2": _co2, "elnino": _elnino}


def series(name: str) -> Series:
    """A real time series that statsmodels ships (no download).

    ========  =================================================  ======
    name      what                                               T
    ========  =================================================  ======
    sunspots  yearly sunspot number, 1700-2008                   309
    nile      annual Nile flow at Aswan (10^8 m^3), 1871-1970    100
    co2       weekly Mauna Loa CO2 (ppmv), 1958-2001; 59 gaps    2284
              filled by linear interpolation in time
    elnino    monthly Nino 1+2 sea surface temperature (deg C),  732
              1950-2010
    ========  =================================================  ======

    Args:
        name: one of :func:`series_names`.

    Returns:
        :class:`Series` with ``values`` (T,) float64, ``index`` in decimal years and a
        ``description`` that gives the source and units.

    Raises:
        ValueError: an unknown name (lists the known ones).
        ModuleNotFoundError: statsmodels is not installed
            (``pip install 'probseq[series]'``).

    Example:
        >>> nile = series("nile")
        >>> nile.values.shape, nile.index[:2].tolist()
        ((100,), [1871.0, 1872.0])
    """
    if not isinstance(name, str) or name not in _SERIES_LOADERS:
        raise ValueError(f"unknown series {name!r}; the built-in series are {_SERIES_NAMES}.")
    try:
        from statsmodels import datasets
    except ModuleNotFoundError as e:
        if not (e.name or "statsmodels").startswith("statsmodels"):
            raise
        raise ModuleNotFoundError(
            f"probseq.data.series({name!r}) reads the data sets that statsmodels ships; "
            "install it with: pip install 'probseq[series]'",
            name="statsmodels",
        ) from None
    return _SERIES_LOADERS[name](datasets)
