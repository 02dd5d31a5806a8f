"""``python -m kdtp``: train one run, run the whole lab, benchmark, make data, publish; and the
instructor's three jobs: retarget a fork (``course``), check a runtime (``doctor``), rehearse
the class from the published checkpoints (``rehearse``).

Bad arguments (unknown run or recipe, a malformed ``--set``, a bad environment variable)
print one line on stderr and exit with code 2 before anything is written.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .cli_parser import build_parser
from .env import ConfigError


def _train_settings(args) -> tuple[bool | None, dict]:
    """(smoke, overrides) from ``--smoke``, ``--epochs`` and ``--set`` (checked and typed).

    ``--set smoke=...`` is the same switch as ``--smoke``; ``--set name=...`` is refused
    (pick a recipe with ``--recipe``).
    """
    from .recipes import coerce_overrides, parse_set_args

    overrides = coerce_overrides(parse_set_args(args.set))
    smoke = overrides.pop("smoke", None)
    if args.smoke:
        smoke = True
    if args.epochs:
        overrides.update(epochs=args.epochs, teacher_epochs=args.epochs)
    return smoke, overrides


def _train(args) -> int:
    from .runner import train_or_load

    smoke, overrides = _train_settings(args)
    result = train_or_load(args.name, args.recipe, smoke=smoke, ckpt_dir=args.ckpt_dir,
                           data_dir=args.data_dir, load_only=args.load_only, **overrides)
    tag = "  [SMOKE: synthetic data, not a real result]" if result.smoke else ""
    print(f"{result.name}: test accuracy {result.test_acc:.4f} ({result.source}: {result.path}){tag}")
    return 0


def _sweep(args) -> int:
    from . import sweep
    from .recipes import coerce_overrides, parse_set_args

    if args.merge:
        if args.out is None:
            raise ConfigError("--merge needs --out FILE, the merged results file")
        rows = sweep.merge(args.merge, args.out)
        print(f"{len(rows)} results merged into {args.out}")
        print(sweep.summary(rows))
        return 0
    sets = coerce_overrides(parse_set_args(args.set))
    smoke = True if args.smoke or sets.pop("smoke", False) else None
    if "seed" in sets:
        raise ConfigError("--set seed=...: use --seed-list (the sweep sets each cell's seed)")
    if args.cells_json:
        cells = [sweep.Cell(r, int(s), tuple((k, v) for k, v in kv)) for r, s, kv in json.loads(args.cells_json)]
        plan = None
    else:
        from .runs import get_run

        runs = args.runs or list(sweep.DEFAULT_RUNS)
        for run in runs:
            get_run(run)
        grid = sweep.parse_grid(args.grid)
        sweep.refuse_fixed_and_varied(grid, sets)
        plan = sweep.SweepPlan(runs, sweep.seed_list(args.seeds, args.seed_list), grid)
        cells = plan.cells()
    if plan is not None and (args.plan or args.slurm):
        from .store import run_folder
        from .recipes import get_recipe

        recipe = get_recipe(args.recipe, smoke=smoke, **sets)
        for cell in cells:
            get_recipe(recipe, **cell.overrides)
        from .env import checkpoint_root, data_root

        out = Path(args.out or run_folder(recipe, args.ckpt_dir) / sweep.SWEEP_FILE).expanduser().absolute()
        # every path absolute and named: a scheduler's job starts elsewhere, without this shell's
        # KDTP_* variables
        ckpt_dir = Path(args.ckpt_dir or checkpoint_root()).expanduser().absolute()
        data_dir = Path(args.data_dir or data_root()).expanduser().absolute()
        cmds = sweep.plan_commands(plan, args.recipe or recipe.name, bool(smoke), sets, out, ckpt_dir, data_dir)
        if args.slurm:
            args.slurm.write_text(sweep.slurm_script(cmds, out))
            print(f"SLURM array script for {len(cmds)} cells written to {args.slurm} (sbatch {args.slurm})")
        else:
            print("\n".join(cmds))
            print(f"# then: python -m kdtp sweep --merge {out.with_name(out.stem + '.*' + (out.suffix or '.jsonl'))} "
                  f"--out {out}", file=sys.stderr)
        return 0
    if plan is None:
        from .store import run_folder
        from .recipes import get_recipe

        recipe = get_recipe(args.recipe, smoke=smoke, **sets)
        out = args.out or run_folder(recipe, args.ckpt_dir) / sweep.SWEEP_FILE
        sweep.run_cells(cells, recipe, smoke, sets, out, args.ckpt_dir, args.data_dir)
        return 0
    rows = sweep.run_sweep(plan, args.recipe, smoke, sets, args.out, args.ckpt_dir, args.data_dir,
                           workers=args.workers)
    print(sweep.summary(rows))
    if args.out is not None and sweep.record_path(args.out) != args.out:
        print(f"results: {args.out} (a row per cell), full record {sweep.record_path(args.out)}")
    return 0


def _check_dir_arg(flag: str, path: Path | None, *, must_exist: bool = False,
                   writable: bool = True) -> None:
    """Refuse a folder argument that cannot work, before anything is written.

    A file where a folder is wanted, a folder inside a file, a folder that must exist and
    does not, or one that cannot be created or written to.
    """
    if path is None:
        return
    path = path.expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{flag} {path} is a file, not a folder: give a folder path")
        if writable and not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path} is not writable: pick a folder you can write to")
        return
    if must_exist:
        raise ConfigError(f"{flag} {path} does not exist")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path} is inside {parent}, which is a file: give a folder path")
    if writable and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path} cannot be created ({parent} is not writable)")


def _check_environment() -> None:
    """Every KDTP_* variable is read once here, so a typo fails fast with exit 2."""
    from .published import default_manifest_path
    from .env import _dir_from_env, pick_device, smoke_mode
    from .recipes import default_recipe_name

    smoke_mode()
    for var in ("KDTP_CKPT_DIR", "KDTP_DATA_DIR", "KDTP_FIGURES_DIR"):
        _dir_from_env(var)
    from .env import pick_precision
    from .lock import stale_after

    pick_precision(pick_device())
    stale_after()
    default_recipe_name()
    from .env import load_only_mode

    load_only_mode()
    if os.environ.get("KDTP_MANIFEST", "").strip() and default_manifest_path().is_dir():
        raise ConfigError(f"KDTP_MANIFEST={os.environ['KDTP_MANIFEST']!r} is a folder: point it at "
                          "the manifest JSON file")


def _check_args(args) -> None:
    for attr, flag, kw in (("ckpt_dir", "--ckpt-dir", {}), ("data_dir", "--data-dir", {}),
                           ("out", "--out", {}), ("synthetic", "--synthetic", {}),
                           ("dir", "DIR", {})):
        if attr == "out" and args.command == "sweep":
            continue
        if getattr(args, attr, None) is not None:
            _check_dir_arg(flag, getattr(args, attr), **kw)
    if args.command == "sweep":
        for flag, path in (("--out", args.out), ("--slurm", args.slurm)):
            if path is not None:
                if path.expanduser().is_dir():
                    raise ConfigError(f"{flag} {path} is a folder: give the path of a file")
                _check_dir_arg(flag, path.expanduser().absolute().parent)
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers {args.workers}: give 1 or more")
    if args.command == "publish":
        if args.ckpt_dir is not None:
            _check_dir_arg("--ckpt-dir", args.ckpt_dir, must_exist=True, writable=False)
        if args.manifest is not None and args.manifest.expanduser().is_dir():
            raise ConfigError(f"--manifest {args.manifest} is a folder: give the path of a JSON file")
        if args.smoke and args.manifest is None:
            raise ConfigError("publish --smoke needs --manifest FILE: smoke entries go into a rehearsal "
                              "manifest, never the kit's")
    if args.command in ("doctor", "rehearse"):
        if args.manifest is not None and args.manifest.expanduser().is_dir():
            raise ConfigError(f"--manifest {args.manifest} is a folder: give the path of a JSON file")
    if args.command == "rehearse" and args.mirror is not None:
        _check_dir_arg("--mirror", args.mirror, must_exist=True, writable=False)
    if args.command == "train":
        from .recipes import get_recipe

        smoke, overrides = _train_settings(args)
        get_recipe(args.recipe, smoke=smoke, **overrides)


def main(argv: list[str] | None = None) -> int:
    from .store import CheckpointError
    from .data import DataNotFoundError
    from .models import WeightsUnavailableError

    args = build_parser().parse_args(argv)
    try:
        _check_environment()
        _check_args(args)
        if args.command == "train":
            return _train(args)
        if args.command == "data":
            from .data import write_synthetic_cifar10

            folder = write_synthetic_cifar10(args.synthetic, n_train=max(args.train, 50), n_test=max(args.test, 10))
            print(f"synthetic CIFAR-10 written to {folder} (not real data; for smoke runs and tests)")
            return 0
        if args.command == "lab":
            from .lab import run_lab

            return run_lab(smoke=True if args.smoke else None, recipe=args.recipe, out_dir=args.out,
                           core_only=args.core)
        if args.command == "bench":
            from .bench import main as bench_main

            return bench_main(steps=args.steps, batch=args.batch, data_dir=args.data_dir, as_json=args.json)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "student-copy":
            from .env import project_root
            from .student_copy import STUDENT_DIR, write_student_copies

            src = project_root() / "notebooks"
            dest = args.dir if args.dir is not None else src / STUDENT_DIR
            written = write_student_copies(src, dest)
            for path in written:
                print(f"student version: {path}")
            print(f"{len(written)} notebook(s) with exercises written to {dest} (solutions replaced by "
                  "TODOs, outputs cleared); the others are the same for students and instructors")
            return 0
        if args.command == "publish":
            from .publish import publish

            if args.sweep is not None:
                from .sweep_publish import publish_sweep

                return publish_sweep(args.sweep, args.manifest)
            return publish(recipe=args.recipe, ckpt_dir=args.ckpt_dir, manifest=args.manifest, ids=args.id,
                           smoke=args.smoke)
        if args.command == "course":
            from .fork import main as course_main

            return course_main(args.repo, args.branch)
        if args.command == "doctor":
            from .doctor import main as doctor_main

            return doctor_main(args.recipe, True if args.smoke else None, args.offline, args.manifest)
        if args.command == "rehearse":
            from .rehearse import rehearse

            return rehearse(args.notebooks, smoke=True if args.smoke else None, recipe=args.recipe,
                            manifest=args.manifest, mirror=args.mirror, out=args.out, keep=args.keep,
                            core_only=args.core)
    except ConfigError as exc:
        print(f"python -m kdtp: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except CheckpointError as exc:   # a file problem, not a typo: say what and what next
        print(f"python -m kdtp: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (DataNotFoundError, WeightsUnavailableError) as exc:   # offline, nothing cached
        print(f"python -m kdtp: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished epochs are saved; run the same command again to resume.",
              file=sys.stderr)
        return 130
    return 2


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
