"""Checkpoints of pytrees: one ``.npz`` file of flattened leaves plus JSON metadata.

A checkpoint is a single file, ``<directory>/checkpoint.npz``, holding

* for every named pytree (``params``, ``opt_state``, ...), its leaves as arrays
  ``"<name>/<i>"`` in ``jax.tree.leaves`` order;
* ``"__metadata__"``: a JSON document (stored as a unicode scalar) with the caller's
  metadata and, per tree, the key paths, shapes and dtypes of its leaves.

No pickle is written or read (``np.load(..., allow_pickle=False)``), so a checkpoint
from an untrusted source cannot run code. The file is written by
:func:`probseq.atomic.write_atomic` (a temporary file in the same directory, flushed
to disk and moved into place with ``os.replace``): a process killed at any moment
leaves either the previous checkpoint or the new one, never a torn file, and the
temporaries a killed save left behind are removed by the next save or resume. A
damaged file is refused with a :class:`CheckpointError` that names it. Restoring
needs a template pytree (e.g. ``model.init(key)``): the structure comes from the
template, and a stored tree whose paths or shapes differ (another model) is refused
with a ValueError. A tree that differs only in precision (saved under
``jax_enable_x64`` and read without it, or the reverse) is refused with a
:class:`PrecisionMismatchError` that says so, or cast with ``restore_tree(...,
cast=True)`` (with a :class:`PrecisionWarning` where values change).

Example:
    >>> import tempfile, jax.numpy as jnp
    >>> d = tempfile.mkdtemp()
    >>> tree = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> _ = save_checkpoint(d, {"params": tree}, {"step": 7})
    >>> ckpt = load_checkpoint(d)
    >>> ckpt.metadata["step"]
    7
    >>> restored = restore_tree(tree, ckpt, "params")
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import warnings
import zipfile
from typing import Any, NamedTuple

import jax
import numpy as np

from probseq import atomic

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_metadata",
    "restore_tree",
    "remove_stale_temporaries",
    "CheckpointError",
    "PrecisionMismatchError",
    "PrecisionWarning",
    "precision",
    "read_trees",
]

CHECKPOINT_FILE = "checkpoint.npz"
_METADATA_KEY = "__metadata__"
_FORMAT_VERSION = 1
_LEGACY_TMP_PREFIX = ".checkpoint-"  # temporaries of the writer before probseq.atomic


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, not a probseq checkpoint,
    metadata that is not JSON); the message names the file."""


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns.

    path: the file read.
    metadata: the caller's metadata (a dict decoded from JSON).
    trees: name -> {"paths", "shapes", "dtypes"} descriptions of each stored tree.
    arrays: name -> list of leaves (NumPy arrays) in ``jax.tree.leaves`` order.
    """

    path: str
    metadata: dict
    trees: dict
    arrays: dict


def _dtype(leaf):
    return leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def _describe(tree) -> dict:
    """Key paths, shapes and dtypes of the leaves (arrays or ShapeDtypeStructs)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "paths": [jax.tree_util.keystr(path) for path, _ in flat],
        "shapes": [list(np.shape(leaf)) for _, leaf in flat],
        "dtypes": [str(_dtype(leaf)) for _, leaf in flat],
    }


def _storable(a: np.ndarray) -> np.ndarray:
    # ml_dtypes (bfloat16, float8...) have no portable .npz form: store their bits.
    if a.dtype.kind == "V" or a.dtype.type.__module__.startswith("ml_dtypes"):
        return a.view(np.dtype(f"uint{8 * a.dtype.itemsize}"))
    return a


def save_checkpoint(
    directory, trees: dict[str, Any], metadata: dict, *, filename: str = CHECKPOINT_FILE
) -> str:
    """Atomically write ``trees`` (name -> pytree of arrays) and ``metadata``.

    Args:
        directory: where the file goes (created if missing).
        trees: the pytrees to store, by name.
        metadata: JSON-serializable facts (step, epoch, history, ...).
        filename: the file's name in ``directory``.

    Returns:
        The path of the checkpoint file.
    """
    os.makedirs(directory, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    described = {}
    for name, tree in trees.items():
        if "/" in name or name == _METADATA_KEY:
            raise ValueError(f"tree name {name!r} may not contain '/' or be {_METADATA_KEY!r}.")
        described[name] = _describe(tree)
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{name}/{i}"] = _storable(np.asarray(leaf))
    document = {"format_version": _FORMAT_VERSION, "trees": described, "metadata": metadata}
    arrays[_METADATA_KEY] = np.array(json.dumps(document))
    path = os.path.join(directory, filename)
    remove_stale_temporaries(directory, filename)
    return atomic.write_atomic(path, lambda f: np.savez(f, **arrays))


def remove_stale_temporaries(directory, filename: str = CHECKPOINT_FILE) -> None:
    """Delete the temporaries a killed save of ``filename`` left in ``directory``
    (no other file: the directory may hold the user's own)."""
    atomic.remove_stale(directory, [filename])
    pattern = os.path.join(glob.escape(os.fspath(directory)), _LEGACY_TMP_PREFIX + "*.tmp")
    for tmp in glob.glob(pattern):
        try:
            os.remove(tmp)
        except FileNotFoundError:  # pragma: no cover - removed concurrently
            pass


def _read_document(npz, path) -> dict:
    if _METADATA_KEY not in npz.files:
        raise CheckpointError(f"{path} is not a probseq checkpoint (no {_METADATA_KEY} entry).")
    try:
        document = json.loads(str(npz[_METADATA_KEY][()]))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is corrupt: its metadata is not JSON ({e}).") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path} is corrupt: its metadata is not a JSON object.")
    version = document.get("format_version")
    if version != _FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this probseq reads version "
            f"{_FORMAT_VERSION}."
        )
    if not isinstance(document.get("trees"), dict) or not isinstance(
        document.get("metadata"), dict
    ):
        raise CheckpointError(f"{path} is corrupt: its metadata lacks 'trees' or 'metadata'.")
    return document


