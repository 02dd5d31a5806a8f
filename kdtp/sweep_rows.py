"""The sweep's results file: one JSON line per trained cell, and what is read from it.

Writing is append-only and fsync'd (a crash loses at most the line being written, which
``read_rows`` skips); reading keeps one row per (run, configuration); ``seed_rows`` picks the
rows that are *the same experiment* at another seed; ``summary`` is the text a class reads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .env import ConfigError

SWEEP_FILE = "sweep.jsonl"


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_rows(*paths: Path | str) -> list[dict]:
    """Rows of one or several sweep files, one per (run, configuration): the last one wins.

    A torn last line (a crash while writing) is skipped; a missing file is an error that
    names it.
    """
    out: dict[tuple, dict] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep results file {path} does not exist")
        for raw in path.read_text().splitlines():
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if isinstance(row, dict) and "run" in row and "config_hash" in row:
                out[(row["run"], row["config_hash"])] = row
    return list(out.values())


def merge(paths: list[Path], out: Path) -> list[dict]:
    """Join the files of several machines into one (deduplicated), written atomically."""
    from .store import atomic_write

    rows = read_rows(*paths)
    text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
    atomic_write(out, lambda fh: fh.write(text.encode()))
    return rows


# ----------------------------------------------------------------------------- seeds of one experiment
_SEED_FREE = ("seed", "teacher_config")


def _same_but_seed(config: Mapping, other: Mapping) -> bool:
    return ({k: v for k, v in config.items() if k not in _SEED_FREE}
            == {k: v for k, v in other.items() if k not in _SEED_FREE})


def seed_rows(results: Mapping[str, Any], sweep_rows: Sequence[Mapping[str, Any]] = ()) -> dict[str, list[dict]]:
    """Per run of ``results``: its accuracy as ``kdtp.stats`` rows, its own seed and every
    other seed a sweep trained of *the same experiment*.

    A sweep row counts when its configuration equals the result's in everything but the
    seed and the teacher, and its teacher is the same one: the result's teacher itself, or,
    for a teacher that is a student trained at that same seed (born-again generations learn
    from the previous generation of their own seed), that teacher's accepted row at the seed.
    Anything else (another grid point, another teacher seed) is another experiment, left out.
    """
    hashes: dict[str, dict] = {}     # run -> {seed: config hash of the accepted run at that seed}
    out: dict[str, list[dict]] = {}

    def accept(name: str) -> dict:
        if name in hashes:
            return hashes[name]
        result = results[name]
        own_seed = result.config.get("seed")
        n_test = (result.config.get("data_sizes") or {}).get("test")
        hashes[name] = {own_seed: result.config_hash}
        rows = {own_seed: {"run": name, "seed": own_seed, "test_acc": result.test_acc, "n_test": n_test,
                           "smoke": result.smoke}}
        from .runs import get_run

        teachers = [t for t in get_run(name).teachers if t in results]
        seeded_teacher = teachers[0] if len(teachers) == 1 and get_run(teachers[0]).role == "student" else None
        for r in sweep_rows:
            config = r.get("config")
            if (r.get("run") != name or not isinstance(config, Mapping) or r.get("seed") == own_seed
                    or bool(r.get("smoke")) != result.smoke or not _same_but_seed(config, result.config)):
                continue
            teacher = config.get("teacher_config")
            same_teacher = teacher == result.config.get("teacher_config") if seeded_teacher is None else \
                teacher is not None and accept(seeded_teacher).get(r.get("seed")) == teacher
            if same_teacher:
                hashes[name][r["seed"]] = r.get("config_hash")
                rows[r["seed"]] = {"run": name, "seed": r["seed"], "test_acc": float(r["test_acc"]),
                                   "n_test": r.get("n_test"), "smoke": bool(r.get("smoke"))}
        out[name] = list(rows.values())
        return hashes[name]

    for name in results:
        accept(name)
    return {name: out[name] for name in results}


def summary(rows: list[dict], baseline: str = "student_pretrained_baseline") -> str:
    """Mean ± std per run and setting, and every distilled run's paired gain over the baseline."""
    from . import stats

    if not rows:
        return "(no sweep results)"
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        settings = tuple(sorted((k, v) for k, v in row.items() if k.startswith("set_")))
        groups.setdefault((bool(row.get("smoke")), settings), []).append(row)
    lines = []
    for (smoke, settings), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        head = " ".join(f"{k[4:]}={v}" for k, v in settings) or "recipe settings"
        lines.append(f"== {head}" + ("   [SMOKE: synthetic data, not real results]" if smoke else ""))
        for entry in stats.table(group):
            spread = (f"± {100 * entry['std']:.2f} (std, {entry['n_seeds']} seeds)" if entry["std"] is not None
                      else f"± {100 * entry['se']:.2f} (binomial SE, 1 seed)")
            lines.append(f"  {entry['run']:34} {100 * entry['mean']:6.2f} {spread}")
        names = {r["run"] for r in group}
        if baseline in names:
            for other in sorted(names - {baseline}):
                lines.append("  " + stats.describe_gain(baseline, other, stats.compare_runs(group, baseline, other)))
    return "\n".join(lines)
