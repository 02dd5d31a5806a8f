"""The grammar of ``python -m kdtp``: every subcommand, its arguments and their help.

Kept apart from ``cli.py`` (what each command does) so that either reads on one screen.
Errors in arguments are one line and exit with code 2 (``_Parser``).
"""
from __future__ import annotations

import argparse
from pathlib import Path


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
                    help="results file (default: sweep.jsonl in the recipe's checkpoint folder); "
                         "a .csv name writes a tidy table, its full record beside it as .jsonl")
    sw.add_argument("--plan", action="store_true", help="print one self-contained command per cell, train nothing")
    sw.add_argument("--slurm", type=Path, metavar="FILE", help="write a SLURM array script of the cells, train nothing")
    sw.add_argument("--merge", nargs="+", type=Path, metavar="FILE", help="join results files into --out")
    sw.add_argument("--workers", type=int, help="worker processes (default: one per visible GPU; on a CPU, N workers share the cores out)")
    sw.add_argument("--cells-json", help=argparse.SUPPRESS)

    sc = sub.add_parser("student-copy", help="write the students' notebooks (solutions removed)")
    sc.add_argument("dir", type=Path, nargs="?", metavar="DIR",
                    help="where to write them (default: notebooks/student of this checkout)")

    pub = sub.add_parser("publish", help="write manifest entries for the finished checkpoints")
    pub.add_argument("--recipe", choices=list(RECIPES))
    pub.add_argument("--ckpt-dir", type=Path)
    pub.add_argument("--manifest", type=Path, help="default: KDTP_MANIFEST or kdtp/manifest.json")
    pub.add_argument("--id", action="append", metavar="RUN=DRIVE_ID", default=[],
                     help="Drive file id of a run's uploaded checkpoint; RUN-HASH8=DRIVE_ID for "
                          "a run with other settings (the name the listing prints)")
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
