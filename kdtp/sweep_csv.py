"""The sweep's results as a tidy CSV: one row per trained cell, one column per variable.

What an instructor opens in a spreadsheet or ``pandas.read_csv``. The JSON-lines file stays
the record (append-only, fsync'd, a torn last line skipped, nested configurations kept):
``--out results.csv`` keeps it beside the table as ``results.jsonl`` and rewrites the table
from it, all-or-nothing, after every cell, so the two never disagree.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

# the columns a reader looks for first, then the grid's ``set_*``, then the rest, then config.*
FIRST = ("run", "seed", "recipe", "test_acc", "val_acc", "n_test", "smoke", "source", "device",
         "precision", "seconds", "host", "time", "config_hash")


def is_csv(path: Path | str) -> bool:
    return Path(path).suffix.lower() == ".csv"


def record_path(path: Path | str) -> Path:
    """The JSON-lines record behind ``path``: itself, or ``x.jsonl`` for a table ``x.csv``."""
    path = Path(path)
    return path.with_suffix(".jsonl") if is_csv(path) else path


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else value


def flat(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with its configuration spread into ``config.<key>`` columns."""
    out = {k: _cell(v) for k, v in row.items() if k != "config"}
    out.update({f"config.{k}": _cell(v) for k, v in (row.get("config") or {}).items()})
    return out


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path | str) -> Path:
    """Write ``rows`` as a tidy CSV at ``path`` (atomically: a reader never sees half a table)."""
    from .store import atomic_write

    flats = [flat(r) for r in rows]
    keys = {k for f in flats for k in f}
    columns = [k for k in FIRST if k in keys]
    columns += sorted(k for k in keys if k.startswith("set_"))
    columns += sorted(k for k in keys if k not in columns and not k.startswith("config."))
    columns += sorted(k for k in keys if k.startswith("config."))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(flats)
    return atomic_write(path, lambda fh: fh.write(text.getvalue().encode()))
