"""Atomic file writes: the one helper behind run directories and checkpoints.

:func:`write_atomic` writes to a temporary file in the target's directory, flushes it
to disk and moves it into place with ``os.replace``, so that a process killed at any
moment leaves either the old file or the new one, never a torn one. The temporary
file is created like any other file the user saves: its mode follows the umask
(``0o666 & ~umask``), not the ``0o600`` of :func:`tempfile.mkstemp`.

Temporaries are named ``.<name>-<random>.tmp``. A writer killed between creating
one and moving it into place leaves it behind; :func:`remove_stale` deletes such
leftovers and every writer here calls it before it writes.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> path = write_atomic(os.path.join(d, "notes.txt"), "hello\\n")
    >>> open(path).read()
    'hello\\n'
"""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["write_atomic", "remove_stale", "sha256_file", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


def _temporary(directory: str, name: str) -> tuple[int, str]:
    """Create ``.<name>-<random>.tmp`` in ``directory``, mode ``0o666 & ~umask``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}-{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
    raise FileExistsError(f"cannot create a temporary file for {name} in {directory}.")


def write_atomic(path, content: str | bytes | Callable[[BinaryIO], None]) -> str:
    """Write ``content`` to ``path`` atomically (all of it, or the old file stays).

    Args:
        path: the file to write; its directory must exist.
        content: text (written as UTF-8), bytes, or a function that writes to the
            binary file object it is given (e.g. ``lambda f: np.savez(f, **arrays)``).

    Returns:
        ``path``.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    directory = directory or "."
    fd, tmp = _temporary(directory, name)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def remove_stale(directory, names=None) -> list[str]:
    """Delete the temporaries a killed :func:`write_atomic` left in ``directory``.

    Args:
        directory: where to look (a missing directory holds none).
        names: only the temporaries of these file names (default: all of them).

    Returns:
        The paths removed.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    patterns = [f".{n}-*{TMP_SUFFIX}" for n in names] if names else [f".*-*{TMP_SUFFIX}"]
    removed = []
    for pattern in patterns:
        for tmp in glob.glob(os.path.join(glob.escape(directory), pattern)):
            if os.path.isfile(tmp) and not os.path.islink(tmp):
                try:
                    os.remove(tmp)
                    removed.append(tmp)
                except FileNotFoundError:  # pragma: no cover - removed concurrently
                    pass
    return removed


def sha256_file(path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