# What a damaged .npz raises on reading: a truncated zip, garbage bytes, a missing
# member, a malformed array header.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile)


@contextlib.contextmanager
def _open_npz(path):
    """The open .npz at ``path``; whatever a damaged file raises while it is read
    (inside the block too) becomes one :class:`CheckpointError` naming the file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            yield npz
    except CheckpointError:
        raise
    except _READ_ERRORS as e:
        raise CheckpointError(
            f"{path} is corrupt or unreadable ({type(e).__name__}: {e})."
        ) from None


def load_checkpoint(directory, *, filename: str = CHECKPOINT_FILE) -> Checkpoint | None:
    """Read ``<directory>/<filename>``; None if there is none.

    Raises:
        CheckpointError: the file is truncated, not a probseq checkpoint, or its
            metadata is not JSON (the message names the file).
    """
    path = os.path.join(directory, filename)
    if not os.path.exists(path):
        return None
    with _open_npz(path) as npz:
        document = _read_document(npz, path)
        arrays = {}
        for name, info in document["trees"].items():
            leaves = []
            for i, dtype in enumerate(info["dtypes"]):
                a = npz[f"{name}/{i}"]
                if str(a.dtype) != dtype:
                    a = a.view(np.dtype(jax.numpy.dtype(dtype)))
                leaves.append(a)
            arrays[name] = leaves
    return Checkpoint(path, document["metadata"], document["trees"], arrays)


def read_metadata(directory) -> dict | None:
    """Only the metadata of ``<directory>/checkpoint.npz`` (None if there is none).

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    path = os.path.join(directory, CHECKPOINT_FILE)
    if not os.path.exists(path):
        return None
    with _open_npz(path) as npz:
        return _read_document(npz, path)["metadata"]


