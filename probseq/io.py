"""Run directories: a fitted model saved with everything needed to use it again.

A run directory holds

* ``spec.toml``    the model spec it was fitted from (:mod:`probseq.spec`);
* ``params.npz``   the fitted parameters (NumPy ``.npz`` + JSON, no pickle);
* ``data.json``    how data is encoded: the character vocabulary (text), the
  columns and the standardisation (series), or the source and target vocabularies
  (pairs, :class:`probseq.data.PairEncoding`);
* ``history.json`` the fit history (every :class:`probseq.FitHistory` field by name;
  an older run's keys still load) and facts about the fit;
* ``run.json``     written last: format version, probseq version, model, and the
  SHA-256 of every other file;
* ``fit.json``     (``probseq fit``) what the directory is being fitted for: the
  spec and the identity of the data (:func:`claim`), written before the fit starts;
* ``checkpoints/`` (``probseq fit`` with SGD) the resumable state of the fit.

What a run directory promises:

* every file is written by :func:`probseq.atomic.write_atomic` (a temporary name,
  flushed, moved into place with ``os.replace``), with the user's umask, and
  ``run.json`` goes last, so a fit killed while saving leaves no directory that
  :func:`load` would take for complete; temporaries a killed save left are removed
  by the next save;
* :func:`load` checks each file against its checksum in ``run.json`` and names the
  one that is missing, changed or corrupt;
* ``probseq fit`` into a directory that is not empty resumes only the same fit (the
  same spec, every setting of it, and the same data); anything else stops before
  any work with one line.

Example:
    >>> run = probseq.load("runs/lstm")                     # doctest: +SKIP
    >>> run.log_prob(run.encode("Some new text."))          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import json
import os
from typing import Any

import jax
import numpy as np

from probseq import atomic
from probseq import data as data_lib
from probseq.fit import checkpoint
from probseq.fit.result import FitHistory
from probseq.spec import Spec, SpecError, load_spec, spec_text

__all__ = ["Run", "save_run", "load", "RunError", "check_out", "undo_check_out", "claim"]
__all__ += ["FIT_FILE"]

FORMAT_VERSION = 2  # 2: run.json holds a checksum of each file
_READABLE_VERSIONS = (1, 2)
FIT_FILE = "fit.json"
_RUN_FILES = ("spec.toml", "params.npz", "data.json", "history.json", FIT_FILE)


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
        history: the :class:`probseq.FitHistory` of the fit (None when none was
            recorded; a dict, e.g. an older history, is read by
            :meth:`~probseq.FitHistory.from_dict`).
        info: JSON facts about the fit (how it stopped, test scores, ...).
        path: the directory it was loaded from (None before saving).
        pair_encoding: the :class:`probseq.data.PairEncoding` (pairs), else None.
    """

    model: Any
    params: Any
    spec: Spec
    vocabulary: data_lib.CharVocabulary | None = None
    scaler: data_lib.Standardizer | None = None
    columns: tuple[str, ...] | None = None
    history: FitHistory | None = None
    info: dict = dataclasses.field(default_factory=dict)
    path: str | None = None
    pair_encoding: data_lib.PairEncoding | None = None

    def __post_init__(self):
        if isinstance(self.history, dict):
            history = FitHistory.from_dict(self.history) if self.history else None
            object.__setattr__(self, "history", history)

    @property
    def kind(self) -> str:
        """ "text", "series" or "pairs"."""
        return self.spec.kind

    def encode(self, source) -> np.ndarray:
        """Model-space data: text -> (T,) ids; a real series (T,) / (T, D) ->
        standardized (T, D) (when the run standardizes). A pairs run encodes with
        ``pair_encoding`` (:class:`probseq.data.PairEncoding`)."""
        self._not_pairs("encode")
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
        self._not_pairs("decode")
        if self.kind == "text":
            return self.vocabulary.decode(np.asarray(x))
        x = np.asarray(x, dtype=np.float64)
        return x if self.scaler is None else self.scaler.inverse(x)

    def _not_pairs(self, what: str) -> None:
        if self.kind == "pairs":
            raise ValueError(
                f"a pairs run has no {what}(); use run.pair_encoding (encode, encode_source, "
                "decode_target)."
            )

    def log_det_jacobian(self) -> float:
        """log|det J| per step of :meth:`encode` (nats): a density of the encoded data
        minus this per step is the density in the original units (0 for text and
        for a series that is not standardised)."""
        return 0.0 if self.scaler is None else self.scaler.log_abs_det_jacobian

    @property
    def obs_dim(self) -> int | None:
        """Columns per step (series), else None."""
        return len(self.columns) if self.kind == "series" else None

    def log_prob(self, x, mask=None, *, source=None, source_mask=None):
        """probseq.log_prob of encoded data under this run's model (``source=``: the
        encoded sources of a pairs run's targets)."""
        from probseq.core import log_prob

        return log_prob(self.model, self.params, x, mask, source=source, source_mask=source_mask)


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


