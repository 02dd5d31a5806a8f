"""FLOPs of the networks the recipes train, counted with torch.utils.flop_counter.

Counted on the ``meta`` device (shapes only, no arithmetic), so it runs in seconds on any
machine. ``python benchmarks/flops.py`` prints forward GFLOPs per image for each
architecture and input size, and the training-step cost (forward + backward, counted).
FLOPs here are torch's convention: one multiply-add = 2 FLOPs.
"""
from __future__ import annotations

import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdtp.models import build_model


def gflops(arch: str, image_size: int, cifar_stem: bool, train: bool = False) -> float:
    """GFLOPs per image of one forward (or forward + backward when ``train``)."""
    with torch.device("meta"):
        model = build_model(arch, cifar_stem=cifar_stem)
        x = torch.empty(2, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        if train:
            out.sum().backward()
    return counter.get_total_flops() / 2 / 1e9


def main(argv: list[str]) -> int:
    rows = [("resnet50", 32, True), ("resnet18", 32, True), ("resnet50", 32, False),
            ("resnet18", 32, False), ("resnet50", 64, False), ("resnet18", 64, False),
            ("resnet50", 96, False), ("resnet18", 96, False), ("resnet50", 128, False),
            ("resnet18", 128, False), ("resnet50", 224, False), ("resnet18", 224, False),
            ("cnn_large", 32, False), ("cnn_small", 32, False), ("cnn_tiny", 32, False)]
    print(f"{'arch':10s} {'px':>4s} {'stem':6s} {'fwd GFLOPs':>11s} {'train GFLOPs':>13s} {'params':>11s}")
    for arch, px, stem in rows:
        params = sum(p.numel() for p in build_model(arch, cifar_stem=stem).parameters())
        print(f"{arch:10s} {px:4d} {'cifar' if stem else 'inet':6s} {gflops(arch, px, stem):11.3f} "
              f"{gflops(arch, px, stem, train=True):13.3f} {params:11,d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
