"""Results: a journal appended one row per finished point, and the table made from it.

The journal (``STEM.jsonl`` beside the results file) gets each row as soon as its point
finishes, flushed and fsynced, so a sweep killed at any moment keeps every finished point; a
row cut short by the kill is dropped when the journal is next opened. The results file
(``.parquet`` via pyarrow, or ``.csv``) is written atomically from the journal: one row per
setting, its shards merged into one accuracy with a 95 % Wilson interval.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

from isa.files import write_atomic

from .errors import SweepError

Z95 = 1.959963984540054


def journal_path(results: str) -> str:
    return os.path.splitext(results)[0] + ".jsonl"


def read_rows(path: str) -> list[dict]:
    """The complete rows of a journal, in order, read only: a last line without its
    newline (cut short by a kill) is not a row; any other line that is not one is a
    SweepError naming it."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")[:-1]  # what follows the last newline is cut short
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise SweepError(f"{path}:{number}: not a results row; remove the file to start "
                             "the sweep over") from None
    return rows


def read_journal(path: str) -> dict[str, dict]:
    """``read_rows`` by point key."""
    return {row["key"]: row for row in read_rows(path)}


class Journal:
    """The rows recorded so far (``rows``, by point key) and an ``append`` that persists one
    before returning. Opening it drops a last row cut short by a kill from the file, so the
    next append starts on a line of its own."""

    def __init__(self, path: str):
        self.path = path
        self.rows = read_journal(path)
        if os.path.exists(path):
            with open(path, "r+b") as f:
                end = f.seek(0, os.SEEK_END)
                if end and (f.seek(end - 1), f.read(1))[1] != b"\n":  # torn: rare
                    f.seek(0)
                    f.truncate(f.read().rfind(b"\n") + 1)
        self.file = open(path, "a", encoding="utf-8")

    def append(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.rows[row["key"]] = row

    def close(self) -> None:
        self.file.close()


def wilson(correct: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion ``correct / n``."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 / (1 + Z95 ** 2 / n) * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)  # 1 - 1e-16 at p = 1 is 1


def merge(rows: list[dict], columns: list[str], metrics: list[str],
          shards: dict[str, int]) -> list[dict]:
    """One row per setting (``setting`` key) from its shard rows, in first-seen order: the
    setting's columns, samples, correct, accuracy with its interval, the timing metrics
    (from shard 0), the seconds spent, and ``error`` (the first shard's that failed).
    ``shards``: each setting's shard count; a setting missing some (an interrupted sweep)
    is ``incomplete``, with no accuracy."""
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["setting"], []).append(row)
    merged = []
    for parts in by.values():
        first = min(parts, key=lambda r: r["shard"])
        out = {c: first.get(c) for c in columns}
        failed = [r for r in parts if r["status"] != "ok"]
        missing = len(parts) < shards.get(first["setting"], len(parts))
        out["status"] = "error" if failed else "incomplete" if missing else "ok"
        out["error"] = failed[0]["error"] if failed else None
        out["shards"] = len(parts)
        if "accuracy" in metrics:
            n = sum(r.get("samples") or 0 for r in parts)
            correct = sum(r.get("correct") or 0 for r in parts)
            ok = not failed and not missing and n > 0
            low, high = wilson(correct, n) if ok else (None, None)
            out.update(samples=n if ok else None, correct=correct if ok else None,
                       accuracy=correct / n if ok else None, accuracy_low=low,
                       accuracy_high=high)
        for m in metrics:
            if m != "accuracy":
                out[m] = first.get(m)
        out["crossbars"] = first.get("crossbars")
        out["seconds"] = sum(r.get("seconds") or 0.0 for r in parts)
        merged.append(out)
    return merged


def write_table(path: str, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` (.parquet or .csv) atomically."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    if path.endswith(".parquet"):
        pa, pq = require_arrow()
        schema = _schema(pa, rows, columns)
        text = {f.name for f in schema if f.type == pa.string()}
        rows = [{k: str(v) if k in text and v is not None else v for k, v in r.items()}
                for r in rows]
        table = pa.Table.from_pylist(rows, schema=schema)
        write_atomic(path, lambda tmp: pq.write_table(table, tmp))
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(buffer.getvalue())
    write_atomic(path, write)


def _schema(pa, rows: list[dict], columns: list[str]):
    """A column of ints and floats is float64, of mixed kinds a string (a grid may mix
    numbers and names, as ``basis = [4, "auto"]``)."""
    fields = []
    for c in columns:
        kinds = {type(r.get(c)) for r in rows} - {type(None)}
        if kinds <= {bool}:
            kind = pa.bool_()
        elif kinds <= {int}:
            kind = pa.int64()
        elif kinds <= {int, float}:
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(c, kind))
    return pa.schema(fields)


def read_table(path: str) -> list[dict]:
    """The rows of a results file (.parquet, .csv or the .jsonl journal)."""
    if not os.path.isfile(path):
        raise SweepError(f"{path}: no such file")
    if path.endswith(".parquet"):
        _, pq = require_arrow()
        return pq.read_table(path).to_pylist()
    if path.endswith(".jsonl"):
        return read_rows(path)
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    raise SweepError(f"{path}: expected a .parquet, .csv or .jsonl results file")


def _number(text: str):
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def require_arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SweepError("Parquet results need pyarrow: pip install 'cimstack[sweep]', or "
                         "name a .csv results file") from None
    return pa, pq
