"""``python -m kdtp``: train one run, run the whole lab, benchmark, make data, publish; and the
instructor's three jobs: retarget a fork (``course``), check a runtime (``doctor``), rehearse
the class from the published checkpoints (``rehearse``).

Bad arguments (unknown run or recipe, a malformed ``--set``, a bad environment variable)
print one line on stderr and exit with code 2 before anything is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .env import ConfigError


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (and still exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .recipes import RECIPES
    from .runs import REGISTRY as RUNS

    p = _Parser(prog="python -m kdtp", description="Knowledge Distillation course kit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train (or load) one run and print its test accuracy")
    t.add_argument("name", choices=list(RUNS), metavar="NAME", help=f"one of: {', '.join(RUNS)}")
    t.add_argument("--recipe", choices=list(RECIPES), help="default: fast with a GPU, cpu otherwise")
    t.add_argument("--smoke", action="store_true", help="synthetic data, tiny run (as KDTP_SMOKE=1)")
    t.add_argument("--epochs", type=_positive_int, help="epochs for this run (and its teacher)")
    t.add_argument("--ckpt-dir", type=Path, help="checkpoint folder (default KDTP_CKPT_DIR or ./checkpoints)")
    t.add_argument("--data-dir", type=Path, help="data folder (default KDTP_DATA_DIR or ./data)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="any recipe setting")
    t.add_argument("--load-only", action="store_true", help="fail instead of training")

    lab = sub.add_parser("lab", help="run every notebook in order, headless (the whole course)")
    lab.add_argument("--smoke", action="store_true")
    lab.add_argument("--core", action="store_true", help="the core lab only (00-06), not 07 onwards")
    lab.add_argument("--recipe", choices=list(RECIPES))
    lab.add_argument("--out", type=Path, help="folder for the executed notebooks (default ./lab-output)")

    b = sub.add_parser("bench", help="distillation step speed: kdtp loop vs a seed-style loop")
    b.add_argument("--steps", type=_positive_int, default=20)
    b.add_argument("--batch", type=_positive_int, default=128)
    b.add_argument("--data-dir", type=Path, help="real CIFAR-10 folder (default: synthetic)")
    b.add_argument("--json", action="store_true", help="last line: one JSON object")

    d = sub.add_parser("data", help="write the synthetic CIFAR-10 (real on-disk format)")
    d.add_argument("--synthetic", type=Path, required=True, metavar="DIR")
    d.add_argument("--train", type=_positive_int, default=10_000)
    d.add_argument("--test", type=_positive_int, default=2_000)

    sw = sub.add_parser("sweep", help="train-or-load runs over several seeds and a grid of settings")
    sw.add_argument("runs", nargs="*", metavar="RUN",
                    help="runs to sweep (default: student_pretrained_baseline student_pretrained_kd_logits)")
    sw.add_argument("--recipe", choices=list(RECIPES))
    sw.add_argument("--smoke", action="store_true")
    sw.add_argument("--seeds", type=_positive_int, help="seeds 0..N-1 (default 3)")
    sw.add_argument("--seed-list", metavar="S1,S2,...", help="these student seeds instead of 0..N-1")
    sw.add_argument("--grid", action="append", metavar="KEY=V1,V2,...", default=[],
                    help="a setting to vary (repeat for a product grid)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="a fixed recipe setting")
    sw.add_argument("--ckpt-dir", type=Path)
    sw.add_argument("--data-dir", type=Path)
    sw.add_argument("--out", type=Path, metavar="FILE",
                    help="results file (default: sweep.jsonl in the recipe's checkpoint folder)")
    sw.add_argument("--plan", action="store_true", help="print one self-contained command per cell, train nothing")
    sw.add_argument("--slurm", type=Path, metavar="FILE", help="write a SLURM array script of the cells, train nothing")
    sw.add_argument("--merge", nargs="+", type=Path, metavar="FILE", help="join results files into --out")
    sw.add_argument("--workers", type=int, help="worker processes (default: one per visible GPU)")
    sw.add_argument("--cells-json", help=argparse.SUPPRESS)

    sc = sub.add_parser("student-copy", help="write the students' notebooks (solutions removed)")
    sc.add_argument("dir", type=Path, nargs="?", metavar="DIR",
                    help="where to write them (default: notebooks/student of this checkout)")

    pub = sub.add_parser("publish", help="write manifest entries for the finished checkpoints")
    pub.add_argument("--recipe", choices=list(RECIPES))
    pub.add_argument("--ckpt-dir", type=Path)
    pub.add_argument("--manifest", type=Path, help="default: KDTP_MANIFEST or kdtp/manifest.json")
    pub.add_argument("--id", action="append", metavar="RUN=DRIVE_ID", default=[],
                     help="Drive file id of a run's uploaded checkpoint")
    pub.add_argument("--sweep", type=Path, metavar="FILE",
                     help="publish a sweep's results file (python -m kdtp sweep) into the manifest")
    pub.add_argument("--smoke", action="store_true",
                     help="publish the smoke checkpoints into a rehearsal manifest (needs --manifest)")

    co = sub.add_parser("course", help="point every badge and install line at your fork; alone: check them")
    co.add_argument("--repo", metavar="OWNER/NAME", help="the course's GitHub repository (your fork)")
    co.add_argument("--branch", metavar="B", help="the branch students use (default: keep the current one)")

    doc = sub.add_parser("doctor", help="check this runtime: device, folders, data, weights, what downloads")
    doc.add_argument("--recipe", choices=list(RECIPES))
    doc.add_argument("--smoke", action="store_true")
    doc.add_argument("--offline", action="store_true", help="skip the network probes")
    doc.add_argument("--manifest", type=Path, help="default: KDTP_MANIFEST or kdtp/manifest.json")

    reh = sub.add_parser("rehearse", help="run the student notebooks from the published manifest; nothing trains")
    reh.add_argument("notebooks", nargs="*", type=Path, metavar="NOTEBOOK",
                     help="default: every numbered notebook, the student version where there is one")
    reh.add_argument("--smoke", action="store_true")
    reh.add_argument("--core", action="store_true", help="the core lab only (00-06)")
    reh.add_argument("--recipe", choices=list(RECIPES))
    reh.add_argument("--manifest", type=Path, help="default: KDTP_MANIFEST or kdtp/manifest.json")
    reh.add_argument("--mirror", type=Path, metavar="DIR",
                     help="copy the published files from DIR (the folder publish read) instead of Drive")
    reh.add_argument("--out", type=Path, help="the rehearsal's folder (default: a new temporary one)")
    reh.add_argument("--keep", action="store_true", help="keep the downloaded checkpoints")
    return p


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
        plan = sweep.SweepPlan(runs, sweep.seed_list(args.seeds, args.seed_list), sweep.parse_grid(args.grid))
        cells = plan.cells()
    if plan is not None and (args.plan or args.slurm):
        from .store import run_folder
        from .recipes import get_recipe

        recipe = get_recipe(args.recipe, smoke=smoke, **sets)
        for cell in cells:
            get_recipe(recipe, **cell.overrides)
        out = args.out or run_folder(recipe, args.ckpt_dir) / sweep.SWEEP_FILE
        cmds = sweep.plan_commands(plan, args.recipe or recipe.name, bool(smoke), sets, out,
                                   args.ckpt_dir, args.data_dir)
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
                from .sweep import publish_sweep

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
