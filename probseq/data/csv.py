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


# The largest magnitude a cell may hold: float32's (probseq's models compute in
# float32), which also keeps the squares and sums of standardization finite in float64.
MAX_ABS_VALUE = float(np.finfo(np.float32).max)


class CsvColumns(NamedTuple):
    """Numeric columns of a CSV file, one row per time step, and what was left out."""

    values: np.ndarray  # (T, D) float64
    names: tuple[str, ...]  # (D,) header names of the chosen columns
    # (name, reason) of each column left out when columns were chosen automatically
    left_out: tuple[tuple[str, str], ...] = ()

    @property
    def notice(self) -> str:
        """One line for a terminal: the columns used and why any others were left out."""
        used = f"using column{'s' if len(self.names) != 1 else ''} {_name_list(self.names)}"
        if not self.left_out:
            return used
        why = "; ".join(f"{name!r} ({reason})" for name, reason in self.left_out)
        return f"{used}; left out {why}"


def _parse_number(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _cell_problem(cell: str) -> str:
    """Why a cell is not a usable number (for a cell that :func:`_parse_number` refused)."""
    text = cell.strip()
    return "is empty" if not text else f"{text!r} is not a finite number"


def _name_list(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def parse_columns(text: str) -> list[str]:
    """The one reader of a comma-separated column list (``probseq --columns`` and
    ``read_csv(columns="a,b")``): the stripped items, all kept as names (str).

    A digit string stays a str: :func:`read_csv` takes it as a column name when the
    header has one of that name (pandas' ``to_csv`` writes ``,0,1``), else as a
    0-based index. Empty items are dropped.

    Example:
        >>> parse_columns(" flow, 0 ,")
        ['flow', '0']
    """
    return [c.strip() for c in str(text).split(",") if c.strip()]


def _column_indices(columns, header: list[str], where: str) -> list[int]:
    if isinstance(columns, str):
        items: list = parse_columns(columns)
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
    whitespace. Blank lines before the first and after the last data row, and
    between rows of a file with two or more columns, are skipped; in a one-column
    file a blank line between data rows is an empty cell. Every chosen cell must
    be a finite number of magnitude at most :data:`MAX_ABS_VALUE` (float32's
    largest, about 3.4e38): ``nan``, ``inf``, empty cells and larger numbers are
    errors (fill gaps before reading, e.g. by interpolation). No column is ever
    dropped silently.

    Args:
        path: a str or ``os.PathLike``.
        columns: which columns to read, in this order:

            * None: every column that holds numbers. A column that holds no number
              at all (dates, labels) is left out, and ``left_out`` says so and why;
              a column that holds numbers in some rows and an empty, ``nan``, text
              or too large cell in another is an error naming that cell;
            * a list or tuple of header names or 0-based int indices;
            * a comma-separated str, ``"a,b"`` (the command line's form); an item
              that is no header name but a decimal integer, ``"0,2"``, is an index.

    Returns:
        :class:`CsvColumns`: ``values`` (T, D) float64, ``names`` (D,) str, and
        ``left_out``, the (name, reason) of each column that ``columns=None`` left
        out; ``notice`` is that as one line for a terminal.

    Raises:
        ValueError: one line naming the file, for: a missing, empty or non-UTF-8
            file; no data rows; a row whose number of fields differs from the
            header's; an unknown column name (lists the available ones); an index
            out of range; a chosen (or, with ``columns=None``, a numeric) column
            whose cell is empty, not a finite number or too large (says its row
            number in the file, the header being row 1, the column name and the
            text); no numeric column when ``columns`` is None.

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
    blank: int | None = None  # the first blank line since the last data row
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                if rows and blank is None:
                    blank = reader.line_num
                continue
            if header is None:
                header, header_line = [c.strip() for c in row], reader.line_num
                continue
            if len(header) == 1 and blank is not None:
                raise ValueError(
                    f"{where} row {blank}, column {header[0]!r}: is empty (a blank line "
                    "between the rows of a one-column file is a missing value); fill the "
                    "gap, e.g. by interpolation."
                )
            blank = None
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
    left_out: list[tuple[str, str]] = []
    if columns is None:
        chosen = []
        for j in range(len(header)):
            parsed = [_parse_number(r[j]) for r in rows]
            if all(v is None for v in parsed):
                filled = [k for k, r in enumerate(rows) if r[j].strip()]
                reason = "every cell is empty"
                if filled:
                    k = filled[0]
                    reason = f"holds no number: row {lines[k]} is {rows[k][j].strip()!r}"
                left_out.append((header[j], reason))
            else:
                chosen.append(j)
        if not chosen:
            raise ValueError(
                f"{where} has no column that holds numbers (columns: {_name_list(header)}); "
                "pass columns= to see which cell is not a number."
            )
    else:
        chosen = _column_indices(columns, header, where)
    values = np.empty((len(rows), len(chosen)), np.float64)
    for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
        for k, j in enumerate(chosen):
            v = _parse_number(row[j])
            if v is None:
                hint = ""
                if columns is None:
                    hint = (
                        "; the column holds numbers in other rows, so it is not left out: "
                        "fill the gap (e.g. by interpolation) or choose columns with columns="
                    )
                raise ValueError(
                    f"{where} row {line}, column {header[j]!r}: {_cell_problem(row[j])}{hint}."
                )
            if abs(v) > MAX_ABS_VALUE:
                raise ValueError(
                    f"{where} row {line}, column {header[j]!r}: {row[j].strip()!r} is too "
                    f"large; cells must lie within +-{MAX_ABS_VALUE:.4g} (float32's range, "
                    "which probseq computes in): rescale the column, e.g. change its units."
                )
            values[i, k] = v
    return CsvColumns(values, tuple(header[j] for j in chosen), tuple(left_out))
