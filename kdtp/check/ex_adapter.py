"""The ``adapter`` exercise: a 1x1-conv adapter (``kdtp.models.make_adapter``), and its check."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .base import Verdict, _Stop, _correct, _invoke, _mistake, _register, _run, _seeded


# The reference solution (plain, no input checks: its source is the lesson; see base.py).
def reference_adapter(student_channels, teacher_channels):
    """A 1x1 conv (+ BN) lifting the student's map to the teacher's number of channels."""
    return nn.Sequential(
        nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(teacher_channels),
    )


# The hint: the ideas and the traps, never the code.
_HINT = ("The adapter is one convolution whose kernel covers a single pixel, from "
         "student_channels input channels to teacher_channels output channels (a bias is not "
         "needed if batch normalisation over the teacher's channels follows it; nn.Sequential "
         "chains the two). Return the module itself: do not apply it to anything.")


_ADAPTER_CASES = ((3, 8, (4, 4)), (6, 4, (5, 3)), (5, 10, (3, 6)))  # (C_s, C_t, (H, W)), C_s != C_t


def adapter(fn: Callable, *, quiet: bool = False) -> Verdict:
    """Check ``fn(student_channels, teacher_channels)`` builds a 1x1-conv adapter; print the verdict.

    Three channel pairs (narrower and wider, so swapped channels show) and non-square maps;
    the module is inspected (its Conv2d layers' channels and kernel size) and run on a
    seeded map of the student's width, which must come out (batch, C_t, H, W).
    """
    name = "adapter"

    def body(fn):
        for i, (cs, ct, (h, w)) in enumerate(_ADAPTER_CASES):
            where = f"case {i + 1} (student_channels={cs}, teacher_channels={ct}, map {h}x{w})"
            m = _invoke(name, fn, (cs, ct), where, "adapter(student_channels, teacher_channels)")
            if m is None:
                raise _Stop(_mistake(name, "returned_none", "your function returned None: did you forget "
                                                            "the `return`? Return the module."))
            if not isinstance(m, nn.Module):
                raise _Stop(_mistake(name, "not_module", f"your function returned a {type(m).__name__}, not "
                                                         f"an nn.Module: return the layer itself (built "
                                                         f"from nn.Conv2d), not the result of calling "
                                                         f"it, so that its weights can be trained."))
            convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
            if convs:
                cin, cout = convs[0].in_channels, convs[-1].out_channels
                if (cin, cout) == (ct, cs):
                    raise _Stop(_mistake(name, "channels_swapped", f"the channels are swapped: your conv "
                                                                   f"goes {ct} -> {cs} on {where}. It reads "
                                                                   f"the student's map: in_channels = "
                                                                   f"student_channels, out_channels = "
                                                                   f"teacher_channels."))
                if cin != cs:
                    raise _Stop(_mistake(name, "wrong_in", f"wrong number of input channels: your conv "
                                                           f"expects {cin}, but on {where} the student's "
                                                           f"map has student_channels = {cs}. Use the "
                                                           f"argument (do not hard-code 512)."))
                if cout != ct:
                    raise _Stop(_mistake(name, "wrong_out", f"wrong number of output channels: your "
                                                            f"adapter gives {cout}, but on {where} it must "
                                                            f"lift the map to teacher_channels = {ct}, to "
                                                            f"compare it with the teacher's. Use the "
                                                            f"argument."))
                big = [tuple(x.kernel_size) for x in convs if tuple(x.kernel_size) != (1, 1)]
                if big:
                    raise _Stop(_mistake(name, "kernel_not_1x1", f"the kernel is not 1x1 "
                                                                 f"(kernel_size={big[0]}): the adapter "
                                                                 f"only re-mixes the channels at each "
                                                                 f"position; a larger kernel also mixes "
                                                                 f"neighbouring positions and adds "
                                                                 f"weights. Use kernel_size=1."))
            if not any(p.requires_grad for p in m.parameters()):
                raise _Stop(_mistake(name, "no_params", "the adapter has no trainable parameters: it must "
                                                        "*learn* the map from the student's channels to "
                                                        "the teacher's; build it from a 1x1 nn.Conv2d."))
            x = torch.randn(2, cs, h, w, generator=_seeded(1400 + i))
            out = _invoke(name, m, (x,), where, "adapter_module(student_map)")
            if not torch.is_tensor(out):
                raise _Stop(_mistake(name, "not_tensor", f"your module returned a {type(out).__name__}, not "
                                                         f"a tensor, when applied to a map on {where}."))
            if out.dim() != 4 or out.shape[0] != 2:
                raise _Stop(_mistake(name, "wrong_shape", f"wrong shape: your module turns a map of shape "
                                                          f"{tuple(x.shape)} into {tuple(out.shape)} on "
                                                          f"{where}; expected (2, {ct}, {h}, {w})."))
            if out.shape[1] != ct:
                raise _Stop(_mistake(name, "wrong_out", f"wrong number of output channels: your adapter "
                                                        f"gives {out.shape[1]}, but on {where} it must "
                                                        f"lift the map to teacher_channels = {ct}."))
            if tuple(out.shape[2:]) != (h, w):
                raise _Stop(_mistake(name, "spatial_changed", f"the adapter changes the spatial size "
                                                              f"({h}x{w} -> {out.shape[2]}x{out.shape[3]}) "
                                                              f"on {where}: check stride and padding. A "
                                                              f"1x1 conv with stride 1 and no padding "
                                                              f"keeps the size; only the channels "
                                                              f"change."))
        return _correct(name, f"a module lifting C_s to C_t channels and keeping the map's size, on "
                              f"{len(_ADAPTER_CASES)} channel pairs.")

    return _run(name, fn, body, quiet)


_register("adapter", adapter, reference_adapter, _HINT)
