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
* ``checkpoints/`` (``probseq fit`` with SGD) the resumable state of the fit;
* ``.probseq-lock`` (while ``probseq fit`` writes the directory) the pid of the fit
  that holds it (:func:`claim`).

What a run directory promises:

* every file is written by :func:`probseq.atomic.write_atomic` (a temporary name,
  flushed, moved into place with ``os.replace``), with the user's umask, and
  ``run.json`` goes last, so a fit killed while saving leaves no directory that
  :func:`load` would take for complete; temporaries a killed save left are removed
  by the next save;
* :func:`load` checks each file against its checksum in ``run.json`` and names the
  one that is missing or damaged (changed since it was saved); an intact file is
  never called damaged: parameters of another model say so, and parameters saved in
  another precision are cast to this process's (float32 under ``JAX_ENABLE_X64=1``,
  float64 without it: a :class:`probseq.fit.checkpoint.PrecisionWarning` says how
  much precision was lost);
* ``probseq fit`` into a directory that is not empty resumes only the same fit (the
  same spec, every setting of it, and the same data, in the precision it began in);
  anything else stops before any work with one line;
* one fit at a time writes a directory: :func:`claim` takes its lock file
  (``O_EXCL``), and a second fit started into it is refused with one line naming
  the first one's pid; the lock of a fit that was killed (SIGKILL too) does not
  block a later fit or resume.

Example:
    >>> run = probseq.load("runs/lstm")                     # doctest: +SKIP
    >>> run.log_prob(run.encode("Some new text."))          # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import fnmatch
import json
import os
import secrets
import socket
import time
import warnings
from typing import Any

import jax
import numpy as np

from probseq import atomic
from probseq import data as data_lib
from probseq.fit import checkpoint
from probseq.fit.result import FitHistory
from probseq.spec import Spec, SpecError, load_spec, spec_text

__all__ = ["Run", "save_run", "load", "RunError", "check_out", "undo_check_out", "claim"]
__all__ += ["FIT_FILE", "LOCK_FILE", "CHECKPOINTS_DIR"]