def _history_lists(history: FitHistory) -> dict:
    """Every field of the history as JSON lists (no size limit) and ``fitter``."""
    return {k: (v if isinstance(v, str) else v.tolist()) for k, v in history.items()}


def _load_history(stored: dict, info: dict) -> FitHistory | None:
    """history.json's history as a FitHistory: this version's fields, or an older
    run's keys (fit_sgd's ``train_log_lik`` ..., fit_em's / fit_ls's totals)."""
    lists = {k: _array(v) for k, v in stored.items() if isinstance(v, list)}
    if "fitter" in stored:
        lists["fitter"] = stored["fitter"]
    if not lists:
        return None
    tokens = None  # an older fit_em history: the per-token values over the training tokens
    if "fitter" not in stored and "objective" in stored and "log_likelihood" in stored:
        tokens = info.get("num_tokens", info.get("num_train_symbols"))
        tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
    return FitHistory.from_dict(lists, num_tokens=tokens)


def _write_atomic(directory: str, name: str, text: str) -> None:
    atomic.write_atomic(os.path.join(directory, name), text)


def save_run(run: Run, directory, *, fingerprint: dict | None = None) -> str:
    """Write ``run`` to ``directory`` (created if missing; an existing run there is
    replaced file by file). Returns the directory.

    Args:
        run: the fitted run.
        directory: where to write it.
        fingerprint: what the run was fitted from (``probseq fit`` passes
            :func:`probseq.workflow.fit_fingerprint`); written to ``fit.json``.
            None removes a ``fit.json`` of an earlier fit, so that ``probseq fit``
            never resumes into a run it did not write.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    atomic.remove_stale(directory, (*_RUN_FILES, "run.json"))
    marker = os.path.join(directory, "run.json")
    if os.path.exists(marker):
        os.remove(marker)  # the directory is incomplete until run.json is back
    fit_path = os.path.join(directory, FIT_FILE)
    if fingerprint is None:
        if os.path.exists(fit_path):
            os.remove(fit_path)
    else:
        _write_atomic(directory, FIT_FILE, _fit_text(fingerprint))
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
    if run.pair_encoding is not None:
        encoding["pairs"] = run.pair_encoding.to_dict()
    _write_atomic(directory, "data.json", json.dumps(encoding, indent=1))
    stored = {} if run.history is None else _json_safe(_history_lists(run.history))
    history = {"history": stored, "info": _json_safe(run.info)}
    _write_atomic(directory, "history.json", json.dumps(history, indent=1))
    from probseq import __version__

    files = {
        name: atomic.sha256_file(os.path.join(directory, name))
        for name in _RUN_FILES
        if os.path.isfile(os.path.join(directory, name))
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "probseq_version": __version__,
        "model": repr(run.model),
        "saved": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "sha256": files,
    }
    _write_atomic(directory, "run.json", json.dumps(meta, indent=1))
    return directory


# ----------------------------------------------------------- --out of probseq fit
def check_out(directory) -> tuple[str, str | None]:
    """Make sure ``directory`` can take a run, before any work: create it if missing
    and prove it writable by creating and removing a probe file.

    Returns:
        (the directory, the topmost directory this call created, or None): pass
        both to :func:`undo_check_out` to remove what it created if the fit is
        refused.

    Raises:
        RunError: an empty path, a path that is a file, or a directory that cannot
            be created or written to.
    """
    directory = os.fspath(directory)
    if not directory.strip():
        raise RunError("--out is empty; give the run directory to write, e.g. --out runs/lstm.")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise RunError(f"--out {directory} is an existing file, not a directory.")
    created = None
    head = os.path.abspath(directory)
    while not os.path.exists(head):
        created, head = head, os.path.dirname(head)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise RunError(f"--out {directory}: cannot create the directory ({e.strerror}).") from None
    try:
        atomic.write_atomic(os.path.join(directory, ".probseq-probe"), b"")
        os.remove(os.path.join(directory, ".probseq-probe"))
    except OSError as e:
        undo_check_out(directory, created)
        raise RunError(f"--out {directory} is not writable ({e.strerror}).") from None
    return directory, created


def undo_check_out(directory, created: str | None) -> None:
    """Remove the empty directories :func:`check_out` created (none that hold files)."""
    if created is None:
        return
    path = os.path.abspath(directory)
    while True:
        try:
            os.rmdir(path)
        except OSError:
            return  # not empty (or gone): keep it and everything above
        if path == created or os.path.dirname(path) == path:
            return
        path = os.path.dirname(path)


def _fit_text(fingerprint: dict) -> str:
    return json.dumps({"format_version": 1, "fingerprint": fingerprint}, indent=1)


def _first_difference(old, new, where=""):
    """(path, old value, new value) of the first difference between two JSON trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(new) + [k for k in old if k not in new]:
            if old.get(key, _SKIP) != new.get(key, _SKIP):
                return _first_difference(
                    old.get(key), new.get(key), f"{where}.{key}" if where else key
                )
    return where, old, new


