"""Estimate (not a measurement) of the ``fast`` recipe's core-lab time on a T4.

The lab's cost is counted, not guessed: forward and training-step FLOPs per image come
from ``torch.utils.flop_counter`` (``benchmarks/flops.py``), multiplied by the images each
run pushes through each network (training steps, the frozen teacher's forward for the
distilling students, validation every epoch and the final test, both with flip TTA when
the recipe asks). Only the divisor is an assumption: the FLOP/s a Colab T4 sustains on
these kernels in fp16 autocast with channels_last (``--tflops``, default 6; see
benchmarks/RESULTS.md for where that figure comes from).

    python benchmarks/estimate_t4.py                       # the fast recipe as it is
    python benchmarks/estimate_t4.py --set image_size=32 --set cifar_stem=1 --set epochs=8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import gflops  # noqa: E402

from kdtp.recipes import get_recipe, parse_set_args  # noqa: E402
from kdtp.runs import RUNS  # noqa: E402

TRAIN, VAL, TEST = 45_000, 5_000, 10_000


def lab_flops(recipe) -> list[tuple[str, float]]:
    """(run, TFLOPs) for the six core runs of ``recipe``."""
    px, stem = recipe.image_size, recipe.cifar_stem
    t_fwd, t_train = gflops(recipe.teacher_arch, px, stem), gflops(recipe.teacher_arch, px, stem, True)
    s_fwd, s_train = gflops(recipe.student_arch, px, stem), gflops(recipe.student_arch, px, stem, True)
    tta = 2 if recipe.tta_flip else 1
    rows = []
    for spec in RUNS.values():
        teacher = spec.role == "teacher"
        epochs = recipe.teacher_epochs if teacher else recipe.epochs
        fwd, train = (t_fwd, t_train) if teacher else (s_fwd, s_train)
        per_image = train + (t_fwd if spec.needs_teacher else 0.0)
        steps = TRAIN // recipe.batch_size * recipe.batch_size
        total = epochs * (steps * per_image + VAL * tta * fwd) + TEST * tta * fwd
        rows.append((spec.name, total / 1e3))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="fast")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--tflops", type=float, default=6.0, help="sustained T4 fp16 TFLOP/s assumed")
    p.add_argument("--overhead-s", type=float, default=120.0,
                   help="set-up per lab: data and ImageNet weights download, cuDNN autotune, checkpoint writes")
    args = p.parse_args(argv)
    recipe = get_recipe(args.recipe, smoke=False, **parse_set_args(args.set))
    rows = lab_flops(recipe)
    print(f"ESTIMATE, not measured | recipe {recipe.name}: {recipe.image_size} px, "
          f"{'CIFAR' if recipe.cifar_stem else 'ImageNet'} stem, batch {recipe.batch_size}, "
          f"teacher {recipe.teacher_epochs} / students {recipe.epochs} epochs, "
          f"{args.tflops:g} TFLOP/s sustained")
    total_s = 0.0
    for name, tflop in rows:
        seconds = tflop / args.tflops
        total_s += seconds
        print(f"  {name:32s} {tflop:8.0f} TFLOP  {seconds / 60:6.1f} min")
    total_s += args.overhead_s
    print(f"  {'set-up overhead':32s} {'':8s}       {args.overhead_s / 60:6.1f} min")
    print(f"  {'core lab':32s} {sum(r[1] for r in rows):8.0f} TFLOP  {total_s / 60:6.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
