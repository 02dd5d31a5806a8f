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
    """Append ``row`` to the record; for a ``.csv`` path, to its ``.jsonl`` record, then
    rewrite the table from it (``kdtp.sweep_csv``)."""
    from . import sweep_csv

    record = sweep_csv.record_path(path)
    record.parent.mkdir(parents=True, exist_ok=True)
    with open(record, "a") as fh:
        fh.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    if sweep_csv.is_csv(path):
        sweep_csv.write_csv(read_rows(record), path)


def read_rows(*paths: Path | str) -> list[dict]:
    """Rows of one or several sweep files, one per (run, configuration): the last one wins.

    A torn last line (a crash while writing) is skipped; a missing file is an error that
    names it.
    """
    from .sweep_csv import is_csv, record_path

    out: dict[tuple, dict] = {}
    for path in paths:
        path = Path(path)
        if is_csv(path):                       # a table is read through its full record
            if not record_path(path).is_file():
                raise ConfigError(f"{path} is a sweep table; its full record {record_path(path)} (written "
                                  "beside it by the sweep) is missing: give the .jsonl file")
            path = record_path(path)
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


def expand_paths(paths: Sequence[Path | str]) -> list[Path]:
    """``paths`` with any glob pattern (``sweep.*.jsonl``) expanded here, so a pattern the
    shell left quoted (a SLURM script, a plan's merge line) still names the files."""
    import glob

    out = []
    for path in paths:
        text = str(path)
        if any(ch in text for ch in "*?["):
            found = sorted(glob.glob(os.path.expanduser(text)))
            if not found:
                raise ConfigError(f"no results file matches {text}: have the sweep's cells run yet?")
            out += [Path(p) for p in found]
        else:
            out.append(Path(path))
    return out


def merge(paths: list[Path], out: Path) -> list[dict]:
    """Join the files of several machines into one (deduplicated), written atomically."""
    from .store import atomic_write
    from .sweep_csv import is_csv, record_path, write_csv

    rows = read_rows(*expand_paths(paths))
    text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
    atomic_write(record_path(out), lambda fh: fh.write(text.encode()))
    if is_csv(out):
        write_csv(rows, out)
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


def _seeded_links(run: str) -> tuple[str, ...]:
    """The config keys of ``run`` that name a run trained at the student's own seed (a
    born-again teacher, the student a pruned run starts from): they differ from seed to
    seed within one experiment."""
    from .runs import get_run

    try:
        spec = get_run(run)
    except Exception:          # a run this kit does not declare: compare every key
        return ()
    links = []
    if spec.teachers and any(get_run(t).role == "student" for t in spec.teachers):
        links.append("teacher_config")
    if spec.init_from:
        links.append("init_config")
    return tuple(links)


def _experiment_config(run: str, config: Mapping[str, Any] | None) -> dict:
    """``config`` without what changes from seed to seed within one experiment."""
    ignored = ("seed",) + _seeded_links(run)
    return {k: v for k, v in (config or {}).items() if k not in ignored}


def experiment_id(run: str, config: Mapping[str, Any] | None) -> str | None:
    """A short digest of ``config`` without the seed (and the seeded links): the same for
    every seed of one experiment, different as soon as any setting, the data or a
    teacher differs. ``None`` for a row without its configuration."""
    import hashlib

    if not config:
        return None
    kept = _experiment_config(run, config)
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_experiments(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Rows whose run was trained in several configurations (beyond the seed) renamed
    ``run [key=value, ...]`` by what differs, so that seeds of different experiments (two
    sweeps with different ``--set`` appended to one file, or merged) are never averaged as
    if they were seeds of one."""
    by_run: dict[str, list[Mapping]] = {}
    for row in rows:
        by_run.setdefault(str(row.get("run")), []).append(row)
    out = []
    for run, group in by_run.items():
        configs = [_experiment_config(run, r.get("config")) for r in group]
        known = [c for c in configs if c]      # a row without its configuration is left as it is
        keys = sorted({k for c in known for k in c})
        differing = [k for k in keys
                     if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in known}) > 1]
        for row, config in zip(group, configs):
            if differing and config:
                label = ", ".join(f"{k}={config.get(k)}" for k in differing)
                row = {**row, "run": f"{run} [{label}]"}
            out.append(dict(row))
    return out


def summary(rows: list[dict], baseline: str = "student_pretrained_baseline") -> str:
    """Mean ± std per run and setting, and every distilled run's paired gain over the baseline.

    A run found in several configurations in one setting is shown once per configuration
    (``split_experiments``); a gain is computed only against a baseline of one configuration."""
    from . import stats

    if not rows:
        return "(no sweep results)"
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        settings = tuple(sorted((k, v) for k, v in row.items() if k.startswith("set_")))
        groups.setdefault((bool(row.get("smoke")), settings), []).append(row)
    lines = []
    for (smoke, settings), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        group = split_experiments(group)
        head = " ".join(f"{k[4:]}={v}" for k, v in settings) or "recipe settings"
        lines.append(f"== {head}" + ("   [SMOKE: synthetic data, not real results]" if smoke else ""))
        for entry in stats.table(group):
            spread = (f"± {100 * entry['std']:.2f} (std, {entry['n_seeds']} seeds)" if entry["std"] is not None
                      else f"± {100 * entry['se']:.2f} (binomial SE, 1 seed)" if entry["se"] is not None
                      else "(1 seed, test-set size not recorded: no standard error)")
            lines.append(f"  {entry['run']:34} {100 * entry['mean']:6.2f} {spread}")
        names = {r["run"] for r in group}
        if baseline in names:
            for other in sorted(names - {baseline}):
                try:
                    lines.append("  " + stats.describe_gain(baseline, other,
                                                            stats.compare_runs(group, baseline, other)))
                except ValueError as exc:      # rows that cannot be compared say why, the rest still print
                    lines.append(f"  {other} vs {baseline}: no gain computed ({exc})")
        elif any(name.startswith(baseline + " [") for name in names):
            lines.append(f"  (no gain computed: {baseline} was trained in several configurations here)")
    return "\n".join(lines)
