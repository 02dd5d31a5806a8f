"""Int8 post-training quantization for the CPU, with PyTorch's FX graph mode.

A float32 value ``x`` is stored as an 8-bit integer ``q = clamp(round(x / s) + z)`` and read
back as ``s (q - z)``: 4x smaller, and integer kernels can be faster. Weights get a scale
per output channel from their own range; activations get one scale per tensor, from the
ranges seen while *calibrating*: a few batches of training images run through the network
with observers attached. No training, no labels.

Why FX graph mode (``torch.ao.quantization.quantize_fx``): it traces the network, folds
each BatchNorm into the convolution before it, and puts the quantize / dequantize steps
around the operations that have no int8 kernel by itself: GELU, the small CNNs'
activation, stays float between a dequantize and a quantize. Eager mode would need those
stubs written into the model by hand. Its successor, PT2E with the x86 quantizer, moved to
``torchao`` (not a dependency of the kit; this PyTorch no longer has it in ``torch.ao``).
``torch.ao.quantization`` says it is deprecated in recent PyTorch versions but works; where
it, or an int8 engine, is missing, ``check_available`` raises ``QuantizationUnavailable``
with the reason and the notebook skips the step.

Saved quantized networks hold tensors only (loaded with ``weights_only=True`` as every
checkpoint of the kit): ``load_quantized`` rebuilds the int8 graph from the float
architecture and loads the saved integers and scales into it.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..store import atomic_save

ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")   # CPU int8 engines, in order of preference
FORMAT = "kdtp-int8/1"


class QuantizationUnavailable(RuntimeError):
    """This PyTorch cannot quantize to int8 here; the message says why and what to do."""


@contextlib.contextmanager
def _quiet():
    """torch.ao.quantization warns at every call (deprecation, observer details): once is enough."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fx():
    """(prepare_fx, convert_fx, get_default_qconfig_mapping), or QuantizationUnavailable."""
    try:
        with _quiet():
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as exc:
        raise QuantizationUnavailable(
            f"this PyTorch ({torch.__version__}) has no FX post-training quantization "
            f"(torch.ao.quantization.quantize_fx: {exc}). The int8 step is skipped; the rest of the "
            "notebook runs. To try it, use a PyTorch that has it (Colab's does) or port this step to "
            "torchao's PT2E path (pip install torchao).") from None
    return prepare_fx, convert_fx, get_default_qconfig_mapping


def check_available() -> str:
    """The int8 engine to use on this CPU (``x86`` where it exists); raises
    ``QuantizationUnavailable`` when the FX path or every int8 engine is missing."""
    _fx()
    engines = list(getattr(torch.backends.quantized, "supported_engines", []))
    for engine in ENGINES:
        if engine in engines:
            return engine
    raise QuantizationUnavailable(
        f"this PyTorch ({torch.__version__}) has no int8 CPU engine (supported engines: "
        f"{', '.join(engines) or 'none'}). The int8 step is skipped; the rest of the notebook runs. "
        "An x86 or ARM build of PyTorch from pytorch.org has one.")


def availability() -> tuple[bool, str]:
    """(can quantize, one line saying how, or why not): what the notebook prints.

    Beyond the imports and the engine list, a tiny network is quantized and run: an engine
    that is listed but fails at run time is found here, not in the middle of the lab.
    """
    try:
        engine = check_available()
        probe = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GELU()).eval()
        quantize_int8(probe, [torch.randn(2, 3, 8, 8)], engine=engine)(torch.randn(1, 3, 8, 8))
    except QuantizationUnavailable as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - whatever a broken engine raises, the lab goes on
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        return False, (f"int8 quantization fails in this PyTorch ({torch.__version__}, engine {engine!r}: "
                       f"{first[:160]}). The int8 step is skipped; the rest of the notebook runs.")
    return True, (f"int8 post-training quantization: FX graph mode (torch.ao.quantization, which recent "
                  f"PyTorch versions mark as deprecated in favour of torchao; it works in this one, "
                  f"{torch.__version__}), CPU engine {engine!r}")


@torch.no_grad()
def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor], *,
                  engine: str | None = None) -> torch.fx.GraphModule:
    """An int8 copy of ``model`` for the CPU, calibrated on the ``calibration`` batches.

    ``model`` is left as it is (on its device); the copy runs on the CPU, in the engine
    chosen here, which becomes PyTorch's current one (``torch.backends.quantized.engine``).
    """
    prepare_fx, convert_fx, qconfig_mapping = _fx()
    engine = engine or check_available()
    batches = [x.detach().to("cpu", torch.float32) for x in calibration]
    if not batches:
        raise ValueError("quantize_int8 needs at least one calibration batch (a few hundred training images)")
    float_model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    torch.backends.quantized.engine = engine
    with _quiet():
        prepared = prepare_fx(float_model, qconfig_mapping(engine), example_inputs=(batches[0][:1],))
        for x in batches:
            prepared(x)
        quantized = convert_fx(prepared)
    quantized.eval()
    quantized.kdtp_engine = engine
    return quantized


def is_int8_module(module: nn.Module) -> bool:
    """A module that computes on int8 tensors (quantized conv, conv+ReLU, linear, BN, ...)."""
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))


def int8_and_float_parts(quantized: torch.fx.GraphModule) -> tuple[dict[str, int], dict[str, int]]:
    """({int8 module type: count}, {float module type: count}) of a network from ``quantize_int8``.

    A module runs in float when FX put a ``dequantize`` in front of it (no int8 kernel for
    it, or for its inputs); quantized modules (``is_int8_module``) run on integers.
    """
    int8: dict[str, int] = {}
    floats: dict[str, int] = {}
    for node in quantized.graph.nodes:
        if node.op != "call_module":
            continue
        module = quantized.get_submodule(node.target)
        kind = type(module).__name__
        if is_int8_module(module):
            int8[kind] = int8.get(kind, 0) + 1
        elif any(isinstance(a, torch.fx.Node) and a.op == "call_method" and a.target == "dequantize"
                 for a in node.args):
            floats[kind] = floats.get(kind, 0) + 1
    return int8, floats


def save_quantized(quantized: torch.fx.GraphModule, path: Path | str, image_size: int) -> Path:
    """Write the int8 weights, scales and zero points (tensors only) atomically to ``path``."""
    return atomic_save({"format": FORMAT, "engine": getattr(quantized, "kdtp_engine", check_available()),
                        "image_size": int(image_size), "state_dict": quantized.state_dict()}, path)


def load_quantized(path: Path | str, like: nn.Module) -> torch.fx.GraphModule:
    """The int8 network saved at ``path``; ``like`` is a float network of its architecture.

    The int8 graph is rebuilt from ``like`` (quantized without calibration: only the
    structure counts), then the saved integers and scales replace its placeholders.
    """
    with _quiet():   # int8 tensors are rebuilt through a deprecated storage type: say it once, not here
        payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an int8 network saved by kdtp.compress.save_quantized")
    size = payload["image_size"]
    skeleton = quantize_int8(like, [torch.zeros(1, 3, size, size)], engine=payload["engine"])
    with _quiet():
        skeleton.load_state_dict(payload["state_dict"])
    return skeleton
