"""Is bf16 autocast faster than fp32 on this CPU? The measurement behind ``kdtp.env.pick_precision``.

One training step (forward, cross-entropy, backward, SGD) of each named network at batch 256,
channels_last, timed with ``torch.utils.benchmark`` in fp32 and under bf16 autocast, on the
threads torch uses here. Prints images per second and the ratio; it trains nothing that is kept.

    python benchmarks/precision_step.py air_large air_small cnn_large cnn_small
"""
import argparse

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from kdtp.env import cpu_class
from kdtp.models import build_model


def step_images_per_second(arch: str, bf16: bool, batch: int, min_run_time: float) -> float:
    """Images per second of one SGD training step of ``arch`` on the CPU."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: oneDNN picks and caches its kernels on the first calls
        step()
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return batch / timer.blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=["air_large", "air_small", "cnn_large", "cnn_small"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--min-run-time", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args()
    print(f"{cpu_class()}, {torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch}")
    for arch in args.archs:
        fp32 = step_images_per_second(arch, False, args.batch, args.min_run_time)
        bf16 = step_images_per_second(arch, True, args.batch, args.min_run_time)
        print(f"{arch:>10}: fp32 {fp32:7.0f} img/s, bf16 {bf16:7.0f} img/s, bf16/fp32 {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