_PARTS = {"model": "model", "fit": "fit settings", "seed": "seed", "data": "data settings"}


def claim(directory, fingerprint: dict) -> str:
    """Reserve a run directory for the fit described by ``fingerprint`` (a JSON dict;
    ``probseq fit`` uses :func:`probseq.workflow.fit_fingerprint`).

    An empty directory gets ``fit.json`` and is "new". A directory whose
    ``fit.json`` holds the same fingerprint is the same fit: "finished" if its run
    is saved, else "resume". Anything else is refused.

    Returns:
        "new", "resume" or "finished".

    Raises:
        RunError: the directory holds another fit (the message says what differs),
            files that are no probseq fit, or a damaged ``fit.json``.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, FIT_FILE)
    way_out = f"fit into another --out, or delete {directory} to start afresh"
    fingerprint = json.loads(json.dumps(fingerprint))
    if not os.path.exists(path):
        ours = [f".{n}-*{atomic.TMP_SUFFIX}" for n in (*_RUN_FILES, "run.json")]
        if any(not any(fnmatch.fnmatch(e, p) for p in ours) for e in os.listdir(directory)):
            what = (
                "a run saved without a record of its fit (by probseq.save_run or an older probseq)"
                if os.path.exists(os.path.join(directory, "run.json"))
                else "files that are not a probseq fit"
            )
            raise RunError(f"--out {directory} is not empty: it holds {what}; {way_out}.")
        atomic.remove_stale(directory, (*_RUN_FILES, "run.json"))  # a save killed at once
        _write_atomic(directory, FIT_FILE, _fit_text(fingerprint))
        return "new"
    atomic.remove_stale(directory, (*_RUN_FILES, "run.json"))  # ours: fit.json is there
    stored = _read_json(path).get("fingerprint")
    if not isinstance(stored, dict):
        raise RunError(f"{path} is corrupt: no fingerprint; {way_out}.")
    if stored != fingerprint:
        key, old, new = _first_difference(stored, fingerprint)
        parts = key.split(".")
        part = "data"
        if parts[0] == "spec" and len(parts) > 1:
            part = _PARTS.get(parts[1], parts[1])
        shown = ", ".join(
            f"{json.dumps(v, ensure_ascii=True)[:60]} {when}"
            for v, when in ((old, "there"), (new, "now"))
        )
        raise RunError(
            f"--out {directory} holds a fit of another spec or data: its {part} differs "
            f"({key}: {shown}); {way_out}."
        )
    return "finished" if os.path.exists(os.path.join(directory, "run.json")) else "resume"


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise RunError(f"{path} is missing.")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path} is corrupt or unreadable ({e}).") from None
    except RecursionError:
        raise RunError(f"{path} is corrupt: nested too deeply to read.") from None
    if not isinstance(d, dict):
        raise RunError(f"{path} is corrupt: expected a JSON object.")
    return d


def _verify_checksums(directory: str, meta_path: str, sums) -> None:
    required = {"spec.toml", "params.npz", "data.json", "history.json"}
    if not isinstance(sums, dict) or not required <= set(sums):
        raise RunError(f"{meta_path} is corrupt: it lacks the checksums of the run's files.")
    for name, expected in sums.items():
        if name not in _RUN_FILES:
            raise RunError(f"{meta_path} is corrupt: a checksum of an unknown file {name!r}.")
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise RunError(f"{path} is missing.")
        try:
            actual = atomic.sha256_file(path)
        except OSError as e:
            raise RunError(f"{path} is unreadable ({e.strerror}).") from None
        if actual != expected:
            raise RunError(
                f"{path} is corrupt: it was changed or damaged after the run was saved "
                f"(its SHA-256 differs from the one in {meta_path})."
            )


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
    version = meta.get("format_version")
    if version not in _READABLE_VERSIONS or isinstance(version, bool):
        raise RunError(
            f"{meta_path}: run format version {version!r}; this probseq reads versions "
            f"{', '.join(map(str, _READABLE_VERSIONS))}."
        )
    if version >= 2:
        _verify_checksums(directory, meta_path, meta.get("sha256"))
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
        pair_encoding = None
        if spec.kind == "pairs":
            pair_encoding = data_lib.PairEncoding.from_dict(encoding["pairs"])
            if pair_encoding.target != spec.data["target"]:
                raise ValueError(f"target {pair_encoding.target!r} differs from the spec's")
            model = spec.build_model(
                vocab_size=pair_encoding.target_vocab_size,
                source_vocab_size=pair_encoding.source.vocab_size,
            )
        elif spec.kind == "text":
            vocabulary = data_lib.CharVocabulary(encoding["vocabulary"])
            model = spec.build_model(vocab_size=vocabulary.vocab_size)
        else:
            columns = tuple(str(c) for c in encoding["columns"])
            if encoding.get("scaler") is not None:
                scaler = data_lib.Standardizer.from_dict(encoding["scaler"])
            model = spec.build_model(obs_dim=len(columns))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
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
    hist_path = os.path.join(directory, "history.json")
    hist = _read_json(hist_path)
    stored_history, info = hist.get("history", {}), hist.get("info", {})
    if not isinstance(stored_history, dict) or not isinstance(info, dict):
        raise RunError(f"{hist_path} is corrupt: 'history' and 'info' must be JSON objects.")
    try:
        history = _load_history(stored_history, info)
    except (TypeError, ValueError) as e:
        raise RunError(f"{hist_path} is corrupt ({e}).") from None
    return Run(
        model=model,
        params=params,
        spec=spec,
        vocabulary=vocabulary,
        scaler=scaler,
        columns=columns,
        history=history,
        info=info,
        path=directory,
        pair_encoding=pair_encoding,
    )
