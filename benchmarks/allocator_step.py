"""Does keeping freed memory (``kdtp.cpu_memory``) speed up a CPU training step here?

One training step of each named network at the kit's batch of 1024, channels_last, at the
precision the kit picks on this CPU (or ``--precision``), timed with ``torch.utils.benchmark``
in two fresh processes: glibc's defaults (``KDTP_KEEP_FREED_MEMORY=0``) and the kit's setting.
A process cannot undo the setting, hence one process per measurement. Trains nothing kept.

    python benchmarks/allocator_step.py air_large air_small air_w4
"""
import argparse
import os
import subprocess
import sys


def child(arch: str, precision: str, batch: int, min_run_time: float) -> None:
    """Print the images per second of one step in this process (the parent reads the last line)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from precision_step import step_images_per_second

    from kdtp.cpu_memory import keep_freed_memory
    keep_freed_memory()   # a no-op under KDTP_KEEP_FREED_MEMORY=0
    print(step_images_per_second(arch, precision == "bf16", batch, min_run_time))


def measure(arch: str, precision: str, batch: int, min_run_time: float, keep: bool) -> float:
    env = {**os.environ, "KDTP_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run([sys.executable, __file__, "--child", arch, "--precision", precision,
                          "--batch", str(batch), "--min-run-time", str(min_run_time)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=["air_large", "air_small", "air_w4"])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--min-run-time", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.archs[0], args.precision, args.batch, args.min_run_time)
        return

    import torch

    from kdtp.env import cpu_class, pick_precision
    precision = pick_precision(torch.device("cpu")) if args.precision == "auto" else args.precision
    print(f"{cpu_class()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"batch {args.batch}, {precision}")
    for arch in args.archs:
        default = measure(arch, precision, args.batch, args.min_run_time, keep=False)
        kept = measure(arch, precision, args.batch, args.min_run_time, keep=True)
        print(f"{arch:>10}: glibc default {default:7.0f} img/s, freed memory kept {kept:7.0f} img/s, "
              f"{kept / default:.2f}x")


if __name__ == "__main__":
    main()
