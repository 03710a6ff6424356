"""Reading a user's file as text, with one-line errors that name the file."""

from __future__ import annotations

import os

__all__: list[str] = []


def _file_name(path, what: str) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise ValueError(
            f"{what}: path must be a str or os.PathLike; got {type(path).__name__}."
        ) from None


def _read_file(path, what: str) -> str:
    """A file's text (UTF-8, BOM dropped, newlines made "\\n"), or a one-line ValueError."""
    name = _file_name(path, what)
    if not os.path.exists(name):
        raise ValueError(f"{what}: no such file {name!r}.")
    if os.path.isdir(name):
        raise ValueError(f"{what}: {name!r} is a directory, not a file.")
    with open(name, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{what}: {name!r} is not UTF-8 text: byte {raw[e.start]:#04x} at byte offset "
            f"{e.start} (line {line}) does not decode; re-save the file as UTF-8."
        ) from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        detail = "empty" if not raw else "empty (only whitespace)"
        raise ValueError(f"{what}: {name!r} is {detail}.")
    return text
