"""Measured, never computed from formulas: file size, non-zero weights, latency, throughput.

- **size on disk**: the state dict written with ``torch.save`` to a real file, its bytes
  counted; the same file gzipped too, since zeros (pruning) only pay on disk once compressed;
- **non-zero parameters**: weights and biases that are not exactly 0 (int8 ones counted on
  their integers);
- **latency at batch 1**: on one CPU thread (what an embedded device or one request on a
  busy server gets, and immune to a neighbour busy on the other core); **throughput**: images
  per second at a large batch with all of PyTorch's threads. Both timed with
  ``kdtp.latency.measure`` (warm-up first, then the median), on the CPU, with float32 inputs.
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from .. import latency
from ..plot_style import KD_COLOR, STUDENT_COLOR, TEACHER_COLOR, finish, is_smoke
from .quantize import is_int8_module

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextlib.contextmanager
def threads(n: int):
    """PyTorch's intra-op threads set to ``n`` for the block, restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def size_on_disk(model: nn.Module) -> dict[str, float]:
    """``{"size_mb", "gzip_mb"}`` of ``model``'s state dict saved with ``torch.save``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(model.state_dict(), path)
        raw = path.read_bytes()
    return {"size_mb": len(raw) / 1e6, "gzip_mb": len(gzip.compress(raw, compresslevel=6)) / 1e6}


def nonzero_parameters(model: nn.Module) -> int:
    """Weights and biases that are not exactly 0, float or int8.

    A float network's are its parameters (a ``LowRankConv2d`` counts its two factors, not
    their product). An int8 convolution or linear layer keeps its weight packed, outside
    ``parameters()``: it is read through ``weight()`` and ``bias()``.
    """
    def nonzero(t: torch.Tensor | None) -> int:
        return 0 if t is None else int((t.dequantize() if t.is_quantized else t).ne(0).sum())

    packed = sum(nonzero(m.weight()) + nonzero(m.bias()) for m in model.modules()
                 if is_int8_module(m) and callable(getattr(m, "weight", None)))
    return packed + sum(nonzero(p) for p in model.parameters())


def speed(model: nn.Module, image_size: int, throughput_batch: int, *, quick: bool = False) -> dict[str, float]:
    """``{"latency_ms", "throughput"}`` of a CPU copy of ``model`` (float32 inputs).

    ``quick`` (smoke mode): fewer timed passes; the numbers are then rough.
    """
    net = model if not any(p.device.type != "cpu" for p in model.parameters()) else copy.deepcopy(model).cpu()
    kw = dict(precision="fp32", min_seconds=0.0 if quick else 0.5, warmup=1 if quick else 2)
    with threads(1):
        one = latency.measure(net, 1, image_size, **kw)
    many = latency.measure(net, throughput_batch, image_size, **kw)
    return {"latency_ms": one.latency_ms, "throughput": many.throughput}


def row(name: str, model: nn.Module, test_acc: float, *, image_size: int, throughput_batch: int,
        quick: bool = False, **extra: Any) -> dict:
    """One line of the compression table, every number measured on ``model`` here."""
    return {"model": name, **size_on_disk(model), "nonzero_params": nonzero_parameters(model),
            **speed(model, image_size, throughput_batch, quick=quick), "test_acc": float(test_acc), **extra}


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as aligned text, with each one's size, latency and accuracy against the first
    student row (``student`` in ``model``)."""
    base = next((r for r in rows if r["model"] == "student"), rows[0])
    head = (f"{'model':22} {'MB':>7} {'gzip MB':>8} {'non-zero':>10} {'ms (bs 1)':>9} {'img/s':>8} "
            f"{'test acc':>8}  vs student: size, latency, acc")
    lines = [head, "-" * len(head)]
    for r in rows:
        rel = (f"{r['size_mb'] / base['size_mb']:5.2f}x {r['latency_ms'] / base['latency_ms']:5.2f}x "
               f"{r['test_acc'] - base['test_acc']:+.4f}")
        lines.append(f"{r['model']:22} {r['size_mb']:7.3f} {r['gzip_mb']:8.3f} {r['nonzero_params']:10,d} "
                     f"{r['latency_ms']:9.2f} {r['throughput']:8,.0f} {r['test_acc']:8.4f}  {rel}")
    if any(r.get("smoke") for r in rows):
        lines.append("SMOKE: synthetic data, one-epoch runs, quick timings: the sizes are real, the speeds rough, "
                     "the accuracies mean nothing")
    return "\n".join(lines)


def figure(rows: Sequence[Mapping[str, Any]], smoke: bool | None = None,
           title: str = "Compressing the distilled student") -> "Figure":
    """Accuracy against size on disk and against batch-1 latency, and throughput, per model."""
    import matplotlib.pyplot as plt   # here, not at import: the kit loads this module for its runs
    from matplotlib.ticker import FuncFormatter

    smoke = is_smoke(list(rows), smoke)
    colors = [TEACHER_COLOR if r["model"] == "teacher" else STUDENT_COLOR if r["model"] == "student" else KD_COLOR
              for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2))
    for ax, key, label in ((axes[0], "size_mb", "size on disk (MB, log scale)"),
                           (axes[1], "latency_ms", "latency at batch 1, one thread (ms, log scale)")):
        ax.scatter([r[key] for r in rows], [r["test_acc"] for r in rows], c=colors, s=40, zorder=3)
        for r in rows:
            ax.annotate(r["model"], (r[key], r["test_acc"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set(xscale="log", xlabel=label, ylabel="test accuracy")
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(FuncFormatter(lambda v, _: f"{v:g}"))   # 0.2, 2, 5: not 2x10^-1
        ax.grid(alpha=0.3)
    names = [r["model"] for r in rows]
    axes[2].barh(range(len(rows)), [r["throughput"] for r in rows], color=colors)
    axes[2].set_yticks(range(len(rows)), names, fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set(xlabel="throughput (images/s, all threads)")
    axes[2].grid(axis="x", alpha=0.3)
    return finish(fig, title, smoke)

