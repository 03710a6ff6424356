"""Numeric columns of a CSV file, one row per time step."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from probseq.data._files import _file_name, _read_file

__all__ = ["CsvColumns", "read_csv"]


class CsvColumns(NamedTuple):
    """Numeric columns of a CSV file, one row per time step."""

    values: np.ndarray  # (T, D) float64
    names: tuple[str, ...]  # (D,) header names of the chosen columns


def _parse_number(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _name_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _column_indices(columns, header: list[str], where: str) -> list[int]:
    if isinstance(columns, str):
        items: list = [c.strip() for c in columns.split(",")]
    elif isinstance(columns, int | np.integer) and not isinstance(columns, bool):
        items = [columns]
    elif isinstance(columns, list | tuple):
        items = list(columns)
    else:
        raise ValueError(
            f"{where}: columns must be None, a list of column names or 0-based indices, or a "
            f"comma-separated str such as 'a,b'; got {type(columns).__name__}."
        )
    if not items:
        raise ValueError(f"{where}: columns is empty; name at least one column.")
    available = f"the columns are {_name_list(header)}"
    out: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int | np.integer):
            raise ValueError(
                f"{where}: each column must be a name (str) or a 0-based index (int); got {item!r}."
            )
        if isinstance(item, str):
            matches = [j for j, h in enumerate(header) if h == item]
            if len(matches) > 1:
                raise ValueError(
                    f"{where}: the header names {item!r} {len(matches)} times (columns "
                    f"{', '.join(map(str, matches))}); choose it by 0-based index instead."
                )
            if matches:
                index = matches[0]
            elif item.isdecimal():
                index = int(item)
            else:
                raise ValueError(f"{where}: no column named {item!r}; {available}.")
        else:
            index = int(item)
        if not 0 <= index < len(header):
            raise ValueError(
                f"{where}: column index {index} is out of range; the file has {len(header)} "
                f"columns (indices 0 to {len(header) - 1}): {_name_list(header)}."
            )
        if index in out:
            raise ValueError(f"{where}: column {header[index]!r} is chosen twice.")
        out.append(index)
    return out


def read_csv(path, columns=None) -> CsvColumns:
    """Numeric columns of a CSV file whose first row is a header.

    Fields are comma-separated (the ``csv`` module's default dialect, so quoted
    fields may hold commas); header names and cells are stripped of surrounding
    whitespace; blank lines are skipped. Every chosen cell must be a finite
    number: ``nan``, ``inf`` and empty cells are errors (fill gaps before
    reading, e.g. by interpolation).

    Args:
        path: a str or ``os.PathLike``.
        columns: which columns to read, in this order:

            * None: every column that holds a finite number in every row (a
              column with one text or empty cell is left out);
            * a list or tuple of header names or 0-based int indices;
            * a comma-separated str, ``"a,b"`` (the command line's form); an item
              that is no header name but a decimal integer, ``"0,2"``, is an index.

    Returns:
        :class:`CsvColumns`: ``values`` (T, D) float64, ``names`` (D,) str.

    Raises:
        ValueError: one line naming the file, for: a missing, empty or non-UTF-8
            file; no data rows; a row whose number of fields differs from the
            header's; an unknown column name (lists the available ones); an index
            out of range; a chosen cell that is empty or not a finite number (says
            its row number in the file, the header being row 1, the column name
            and the text); no numeric column when ``columns`` is None.

    Example:
        >>> table = read_csv("weather.csv", columns="temp,pressure")  # doctest: +SKIP
        >>> table.values.shape, table.names  # doctest: +SKIP
        ((365, 2), ('temp', 'pressure'))
    """
    name = _file_name(path, "read_csv")
    text = _read_file(path, "read_csv")
    where = f"read_csv: {name!r}"
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    header_line = 1
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header, header_line = [c.strip() for c in row], reader.line_num
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{where} row {reader.line_num} has {len(row)} fields, but the header "
                    f"(row {header_line}) has {len(header)}; every row needs one field per "
                    "column."
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise ValueError(f"{where} row {reader.line_num} is not valid CSV: {e}.") from None
    if header is None:
        raise ValueError(f"{where} has no header row (only blank lines).")
    if not rows:
        raise ValueError(f"{where} has a header but no data rows.")
    if columns is None:
        chosen = [
            j for j in range(len(header)) if all(_parse_number(r[j]) is not None for r in rows)
        ]
        if not chosen:
            raise ValueError(
                f"{where} has no column that holds a finite number in every row (columns: "
                f"{_name_list(header)}); pass columns= to see which cell is not a number."
            )
    else:
        chosen = _column_indices(columns, header, where)
    values = np.empty((len(rows), len(chosen)), np.float64)
    for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
        for k, j in enumerate(chosen):
            v = _parse_number(row[j])
            if v is None:
                cell = row[j].strip()
                what = "is empty" if not cell else f"{cell!r} is not a finite number"
                raise ValueError(f"{where} row {line}, column {header[j]!r}: {what}.")
            values[i, k] = v
    return CsvColumns(values, tuple(header[j] for j in chosen))
