"""Several seeds (and any grid of settings) for chosen runs: the numbers a class can trust.

``python -m kdtp sweep`` is train-or-load over cells (run x seed x grid point): a cell that
is already trained loads in seconds, an interrupted one resumes, so the command can simply
be run again. Every cell adds one tidy row (full configuration, device, accuracies) to one
JSON-lines file; ``kdtp.stats`` turns those rows into means, standard deviations and paired
KD gains.

Devices: the cells run in this process on the CPU or the one GPU; with several GPUs visible,
one worker process per GPU takes every n-th cell. Beyond one machine the kit does not
schedule: ``--plan`` prints one self-contained command per cell (or ``--slurm FILE`` writes
an array script), each writing its own results file, and ``--merge`` joins the files.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .env import ConfigError

DEFAULT_RUNS = ("student_pretrained_baseline", "student_pretrained_kd_logits")
SWEEP_FILE = "sweep.jsonl"


@dataclass(frozen=True)
class Cell:
    """One training of the sweep: a run, a student seed and one point of the grid."""
    run: str
    seed: int
    settings: tuple[tuple[str, object], ...] = ()

    @property
    def overrides(self) -> dict:
        return {**dict(self.settings), "seed": self.seed}

    def label(self) -> str:
        grid = " ".join(f"{k}={v}" for k, v in self.settings)
        return f"{self.run} seed={self.seed}" + (f" {grid}" if grid else "")


@dataclass
class SweepPlan:
    runs: list[str]
    seeds: list[int]
    grid: dict[str, list] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        keys = list(self.grid)
        points = list(itertools.product(*(self.grid[k] for k in keys))) or [()]
        return [Cell(run, seed, tuple(zip(keys, point)))
                for point in points for seed in self.seeds for run in self.runs]


def parse_grid(pairs: list[str] | None) -> dict[str, list]:
    """``["temperature=2,4,8", "alpha=0.5"]`` -> ``{"temperature": [2.0, 4.0, 8.0], "alpha": [0.5]}``.

    Values are checked and typed by the recipe's own rules, so a typo fails before any training.
    """
    from .recipes import coerce_overrides

    grid: dict[str, list] = {}
    for pair in pairs or []:
        key, sep, values = pair.partition("=")
        key = key.strip()
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not items:
            raise ConfigError(f"--grid expects key=v1,v2,..., got {pair!r} (e.g. --grid temperature=2,4,8)")
        if key in ("seed", "name", "smoke"):
            raise ConfigError(f"--grid {key}: use --seeds/--seed-list for seeds and --recipe/--smoke for the rest")
        grid[key] = [coerce_overrides({key: v})[key] for v in items]
    return grid


def seed_list(seeds: int | None = None, listed: str | None = None) -> list[int]:
    if listed:
        try:
            out = [int(s) for s in listed.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seed-list expects whole numbers separated by commas, got {listed!r}") from None
        if not out or len(set(out)) != len(out):
            raise ConfigError(f"--seed-list {listed!r}: give distinct seeds, e.g. 0,1,2")
        return out
    return list(range(seeds if seeds is not None else 3))


def row_for(cell: Cell, result, seconds: float) -> dict:
    """One tidy row: what was trained (full configuration), where, and what it scored."""
    from .env import pick_precision

    device = next(result.model.parameters()).device
    name = device.type
    if device.type == "cuda":
        import torch
        name = torch.cuda.get_device_name(device)
    return {"run": cell.run, "seed": cell.seed, **{f"set_{k}": v for k, v in cell.settings},
            "recipe": result.recipe.name, "test_acc": result.test_acc, "val_acc": result.val_acc,
            "n_test": result.config.get("data_sizes", {}).get("test"),
            "smoke": result.smoke, "source": result.source, "config_hash": result.config_hash,
            "config": result.config, "device": name, "precision": pick_precision(device),
            "host": os.uname().nodename, "seconds": round(seconds, 1),
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


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


def cell_command(cell: Cell, recipe: str | None, smoke: bool, sets: dict, out: Path,
                 ckpt_dir: Path | None, data_dir: Path | None) -> str:
    """A self-contained shell command training one cell and writing its row to ``out``."""
    parts = ["python", "-m", "kdtp", "sweep", cell.run, "--seed-list", str(cell.seed), "--out", str(out)]
    if recipe:
        parts += ["--recipe", recipe]
    if smoke:
        parts.append("--smoke")
    for k, v in cell.settings:
        parts += ["--grid", f"{k}={v}"]
    for k, v in sets.items():
        parts += ["--set", f"{k}={v}"]
    if ckpt_dir:
        parts += ["--ckpt-dir", str(ckpt_dir)]
    if data_dir:
        parts += ["--data-dir", str(data_dir)]
    return shlex.join(parts)


def plan_commands(plan: SweepPlan, recipe, smoke, sets, out: Path, ckpt_dir, data_dir) -> list[str]:
    """One command per cell; each writes ``<out stem>.<i>.jsonl`` beside ``out`` (merge them)."""
    cmds = []
    for i, cell in enumerate(plan.cells()):
        part = out.with_name(f"{out.stem}.{i:03d}{out.suffix or '.jsonl'}")
        cmds.append(cell_command(cell, recipe, smoke, sets, part, ckpt_dir, data_dir))
    return cmds


def slurm_script(cmds: list[str], out: Path) -> str:
    """A SLURM array script running command ``$SLURM_ARRAY_TASK_ID`` of ``cmds`` (one GPU each)."""
    body = "\n".join(f"  {i}) {c} ;;" for i, c in enumerate(cmds))
    merge_cmd = shlex.join(["python", "-m", "kdtp", "sweep", "--merge",
                            str(out.with_name(f"{out.stem}.*{out.suffix or '.jsonl'}")), "--out", str(out)])
    return ("#!/bin/bash\n"
            f"#SBATCH --array=0-{len(cmds) - 1}\n#SBATCH --gres=gpu:1\n#SBATCH --job-name=kdtp-sweep\n"
            "# one cell of the kdtp sweep per array task; when all are done, merge with:\n"
            f"#   {merge_cmd}\n"
            f"case \"$SLURM_ARRAY_TASK_ID\" in\n{body}\nesac\n")


def run_cells(cells: list[Cell], recipe, smoke, sets: dict, out: Path, ckpt_dir=None, data_dir=None,
              device=None, verbose: bool = True, progress: bool = True) -> list[dict]:
    """Train-or-load every cell in this process, appending one row per cell to ``out``."""
    from .runner import train_or_load

    rows = []
    for i, cell in enumerate(cells, 1):
        if verbose:
            print(f"[sweep {i}/{len(cells)}] {cell.label()}", flush=True)
        start = time.perf_counter()
        result = train_or_load(cell.run, recipe, smoke=smoke, ckpt_dir=ckpt_dir, data_dir=data_dir,
                               device=device, verbose=verbose, progress=progress,
                               **{**sets, **cell.overrides})
        row = row_for(cell, result, time.perf_counter() - start)
        append_row(out, row)
        rows.append(row)
        if verbose:
            tag = "  [SMOKE: not a real result]" if row["smoke"] else ""
            print(f"[sweep {i}/{len(cells)}] {cell.label()}: test {row['test_acc']:.4f} ({row['source']}){tag}",
                  flush=True)
    return rows


def train_seeds(runs: list[str], recipe, seeds: list[int], out: Path | None = None, *, ckpt_dir=None,
                data_dir=None, verbose: bool = False, progress: bool = True) -> dict[int, dict]:
    """Train-or-load each of ``runs`` at each seed, in this process: ``{seed: {run: RunResult}}``.

    What a notebook calls to put several seeds behind one comparison (06: the labels-only
    and the KD student at seeds 0, 1, 2). Each (run, seed) is a sweep cell: its row lands
    in the recipe's sweep file like one of ``python -m kdtp sweep``'s, so the instructor's
    sweep and the lab's seeds are one record (a run already there is not written again). In load-only mode (the instructor's demo,
    ``kdtp rehearse``) a seed that is neither trained here nor published is left out,
    and said so, instead of failing the notebook: only the seeds that exist are compared.
    """
    from .env import load_only_mode
    from .recipes import get_recipe
    from .runner import run_folder, train_or_load
    from .store import CheckpointError

    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"train_seeds: give distinct seeds, e.g. [0, 1, 2] (got {seeds!r})")
    resolved = get_recipe(recipe)
    out = Path(out) if out is not None else run_folder(resolved, ckpt_dir) / SWEEP_FILE
    known = {(r["run"], r["config_hash"]) for r in read_rows(out)} if out.is_file() else set()
    found: dict[int, dict] = {}
    for seed in seeds:
        pair = {}
        for run in runs:
            start = time.perf_counter()
            try:
                result = train_or_load(run, resolved, ckpt_dir=ckpt_dir, data_dir=data_dir, verbose=verbose,
                                       progress=progress, seed=seed)
            except CheckpointError as exc:
                if not load_only_mode():
                    raise
                print(f"seed {seed} left out: {run} is neither trained here nor published ({str(exc)[:160]})")
                pair = None
                break
            pair[run] = result
            if (run, result.config_hash) not in known:
                append_row(out, row_for(Cell(run, seed), result, time.perf_counter() - start))
                known.add((run, result.config_hash))
        if pair is not None:
            found[seed] = pair
    return found


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


def _gpu_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_sweep(plan: SweepPlan, recipe=None, smoke=None, sets: dict | None = None, out: Path | None = None,
              ckpt_dir=None, data_dir=None, workers: int | None = None, verbose: bool = True,
              progress: bool = True) -> list[dict]:
    """Every cell of ``plan``; several GPUs: one worker process each (teachers trained first)."""
    from .runner import run_folder, train_or_load
    from .recipes import get_recipe
    from .runs import TEACHER, get_run

    sets = dict(sets or {})
    for run in plan.runs:
        get_run(run)
    resolved = get_recipe(recipe, smoke=smoke, **sets)
    for point in plan.cells():
        get_recipe(resolved, **point.overrides)      # every cell's settings valid before any training
    out = Path(out) if out is not None else run_folder(resolved, ckpt_dir) / SWEEP_FILE
    cells = plan.cells()
    n_workers = workers if workers is not None else _gpu_count()
    if n_workers <= 1:
        return run_cells(cells, resolved, smoke, sets, out, ckpt_dir, data_dir, verbose=verbose, progress=progress)

    # Several GPUs. The teachers first, here (one per grid point): workers must not race to
    # train the same teacher. Then worker k takes cells k, k+n, ... on GPU k.
    if any(get_run(c.run).needs_teacher for c in cells):
        for settings in sorted({c.settings for c in cells}, key=str):
            train_or_load(TEACHER, resolved, smoke=smoke, ckpt_dir=ckpt_dir, data_dir=data_dir,
                          verbose=verbose, progress=progress, **{**sets, **dict(settings)})
    procs = []
    for k in range(n_workers):
        part = out.with_name(f"{out.stem}.gpu{k}{out.suffix or '.jsonl'}")
        mine = cells[k::n_workers]
        if not mine:
            continue
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(k)}
        args = [sys.executable, "-m", "kdtp", "sweep", "--workers", "1", "--out", str(part),
                "--cells-json", json.dumps([[c.run, c.seed, list(map(list, c.settings))] for c in mine])]
        args += ["--recipe", resolved.name] if not smoke else ["--recipe", resolved.name, "--smoke"]
        for key, v in sets.items():
            args += ["--set", f"{key}={v}"]
        if ckpt_dir:
            args += ["--ckpt-dir", str(ckpt_dir)]
        if data_dir:
            args += ["--data-dir", str(data_dir)]
        procs.append((k, part, subprocess.Popen(args, env=env)))
    failed = [k for k, _, p in procs if p.wait() != 0]
    rows = merge(([out] if out.is_file() else []) + [part for _, part, _ in procs if part.is_file()], out)
    if failed:
        raise RuntimeError(f"sweep workers on GPU(s) {failed} failed; run the same command again: "
                           "finished cells load, unfinished ones resume")
    return rows


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


# ----------------------------------------------------------------------------- publishing
PUBLISHED_FIELDS = ("run", "seed", "recipe", "test_acc", "val_acc", "n_test", "config_hash", "device",
                    "precision", "time")


def publish_sweep(path: Path | str, manifest: Path | str | None = None) -> int:
    """Put a sweep's results (a few kB) into the manifest, beside the published checkpoints.

    Students' notebooks then draw their own run among the instructor's seeds without any
    download. Smoke rows are refused: they are never presented as results.
    """
    from .published import MANIFEST_FORMAT, CheckpointError, default_manifest_path, load_manifest
    from .store import atomic_write

    rows = read_rows(path)
    if not rows:
        raise ConfigError(f"sweep results file {path} holds no results: run python -m kdtp sweep first")
    smoke = [r for r in rows if r.get("smoke")]
    if smoke:
        raise ConfigError(f"{path} holds {len(smoke)} smoke result(s) (synthetic data, not real results): "
                          "only a real sweep is published; nothing written")
    manifest_path = Path(manifest).expanduser() if manifest is not None else default_manifest_path()
    try:
        current = load_manifest(manifest_path)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    sweeps = dict(current.get("sweeps") or {})
    by_recipe: dict[str, list] = {}
    for row in rows:
        keep = {k: row.get(k) for k in PUBLISHED_FIELDS}
        keep.update({k: v for k, v in row.items() if k.startswith("set_")})
        by_recipe.setdefault(row.get("recipe") or "?", []).append(keep)
    sweeps.update(by_recipe)
    merged = {**current, "format": MANIFEST_FORMAT, "sweeps": sweeps}
    text = json.dumps(merged, indent=2, sort_keys=True) + "\n"
    atomic_write(manifest_path, lambda fh: fh.write(text.encode()))
    for recipe, published in by_recipe.items():
        print(f"published {len(published)} sweep results of recipe {recipe} into {manifest_path}")
    print("next: commit the manifest (or give students its path as KDTP_MANIFEST); 06_comparison "
          "then draws each student's run among these seeds.")
    return 0


def published_rows(recipe: str, manifest: Path | str | dict | None = None) -> list[dict]:
    """The instructor's published sweep of ``recipe`` (empty when none was published).

    A broken manifest never stops a notebook: it is reported by train_or_load already.
    """
    from .published import CheckpointError, load_manifest

    try:
        data = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    except CheckpointError:
        return []
    rows = (data.get("sweeps") or {}).get(recipe) or []
    return [dict(r, smoke=False) for r in rows if isinstance(r, dict) and "run" in r and "test_acc" in r]
