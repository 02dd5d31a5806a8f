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

The results file (``kdtp.sweep_rows``) and its publishing (``kdtp.sweep_publish``) are their
own modules; this one plans and runs cells.
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

from .env import ConfigError
# the results file and what is read from it, and publishing it, live in their own modules;
# their names are kdtp.sweep's too, as the notebooks call them
from .sweep_publish import PUBLISHED_FIELDS, publish_sweep, published_rows  # noqa: F401
from .sweep_csv import record_path
from .sweep_rows import SWEEP_FILE, append_row, merge, read_rows, seed_rows, summary  # noqa: F401

DEFAULT_RUNS = ("student_pretrained_baseline", "student_pretrained_kd_logits")


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
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice: list every value once, e.g. "
                              f"--grid {key}={','.join(str(v) for v in grid[key])},{','.join(items)}")
        values = [coerce_overrides({key: v})[key] for v in items]
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {pair!r} repeats a value: each value is one column of the grid, "
                              "give it once")
        grid[key] = values
    return grid


def refuse_fixed_and_varied(grid: dict, sets: dict) -> None:
    """A setting both fixed and varied would silently take the grid's values: refuse it."""
    both = sorted(set(grid) & set(sets))
    if both:
        raise ConfigError(f"{', '.join(both)} is both fixed (--set) and varied (--grid): "
                          "drop the --set to vary it, or the --grid to fix it")


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
    known = {(r["run"], r["config_hash"]) for r in read_rows(out)} if record_path(out).is_file() else set()
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


def time_forecast(reference, n_runs: int, device) -> str:
    """What ``n_runs`` more trainings like ``reference`` (a finished ``RunResult``, e.g. 02's
    student) would take on ``device``, from its own measured time: a student with a clock
    decides before the cell starts (``SEEDS = [0]`` skips them). Said only when the run was
    trained here (same kind of device and precision); runs that exist load in seconds."""
    import torch

    from .env import pick_precision

    device = torch.device(device)
    seconds = reference.metrics.get("train_seconds")
    here = (device.type, pick_precision(device))
    there = (str(reference.metrics.get("device")), reference.metrics.get("precision"))
    if n_runs <= 0:
        return "no extra training: every seed asked for is the lab's own"
    if not seconds or here != there or reference.source == "downloaded":
        return (f"{n_runs} more trainings unless they exist (no time estimate: {reference.name} was not "
                "trained on this machine's kind of device and precision)")
    minutes = n_runs * float(seconds) / 60
    return (f"{n_runs} more trainings unless they exist: about {minutes:.0f} min here "
            f"({reference.name} took {float(seconds):.0f} s on this {here[0]}, {here[1]}); "
            "set SEEDS = [0] to skip them")


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
    refuse_fixed_and_varied(plan.grid, sets)
    for run in plan.runs:
        get_run(run)
    resolved = get_recipe(recipe, smoke=smoke, **sets)
    for point in plan.cells():
        get_recipe(resolved, **point.overrides)      # every cell's settings valid before any training
    out = Path(out) if out is not None else run_folder(resolved, ckpt_dir) / SWEEP_FILE
    cells = plan.cells()
    gpus = _gpu_count()
    if workers is not None and gpus and workers > gpus:
        raise ConfigError(f"--workers {workers}: this machine has {gpus} GPU(s), one worker each; a worker "
                          f"beyond them would train on the CPU. Give --workers {gpus} or leave it out")
    n_workers = workers if workers is not None else gpus
    if n_workers <= 1:
        return run_cells(cells, resolved, smoke, sets, out, ckpt_dir, data_dir, verbose=verbose, progress=progress)
    # no GPU and several workers asked for (a many-core CPU): the cores are shared out, since
    # n processes that each use every core only get in each other's way
    threads = str(max(1, (os.cpu_count() or 1) // n_workers)) if not gpus else None
    if threads and verbose:
        print(f"[sweep] {n_workers} CPU workers, {threads} thread(s) each", flush=True)

    # Several workers. The teachers first, here (one per grid point): workers must not race to
    # train the same teacher. Then worker k takes cells k, k+n, ... on GPU k (or the CPU).
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
        if threads:
            env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
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
    rows = merge(([out] if record_path(out).is_file() else [])
                 + [part for _, part, _ in procs if record_path(part).is_file()], out)
    if failed:
        raise RuntimeError(f"sweep workers on GPU(s) {failed} failed; run the same command again: "
                           "finished cells load, unfinished ones resume")
    return rows
