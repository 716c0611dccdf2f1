"""Dataset files read into rows: `.jsonl`, `.json`, `.csv` and `.parquet`, each problem a one-line error naming
the file, the line or row, and how to fix it."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headattr.errors import HeadattrError

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Row:
    """A raw row read from a file, with where it came from (for error messages)."""

    index: int
    data: dict[str, Any]
    where: str


def read_rows(path: Path) -> list[Row]:
    """Read the raw rows of `path`, choosing the reader by the file extension."""
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise HeadattrError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; use one of: {', '.join(EXTENSIONS)}"
        )
    if not path.exists():
        raise HeadattrError(f"{path}: data file not found; check the path")
    if path.is_dir():
        raise HeadattrError(f"{path}: is a directory; give the path of a data file")
    try:
        return readers[suffix](path)
    except OSError as exc:
        raise HeadattrError(f"{path}: cannot read the file ({exc.strerror or exc}); check its permissions") from exc
    except UnicodeDecodeError as exc:
        raise HeadattrError(f"{path}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from exc


def _object_row(index: int, value: Any, where: str) -> Row:
    """Check that a parsed row is a JSON object and wrap it."""
    if not isinstance(value, dict):
        raise HeadattrError(f"{where}: a row must be a JSON object, got a {type(value).__name__}")
    return Row(index, value, where)


def _read_jsonl(path: Path) -> list[Row]:
    """One JSON object per line; blank lines are skipped and are not rows."""
    rows: list[Row] = []
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_number} (row {len(rows)})"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HeadattrError(
                    f"{path} line {line_number}: not valid JSON ({exc.msg}); each line must hold one JSON object"
                ) from exc
            rows.append(_object_row(len(rows), value, where))
    return rows


def _read_json(path: Path) -> list[Row]:
    """A JSON list of objects, or an object whose single value is that list (e.g. `{"data": [...]}`)."""
    with path.open(encoding="utf-8-sig") as handle:
        try:
            value = json.load(handle)
        except json.JSONDecodeError as exc:
            raise HeadattrError(
                f"{path} line {exc.lineno}: not valid JSON ({exc.msg}); fix the file or convert it to .jsonl"
            ) from exc
    if isinstance(value, dict):
        lists = [item for item in value.values() if isinstance(item, list)]
        if len(value) != 1 or len(lists) != 1:
            raise HeadattrError(
                f"{path}: a .json dataset must be a list of objects or an object with a single list "
                f'value such as {{"data": [...]}}; this object has keys {", ".join(map(repr, value))}'
            )
        value = lists[0]
    if not isinstance(value, list):
        raise HeadattrError(f"{path}: a .json dataset must be a list of objects, got a {type(value).__name__}")
    return [_object_row(index, item, f"{path} row {index}") for index, item in enumerate(value)]


def _read_csv(path: Path) -> list[Row]:
    """A CSV file with a header line; every value is a string.

    Entirely empty lines are skipped by `csv`. The line named in messages is the row's last line (the
    same as its first unless a quoted cell spans lines).
    """
    rows: list[Row] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for data in reader:
                where = f"{path} line {reader.line_num} (row {len(rows)})"
                if None in data or None in data.values():
                    raise HeadattrError(
                        f"{where}: the row has a different number of cells than the header "
                        f"({len(reader.fieldnames or [])} columns); fix the row"
                    )
                rows.append(Row(len(rows), dict(data), where))
        except csv.Error as exc:
            raise HeadattrError(f"{path} line {reader.line_num}: not valid CSV ({exc}); fix the file") from exc
    return rows


def _read_parquet(path: Path) -> list[Row]:
    """A Parquet table; each row becomes a dict of Python values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise HeadattrError(f"{path}: not a readable Parquet file ({exc}); check the file") from exc
    return [Row(index, data, f"{path} row {index}") for index, data in enumerate(table.to_pylist())]
