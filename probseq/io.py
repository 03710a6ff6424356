"""Run directories: a fitted model saved with everything needed to use it again.

A run directory holds

* ``spec.toml``    the model spec it was fitted from (:mod:`probseq.spec`);
* ``params.npz``   the fitted parameters (NumPy ``.npz`` + JSON, no pickle);
* ``data.json``    how data is encoded: the character vocabulary (text) or the
  columns and the standardisation (series);
* ``history.json`` the fit history and facts about the fit;
* ``run.json``     written last: format version, probseq version, model.

Every file is written to a temporary name and moved into place (``os.replace``),
and ``run.json`` goes last, so a fit killed while saving leaves no directory that
:func:`load` would take for complete. Loading checks each file and names the one
that is missing or corrupt.

Example:
    >>> run = probseq.load("runs/lstm")                     # doctest: +SKIP
    >>> run.log_prob(run.encode("Some new text."))          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile
from typing import Any

import jax
import numpy as np

from probseq import data as data_lib
from probseq.fit import checkpoint
from probseq.spec import Spec, SpecError, load_spec, spec_text

__all__ = ["Run", "save_run", "load", "RunError"]

FORMAT_VERSION = 1


class RunError(ValueError):
    """A run directory that cannot be read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Run:
    """A fitted model and how its data is encoded.

    Attributes:
        model, params: the model and its fitted parameters.
        spec: the :class:`probseq.spec.Spec` it was fitted from.
        vocabulary: the :class:`probseq.data.CharVocabulary` (text), else None.
        scaler: the :class:`probseq.data.Standardizer` (series), else None.
        columns: the CSV column names (series), else None.
        history: the fit history (name -> NumPy array).
        info: JSON facts about the fit (how it stopped, test scores, ...).
        path: the directory it was loaded from (None before saving).
    """

    model: Any
    params: Any
    spec: Spec
    vocabulary: data_lib.CharVocabulary | None = None
    scaler: data_lib.Standardizer | None = None
    columns: tuple[str, ...] | None = None
    history: dict = dataclasses.field(default_factory=dict)
    info: dict = dataclasses.field(default_factory=dict)
    path: str | None = None

    @property
    def kind(self) -> str:
        """ "text" or "series"."""
        return self.spec.kind

    def encode(self, source) -> np.ndarray:
        """Model-space data: text -> (T,) ids; a real series (T,) / (T, D) ->
        standardized (T, D) (when the run standardizes)."""
        if self.kind == "text":
            return self.vocabulary.encode(source)
        values = np.asarray(source, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[1] != self.obs_dim:
            raise ValueError(
                f"this run models series of {self.obs_dim} column(s); got shape {values.shape}."
            )
        return values if self.scaler is None else self.scaler.transform(values)

    def decode(self, x):
        """Back from model space: ids -> str; standardized values -> original units."""
        if self.kind == "text":
            return self.vocabulary.decode(np.asarray(x))
        x = np.asarray(x, dtype=np.float64)
        return x if self.scaler is None else self.scaler.inverse(x)

    def log_det_jacobian(self) -> float:
        """log|det J| per step of :meth:`encode` (nats): a density of the encoded data
        minus this per step is the density in the original units (0 for text and
        for a series that is not standardised)."""
        return 0.0 if self.scaler is None else self.scaler.log_abs_det_jacobian

    @property
    def obs_dim(self) -> int | None:
        """Columns per step (series), else None."""
        return None if self.kind == "text" else len(self.columns)

    def log_prob(self, x, mask=None):
        """probseq.log_prob of encoded data under this run's model."""
        from probseq.core import log_prob

        return log_prob(self.model, self.params, x, mask)


def _json_safe(value):
    if isinstance(value, dict):
        out = {str(k): _json_safe(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _SKIP}
    if isinstance(value, list | tuple):
        out = [_json_safe(v) for v in value]
        return _SKIP if any(v is _SKIP for v in out) else out
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if np.isfinite(v) else str(v)
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    if isinstance(value, np.ndarray | jax.Array):
        a = np.asarray(value)
        if a.size > 10_000:
            return _SKIP
        return _json_safe(a.tolist())
    return _SKIP


_SKIP = object()


def _array(values: list) -> np.ndarray:
    """A history list back as an array ("nan"/"inf" strings back to floats)."""
    a = np.asarray(values)
    if a.dtype.kind in "US":
        try:
            return a.astype(np.float64)
        except ValueError:
            pass
    return a


def _write_atomic(directory: str, name: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_run(run: Run, directory) -> str:
    """Write ``run`` to ``directory`` (created if missing; an existing run there is
    replaced file by file). Returns the directory."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    marker = os.path.join(directory, "run.json")
    if os.path.exists(marker):
        os.remove(marker)  # the directory is incomplete until run.json is back
    _write_atomic(directory, "spec.toml", spec_text(run.spec))
    checkpoint.save_checkpoint(
        directory, {"params": run.params}, {"model": repr(run.model)}, filename="params.npz"
    )
    encoding = {
        "kind": run.kind,
        "vocabulary": None if run.vocabulary is None else run.vocabulary.chars,
        "scaler": None if run.scaler is None else run.scaler.to_dict(),
        "columns": None if run.columns is None else list(run.columns),
    }
    _write_atomic(directory, "data.json", json.dumps(encoding, indent=1))
    history = {"history": _json_safe(run.history), "info": _json_safe(run.info)}
    _write_atomic(directory, "history.json", json.dumps(history, indent=1))
    from probseq import __version__

    meta = {
        "format_version": FORMAT_VERSION,
        "probseq_version": __version__,
        "model": repr(run.model),
        "saved": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write_atomic(directory, "run.json", json.dumps(meta, indent=1))
    return directory


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise RunError(f"{path} is missing.")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path} is corrupt or unreadable ({e}).") from None
    if not isinstance(d, dict):
        raise RunError(f"{path} is corrupt: expected a JSON object.")
    return d


def load(directory) -> Run:
    """Load a run directory written by :func:`save_run` (``probseq fit``).

    Raises:
        RunError: the directory or one of its files is missing or corrupt (the
            message names it), or was written by an incompatible version.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise RunError(f"{directory}: no such run directory.")
    meta_path = os.path.join(directory, "run.json")
    if not os.path.exists(meta_path):
        raise RunError(
            f"{meta_path} is missing: {directory} is not a complete probseq run "
            "(the fit did not finish, or this is another kind of directory)."
        )
    meta = _read_json(meta_path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise RunError(
            f"{meta_path}: run format version {meta.get('format_version')!r}; this probseq "
            f"reads version {FORMAT_VERSION}."
        )
    spec_path = os.path.join(directory, "spec.toml")
    try:
        spec = load_spec(spec_path)
    except SpecError as e:
        raise RunError(str(e)) from None
    data_path = os.path.join(directory, "data.json")
    encoding = _read_json(data_path)
    try:
        if encoding.get("kind") != spec.kind:
            raise ValueError(f"kind {encoding.get('kind')!r} differs from the spec's")
        vocabulary = scaler = columns = None
        if spec.kind == "text":
            vocabulary = data_lib.CharVocabulary(encoding["vocabulary"])
            model = spec.build_model(vocab_size=vocabulary.vocab_size)
        else:
            columns = tuple(str(c) for c in encoding["columns"])
            if encoding.get("scaler") is not None:
                scaler = data_lib.Standardizer.from_dict(encoding["scaler"])
            model = spec.build_model(obs_dim=len(columns))
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{data_path} is corrupt ({e}).") from None
    params_path = os.path.join(directory, "params.npz")
    if not os.path.isfile(params_path):
        raise RunError(f"{params_path} is missing.")
    template = jax.eval_shape(lambda: spec.init_params(model))
    try:
        ckpt = checkpoint.load_checkpoint(directory, filename="params.npz")
        params = checkpoint.restore_tree(template, ckpt, "params", what="params")
    except Exception as e:  # zip, npz, JSON and shape errors all mean the same here
        raise RunError(f"{params_path} is corrupt or does not fit the spec ({e}).") from None
    params = jax.tree.map(jax.numpy.asarray, params)
    hist = _read_json(os.path.join(directory, "history.json"))
    history = {k: _array(v) for k, v in hist.get("history", {}).items() if isinstance(v, list)}
    return Run(
        model=model,
        params=params,
        spec=spec,
        vocabulary=vocabulary,
        scaler=scaler,
        columns=columns,
        history=history,
        info=hist.get("info", {}),
        path=directory,
    )
