"""Measured inference speed: latency at batch 1 and throughput at a large batch.

Distillation pays off at inference: the student answers faster and fits smaller devices.
Parameter counts only suggest that; this module measures it on the device at hand, with
warm-up iterations first (the first calls pay for memory allocation, kernel selection
and, on a GPU, CUDA start-up) and the median of the timed ones (robust to a noisy
neighbour on a shared machine).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .env import pick_precision

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Speed:
    """One measurement: ``seconds`` is the median time of one forward pass of ``batch_size``."""
    batch_size: int
    image_size: int
    device: str
    precision: str
    seconds: float
    iterations: int

    @property
    def latency_ms(self) -> float:
        return self.seconds * 1000.0

    @property
    def throughput(self) -> float:
        """Images per second."""
        return self.batch_size / self.seconds

    def as_dict(self) -> dict:
        return asdict(self) | {"latency_ms": self.latency_ms, "throughput": self.throughput}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.inference_mode()
def measure(model: nn.Module, batch_size: int = 1, image_size: int = 32, *,
            precision: str | None = None, warmup: int = 2, min_iterations: int = 3,
            max_iterations: int = 50, min_seconds: float = 0.3) -> Speed:
    """Time ``model`` on random input of ``batch_size`` x 3 x ``image_size``^2, on its device.

    ``precision`` defaults to the one kdtp trains with on this device (bf16 / fp16 /
    fp32). A reduced precision is measured on a copy of the model converted to it, as a
    deployed model would be held: under autocast every call would re-cast all weights,
    which on a CPU can cost more than the convolutions. Runs ``warmup`` untimed passes,
    then at least ``min_iterations`` and until ``min_seconds`` have passed (at most
    ``max_iterations``); returns the median.
    """
    if batch_size < 1 or image_size < 1:
        raise ValueError(f"batch_size and image_size must be >= 1, got {batch_size}, {image_size}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    precision = precision or pick_precision(device)
    if precision not in _DTYPES:
        raise ValueError(f"precision {precision!r} is unknown: choose one of {', '.join(_DTYPES)}")
    dtype = _DTYPES[precision]
    was_training = model.training
    net = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    net.eval()
    x = torch.randn(batch_size, 3, image_size, image_size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    times: list[float] = []
    try:
        for _ in range(warmup):
            net(x)
        _sync(device)
        started = time.perf_counter()
        while len(times) < max_iterations and (len(times) < min_iterations
                                               or time.perf_counter() - started < min_seconds):
            t0 = time.perf_counter()
            net(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return Speed(batch_size, image_size, device.type, precision, statistics.median(times), len(times))


def latency_and_throughput(model: nn.Module, image_size: int = 32, throughput_batch: int = 256,
                           **kwargs) -> dict:
    """``{"latency_ms": batch-1 latency, "throughput": images/s at throughput_batch, ...}``.

    Latency is what one user waiting for one answer sees; throughput is what a server
    classifying a stream of images sees. Both favour the smaller network, by different
    factors.
    """
    one = measure(model, 1, image_size, **kwargs)
    many = measure(model, throughput_batch, image_size, **kwargs)
    return {"latency_ms": one.latency_ms, "throughput": many.throughput,
            "throughput_batch": throughput_batch, "device": one.device, "precision": one.precision}


@torch.no_grad()
def forward_cost(arch: str, image_size: int = 32, cifar_stem: bool = False,
                 num_classes: int = 10) -> dict:
    """FLOPs of one image's forward pass and the shape of the distilled feature map.

    Counted on PyTorch's ``meta`` device: shapes only, no memory and no arithmetic, so
    even ResNet50 at 224 px costs a fraction of a second to count. FLOPs count a
    multiply and an add as two (ResNet50 at 224 px: 8.2 GFLOPs = 4.1 G multiply-adds).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .models import FEATURE_LAYER, build_model

    with torch.device("meta"):
        model = build_model(arch, num_classes=num_classes, cifar_stem=cifar_stem).eval()
    layer = FEATURE_LAYER[arch]
    shapes: dict[str, tuple[int, ...]] = {}
    model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: shapes.__setitem__(layer, tuple(out.shape[1:])))
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size, device="meta"))
    return {"arch": arch, "image_size": image_size, "cifar_stem": cifar_stem,
            "flops": int(counter.get_total_flops()), "feature_layer": layer,
            "feature_shape": shapes[layer]}