def read_trees(directory, *, filename: str = CHECKPOINT_FILE) -> dict | None:
    """Only the descriptions of the stored trees (name -> {"paths", "shapes",
    "dtypes"}) of ``<directory>/<filename>``, without reading the arrays (None if there
    is no such file).

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    path = os.path.join(directory, filename)
    if not os.path.exists(path):
        return None
    with _open_npz(path) as npz:
        return _read_document(npz, path)["trees"]


def _kind(dtype: str) -> str:
    """ "float" (bfloat16 too), "complex", "int", "uint", "bool", or the dtype itself."""
    try:
        d = jax.numpy.dtype(dtype)
    except TypeError:
        return dtype
    for kind, parent in (("float", np.floating), ("complex", np.complexfloating),
                         ("uint", np.unsignedinteger), ("int", np.signedinteger),
                         ("bool", np.bool_)):  # fmt: skip
        if jax.numpy.issubdtype(d, parent):
            return kind
    return dtype


def precision(dtypes) -> str:
    """The precision a list of dtypes is in: its floating (and complex) dtypes, joined
    by "+" ("float32", "float64"); with none, every dtype ("int32")."""
    floats = sorted({str(d) for d in dtypes if _kind(str(d)) in ("float", "complex")})
    return "+".join(floats or sorted({str(d) for d in dtypes}))


def process_precision() -> str:
    """ "float64, jax_enable_x64 on" or "float32, jax_enable_x64 off": the precision
    arrays made without an explicit dtype get in this process."""
    on = bool(jax.config.jax_enable_x64)
    return f"float{64 if on else 32}, jax_enable_x64 {'on' if on else 'off'}"


def _switch(saved: str) -> str:
    """How to run in ``saved`` precision."""
    return "JAX_ENABLE_X64=1" if saved == "float64" else "JAX_ENABLE_X64 unset"


def default_float() -> str:
    """ "float64" under ``jax_enable_x64``, else "float32"."""
    return "float64" if jax.config.jax_enable_x64 else "float32"


class PrecisionMismatchError(ValueError):
    """A stored tree of the right structure and shapes whose leaves are in another
    precision than expected (float32 stored, float64 expected, or the reverse): the
    file is intact and of the right model. :func:`restore_tree` raises it unless
    asked to ``cast``."""


class PrecisionWarning(UserWarning):
    """Stored values were cast to a narrower dtype and changed (float64 -> float32)."""


def _cast(a: np.ndarray, dtype) -> tuple[np.ndarray, bool]:
    """``a`` as ``dtype`` and whether any value changed (precision lost)."""
    out = a.astype(dtype)
    if np.dtype(dtype).itemsize >= a.dtype.itemsize:
        return out, False
    with np.errstate(all="ignore"):
        back = out.astype(a.dtype)
    return out, not np.array_equal(back, a, equal_nan=a.dtype.kind in "fc")


def restore_tree(
    template,
    checkpoint: Checkpoint,
    name: str,
    *,
    what: str | None = None,
    cast: bool = False,
    hint: str | None = None,
):
    """Rebuild the stored tree ``name`` with the structure of ``template``.

    A tree stored in another precision (the same paths and shapes; float32 where the
    template has float64, int64 where it has int32, ...) is refused with a
    :class:`PrecisionMismatchError`, or with ``cast=True`` cast to the template's
    dtypes; a cast that changes a value (float64 to float32) warns with a
    :class:`PrecisionWarning` that says how much.

    Args:
        template: a pytree of arrays or ShapeDtypeStructs: the structure, shapes and
            dtypes expected.
        checkpoint: what :func:`load_checkpoint` returned.
        name: the stored tree's name; ``what``: how messages call it.
        cast: cast a tree stored in another precision instead of refusing it.
        hint: what the message of another model (paths or shapes differ) tells the
            user to do (default: use another checkpoint_dir).

    Raises:
        ValueError: the checkpoint has no such tree, or its key paths, shapes or dtype
            kinds differ from the template's: another model (say which leaf, what was
            stored, what was expected).
        PrecisionMismatchError: (a ValueError) only the precision differs and
            ``cast`` is False.
    """
    what = what or name
    if name not in checkpoint.trees:
        raise ValueError(f"checkpoint {checkpoint.path} holds no {what} ({name!r}).")
    stored = checkpoint.trees[name]
    expected = _describe(template)
    if hint is None:
        hint = (
            f"The checkpoint in {os.path.dirname(checkpoint.path)} was written for a "
            "different model, optimizer or batch layout; use another checkpoint_dir (or "
            "delete it) to start afresh."
        )
    if stored["paths"] != expected["paths"]:
        missing = [p for p in expected["paths"] if p not in stored["paths"]]
        extra = [p for p in stored["paths"] if p not in expected["paths"]]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing[:4]) or 'nothing'}")
        if extra:
            detail.append(f"unexpected {', '.join(extra[:4])}")
        if not detail:
            detail.append(
                f"{len(stored['paths'])} leaves stored, {len(expected['paths'])} expected"
            )
        raise ValueError(f"checkpoint {what} does not match: {'; '.join(detail)}. {hint}")
    other_precision = []
    for path, s_shape, s_dtype, e_shape, e_dtype in zip(
        stored["paths"],
        stored["shapes"],
        stored["dtypes"],
        expected["shapes"],
        expected["dtypes"],
        strict=True,
    ):
        if s_shape != e_shape or (s_dtype != e_dtype and _kind(s_dtype) != _kind(e_dtype)):
            raise ValueError(
                f"checkpoint {what}{path} has shape {tuple(s_shape)} and dtype {s_dtype}, but "
                f"{tuple(e_shape)} and {e_dtype} are expected. {hint}"
            )
        if s_dtype != e_dtype:
            other_precision.append(path)
    leaves = checkpoint.arrays[name]
    if other_precision:
        saved, wanted = precision(stored["dtypes"]), precision(expected["dtypes"])
        if not cast:
            raise PrecisionMismatchError(
                f"{checkpoint.path} holds the {what} in {saved}, but {wanted} is expected "
                f"here (this process computes in {process_precision()}): the file is intact "
                "and of this model, only its precision differs. Use it in the precision it "
                f"was saved in ({_switch(saved)}), or use another checkpoint_dir (or delete "
                "it) to start afresh."
            )
        out, changed, worst = [], [], 0.0
        for leaf, s_dtype, e_dtype, path in zip(
            leaves, stored["dtypes"], expected["dtypes"], stored["paths"], strict=True
        ):
            if s_dtype == e_dtype:
                out.append(leaf)
                continue
            new, lost = _cast(np.asarray(leaf), np.dtype(jax.numpy.dtype(e_dtype)))
            out.append(new)
            if lost:
                changed.append(path)
                if _kind(s_dtype) in ("float", "complex"):
                    a = np.asarray(leaf)
                    with np.errstate(all="ignore"):
                        err = np.abs(new.astype(a.dtype) - a) / np.maximum(np.abs(a), 1e-300)
                    finite = err[np.isfinite(err)]
                    worst = max(worst, float(finite.max()) if finite.size else 0.0)
        if changed:
            warnings.warn(
                f"{checkpoint.path} holds the {what} in {saved}; they are cast to {wanted}, "
                f"the precision this process computes in ({process_precision()}), and "
                f"{len(changed)} of {len(leaves)} arrays change (largest relative change "
                f"{worst:.1e}). To use them in {saved}, run with {_switch(saved)}.",
                PrecisionWarning,
                stacklevel=3,
            )
        leaves = out
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, leaves)
