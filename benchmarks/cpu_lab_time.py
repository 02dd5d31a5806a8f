"""Measured step times -> projected core-lab time of a recipe on this machine.

Each of the six runs is timed for a few training steps through the real code path
(``runs.build_network`` / ``build_strategy`` / ``loaders`` / ``train.fit``) on synthetic
images (speed does not depend on pixel values), plus one validation pass, and the lab
time is projected as ``epochs * (steps_per_epoch * step_time + val_time) + test_time``.
This separates the machine's speed from what other processes on a shared machine do to
a 30-minute wall-clock run; the real run's wall time is reported next to it in
benchmarks/RESULTS.md. A run that trains exactly what an earlier one trained (a "scratch"
run where the recipe has no ImageNet weights) costs nothing: ``train_or_load`` reuses it.

    python benchmarks/cpu_lab_time.py [--recipe cpu] [--steps 15]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from kdtp.bench import TimedLoader
from kdtp.batches import DeviceLoader
from kdtp.data import load_cifar10, write_synthetic_cifar10
from kdtp.env import pick_device, pick_precision
from kdtp.recipes import get_recipe
from kdtp.runs import RUNS, TEACHER, build_network, build_strategy, trains_the_same
from kdtp.train import evaluate, fit, make_optimizer, make_scheduler, norm_bias_groups

TRAIN, VAL, TEST = 45_000, 5_000, 10_000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="cpu")
    p.add_argument("--steps", type=int, default=15)
    args = p.parse_args(argv)
    recipe = get_recipe(args.recipe, smoke=False, pretrained=False)
    device = pick_device()
    precision = pick_precision(device)
    n = (args.steps + 2) * recipe.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_cifar10(tmp, n_train=max(5_000, int(n / 0.9) + 100), n_test=1_000)
        data = load_cifar10(tmp, download=False)
    load0 = os.getloadavg()[0]
    print(f"recipe {recipe.name}, {device.type} {precision}, batch {recipe.batch_size}, "
          f"{args.steps} timed steps per run, load {load0:.2f}")
    teacher = build_network(RUNS[TEACHER], recipe, device).eval()
    total = 0.0
    steps_per_epoch = TRAIN // recipe.batch_size
    timed: list = []
    for spec in RUNS.values():
        twin = next((t for t in timed if trains_the_same(t, spec, recipe)), None)
        if twin is not None:
            print(f"  {spec.name:32s} the same training as {twin.name}: reused, 0 min")
            continue
        timed.append(spec)
        model = build_network(spec, recipe, device)
        strategy = build_strategy(spec, recipe, model, teacher if spec.needs_teacher else None)
        train = TimedLoader(data.train_x[:n], data.train_y[:n], recipe.batch_size, train=True,
                            device=device, image_size=recipe.image_size, augmentation=recipe.augmentation)
        train.warmup = 2
        val = DeviceLoader(data.val_x[:500], data.val_y[:500], 500, train=False, device=device,
                           image_size=recipe.image_size)
        groups = norm_bias_groups(strategy, recipe.lr, recipe.weight_decay, recipe.norm_bias_lr_scale)
        opt = make_optimizer(groups, recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum,
                             lookahead_model=model if recipe.lookahead else None, total_steps=len(train))
        sched = make_scheduler(opt, recipe.schedule, max(len(train), 10), recipe.warmup_fraction)
        fit(strategy, train, val, optimizer=opt, scheduler=sched, epochs=1, precision=precision,
            progress=False)
        step = (train.ended - train.started) / args.steps
        t0 = time.perf_counter()
        evaluate(model, val, precision, recipe.tta_flip)
        per_eval_image = (time.perf_counter() - t0) / 500
        epochs = recipe.teacher_epochs if spec.role == "teacher" else recipe.epochs
        seconds = epochs * (steps_per_epoch * step + VAL * per_eval_image) + TEST * per_eval_image
        total += seconds
        print(f"  {spec.name:32s} {step * 1000:7.0f} ms/step {recipe.batch_size / step:7.0f} img/s "
              f"-> {epochs} epochs {seconds / 60:5.1f} min")
    print(f"  projected core lab: {total / 60:.1f} min (load before {load0:.2f}, after "
          f"{os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
