"""What a finished run gives back (``RunResult``), and the results file of each run folder.

The results file: JSON lines, one object per finished training: run, recipe, data source, smoke flag,
metrics, config hash, time. Appending (never rewriting) means a crash can cost at most
the line being written; the comparison reads the latest line per run.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .recipes import Recipe

RESULTS_FILE = "results.jsonl"


@dataclass
class RunResult:
    """A finished run: the model (eval mode, on the device) and what is known about it."""
    name: str
    model: nn.Module
    config: dict
    history: dict
    metrics: dict
    path: Path
    source: str            # "loaded", "downloaded", "trained" or "resumed"
    recipe: Recipe
    teacher: "RunResult | None" = field(default=None, repr=False)   # the first it learnt from
    config_hash: str = ""
    teachers: "list[RunResult]" = field(default_factory=list, repr=False)

    @property
    def test_acc(self) -> float:
        return float(self.metrics["test_acc"])

    @property
    def val_acc(self) -> float:
        return float(self.metrics["val_acc"])

    @property
    def smoke(self) -> bool:
        return bool(self.config.get("smoke")) or self.config.get("data") != "cifar10"

    @property
    def label(self) -> str:
        return f"{self.name}{' (smoke)' if self.smoke else ''}"

    @property
    def title(self) -> str:
        """What the run is in its recipe (architecture, initialisation, method), from the truth."""
        from .runs import describe, get_run

        return describe(get_run(self.name), self.recipe) + (" (smoke)" if self.smoke else "")



def record(folder: Path | str, run: str, config: dict, metrics: dict, config_hash: str) -> Path:
    path = Path(folder) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    smoke = bool(config.get("smoke")) or config.get("data") != "cifar10"
    line = {"run": run, "recipe": config.get("recipe"), "data": config.get("data"), "smoke": smoke,
            "config_hash": config_hash, "seed": config.get("seed"),
            "n_test": (config.get("data_sizes") or {}).get("test"), "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **{k: v for k, v in metrics.items()}}
    with open(path, "a") as fh:
        fh.write(json.dumps(line, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def load_results(folder: Path | str) -> list[dict]:
    """Every recorded line (a torn last line from a crash is skipped)."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        return []
    rows = []
    for raw in path.read_text().splitlines():
        try:
            rows.append(json.loads(raw))
        except ValueError:
            continue
    return rows


def latest_by_run(rows: list[dict], seeds: set[int] | None = None) -> dict[str, dict]:
    """The latest row of each run; with ``seeds``, the latest row with one of those seeds first.

    06 and sweeps add rows of other seeds to the same file; a table of "the lab's runs" must not
    mix seed 2 of one run with seed 0 of the next, so it asks for the recipe's own seeds and falls
    back to the latest row only for a run that has none of them.
    """
    out: dict[str, dict] = {}
    for row in rows:
        if seeds is None or row["run"] not in out or row.get("seed") in seeds \
                or out[row["run"]].get("seed") not in seeds:
            out[row["run"]] = row
    return out


def format_table(rows: list[dict]) -> str:
    """A plain-text table: run, test accuracy, parameters, training time; smoke rows flagged."""
    if not rows:
        return "(no results yet)"
    header = f"{'run':34} {'test acc':>8} {'± SE':>7} {'params':>11} {'train s':>8}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        note = "SMOKE (synthetic data, not a real result)" if r.get("smoke") else r.get("recipe", "")
        acc, n = r.get("test_acc", float("nan")), r.get("n_test")
        # one run on one test set: its binomial standard error (kdtp.stats), when n is known
        se = f"{(acc * (1 - acc) / n) ** 0.5:7.4f}" if n and 0 <= acc <= 1 else f"{'?':>7}"
        lines.append(f"{r['run']:34} {acc:8.4f} {se} {r.get('params', 0):11,d} "
                     f"{r.get('train_seconds', 0.0):8.1f}  {note}")
    return "\n".join(lines)