FORMAT_VERSION = 2  # 2: run.json holds a checksum of each file
_READABLE_VERSIONS = (1, 2)
FIT_FILE = "fit.json"
LOCK_FILE = ".probseq-lock"  # held by the fit writing the directory (:func:`claim`)
CHECKPOINTS_DIR = "checkpoints"  # where ``probseq fit`` keeps the resumable state
_PROBE_PREFIX = ".probseq-probe"
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
    _unlock(directory)  # the fit that claimed the directory is done writing it
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
    probe = os.path.join(directory, f"{_PROBE_PREFIX}-{secrets.token_hex(6)}")
    try:  # a name of its own: two fits may check out one --out at the same moment
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.remove(probe)
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

    First the directory's lock (:data:`LOCK_FILE`, created with ``O_EXCL``) is
    taken, so that two fits started into one ``--out`` at the same moment cannot
    both write it: the second is refused with a message naming the directory and
    the first one's pid. A lock whose holder is gone (killed, even by SIGKILL) is
    taken over. The lock is held until :func:`save_run` has written the run (or the
    process ends); a refused claim and a "finished" one release it at once.

    An empty directory then gets ``fit.json`` and is "new". A directory whose
    ``fit.json`` holds the same fingerprint is the same fit: "finished" if its run
    is saved, else "resume" - unless its checkpoint was written in another
    precision than this process computes in (``JAX_ENABLE_X64``): a resumed fit
    continues in the precision it began in (so that it equals the uninterrupted
    fit), and the message says how. Anything else is refused.

    Returns:
        "new", "resume" or "finished".

    Raises:
        RunError: another live fit holds the directory; the directory holds another
            fit (the message says what differs), files that are no probseq fit, a
            damaged ``fit.json``, or the checkpoint of this fit in another precision.
    """
    directory = os.fspath(directory)
    _lock(directory)
    try:
        state = _claim(directory, fingerprint)
    except BaseException:
        _unlock(directory)
        raise
    if state == "finished":  # nothing will be written
        _unlock(directory)
    return state


def _claim(directory: str, fingerprint: dict) -> str:
    path = os.path.join(directory, FIT_FILE)
    way_out = f"fit into another --out, or delete {directory} to start afresh"
    fingerprint = json.loads(json.dumps(fingerprint))
    if not os.path.exists(path):
        ours = [f".{n}-*{atomic.TMP_SUFFIX}" for n in (*_RUN_FILES, "run.json")]
        ours += [LOCK_FILE, f"{_PROBE_PREFIX}-*"]
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
    if os.path.exists(os.path.join(directory, "run.json")):
        return "finished"
    _check_resumable_precision(directory)
    return "resume"


def _check_resumable_precision(directory: str) -> None:
    """Refuse to resume a checkpoint written in another precision than this process's.

    Why refuse rather than cast: a resumed fit promises the parameters of the
    uninterrupted one. A float32 fit continued in float64 (or the reverse) equals
    neither, and the optimizer's or M-step's state would change precision silently.
    The finished run loads in either precision (:func:`load` casts it).
    """
    folder = os.path.join(directory, CHECKPOINTS_DIR)
    trees = checkpoint.read_trees(folder) if os.path.isdir(folder) else None
    if not trees:
        return
    floats = {d for t in trees.values() for d in t.get("dtypes", []) if d in _FLOATS}
    saved = next((d for d in ("float64", "float32") if d in floats), None)
    here = checkpoint.default_float()
    if saved is None or saved == here:
        return
    switch = "JAX_ENABLE_X64=1" if saved == "float64" else "JAX_ENABLE_X64 unset (or 0)"
    raise RunError(
        f"--out {directory} holds an unfinished fit in {saved} "
        f"({os.path.join(folder, checkpoint.CHECKPOINT_FILE)}), and this process computes "
        f"in {checkpoint.process_precision()}: a fit resumes in the precision it began in. "
        f"Resume it with {switch}, or delete {folder} to start it afresh in {here}, or fit "
        "into another --out."
    )


_FLOATS = ("float16", "bfloat16", "float32", "float64")


# ------------------------------------------------------- the lock of a run directory
_HELD: dict[str, str] = {}  # real path of a directory this process holds -> lock token
_STALE_UNWRITTEN_S = 5.0  # a lock file still empty after this long: its writer died


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of process ``pid`` from /proc (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()  # after "pid (comm) ": field 3 on
    if len(fields) < 20:
        return None
    return fields[0].decode(), fields[19].decode()


def _lock_record(token: str) -> dict:
    stat = _proc_stat(os.getpid())
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": None if stat is None else stat[1],
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "token": token,
    }


def _create_lock(path: str, record: dict) -> bool:
    """Create ``path`` with ``O_EXCL`` and write ``record``; False if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(record))
        f.flush()
        os.fsync(f.fileno())
    return True


def _read_lock(path: str) -> dict | None:
    """The lock's record; {} while it is being written (or its writer died before
    writing: see :func:`_blocks`); None if there is no lock."""
    for _ in range(20):  # the creator writes right after O_EXCL: give it a moment
        try:
            with open(path, encoding="utf-8") as f:
                record = json.loads(f.read())
            if isinstance(record, dict) and record:
                return record
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
        time.sleep(0.025)
    return {}


def _blocks(path: str, record: dict) -> bool:
    """Whether the lock at ``path`` is held by another live process."""
    if not record:  # never written: its creator died at once, or is writing right now
        try:
            return time.time() - os.path.getmtime(path) < _STALE_UNWRITTEN_S
        except OSError:
            return False
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # not a lock probseq wrote
    if record.get("host") != socket.gethostname() or os.name == "nt":
        return True  # a process on another machine (a shared disk): cannot tell
    if pid == os.getpid():  # this process (a second claim of the same directory)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):  # killed, not yet reaped
            return False
        if record.get("start") is not None and record["start"] != start:
            return False  # the pid was reused by a later process
    return True


@contextlib.contextmanager
def _guard(directory: str):
    """An exclusive flock on the directory while a stale lock is replaced, so that
    two processes taking over one stale lock cannot both win (POSIX; elsewhere a
    no-op: O_EXCL alone still keeps two fresh fits apart)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # pragma: no cover - a file system without flock
            pass
        yield
    finally:
        os.close(fd)


def _lock(directory: str) -> None:
    """Take ``directory``'s lock for this process (again, if it holds it already).

    Raises:
        RunError: another live process holds it (the message names the directory
            and its pid).
    """
    path = os.path.join(directory, LOCK_FILE)
    token = secrets.token_hex(8)
    record = _lock_record(token)
    for _ in range(5):
        if _create_lock(path, record):
            break
        with _guard(directory):
            holder = _read_lock(path)
            if holder is None:
                continue  # released meanwhile: try O_EXCL again
            if _blocks(path, holder):
                raise RunError(_in_use(directory, path, holder))
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # stale: its fit was killed (or is this process)
            if _create_lock(path, record):
                break
    else:  # pragma: no cover - five races lost in a row
        raise RunError(f"--out {directory} is in use: cannot take its lock {path}; try again.")
    _HELD[os.path.realpath(directory)] = token


def _in_use(directory: str, path: str, holder: dict) -> str:
    if not holder:
        who = "a probseq fit that is taking it right now (pid not yet written)"
    else:
        host = holder.get("host")
        where = "" if host == socket.gethostname() else f" on {host}"
        who = f"probseq fit pid {holder.get('pid')}{where}, since {holder.get('since')}"
    return (
        f"--out {directory} is in use by another fit ({who}): wait for it to end, or fit "
        f"into another --out (if that fit is no longer running, delete {path})."
    )


def _unlock(directory) -> None:
    """Release ``directory``'s lock if this process holds it (else do nothing)."""
    key = os.path.realpath(os.fspath(directory))
    token = _HELD.pop(key, None)
    if token is None:
        return
    path = os.path.join(key, LOCK_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            ours = json.loads(f.read()).get("token") == token
        if ours:
            os.remove(path)
    except (OSError, ValueError, AttributeError):
        pass  # gone, or replaced (the directory was deleted and reused)


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        _unlock(key)


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
                f"{path} is damaged: it was changed after the run was saved (its SHA-256 "
                f"differs from the one in {meta_path}); restore it from a copy, or fit again."
            )


def _load_params(directory: str, spec: Spec, model, meta: dict, *, verified: bool):
    """params.npz as the pytree ``spec`` builds for ``model``, in this process's
    precision (cast: a PrecisionWarning says when values change). ``verified``: its
    checksum matched run.json, so a file that does not fit is intact, of another model."""
    path = os.path.join(directory, "params.npz")
    template = jax.eval_shape(lambda: spec.init_params(model))
    try:
        ckpt = checkpoint.load_checkpoint(directory, filename="params.npz")
    except checkpoint.CheckpointError as e:
        if verified:  # the bytes are the ones saved: not damaged since
            raise RunError(
                f"{path} cannot be read as probseq parameters, though it is as it was saved "
                f"(its checksum matches run.json): {e}"
            ) from None
        raise RunError(str(e)) from None
    if ckpt is None:
        raise RunError(f"{path} is missing.")
    saved_by = meta.get("probseq_version")
    from probseq import __version__

    intact = (
        f"The file is intact (its checksum matches run.json): it holds the parameters of "
        f"another model than {spec.source} builds with this probseq ({__version__}; the run "
        f"was saved by probseq {saved_by}). Load it with the probseq that saved it, or fit "
        "the spec again."
        if verified
        else "The file is damaged, or holds the parameters of another model (this run "
        "has no checksums to tell which); fit the spec again."
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", checkpoint.PrecisionWarning)
            params = checkpoint.restore_tree(
                template, ckpt, "params", what="params", cast=True, hint=intact
            )
    except ValueError as e:
        raise RunError(f"{path} does not fit the spec's model: {e}") from None
    for w in caught:  # said where load() was called
        warnings.warn(w.message, w.category, stacklevel=3)
    return jax.tree.map(jax.numpy.asarray, params)


def load(directory) -> Run:
    """Load a run directory written by :func:`save_run` (``probseq fit``).

    The parameters come back in this process's precision, whichever they were saved
    in: a float32 run under ``JAX_ENABLE_X64=1`` is cast up (exactly); a float64 run
    without x64 is cast down, with a
    :class:`probseq.fit.checkpoint.PrecisionWarning` saying how much changed.

    Raises:
        RunError: the directory or one of its files is missing or damaged (its
            checksum differs; the message names it), holds another model's
            parameters than its spec builds, or was written by an incompatible
            version.
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
    params = _load_params(directory, spec, model, meta, verified=version >= 2)
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
