"""The ``feature_loss`` exercise: the FitNets hint loss (``kdtp.losses.FeatureLoss``), and its check."""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .base import (Verdict, _Case, _Stop, _all_close, _correct, _differs, _error, _invoke, _location,
                   _loss_output, _mistake, _register, _run, _seeded, _short, _which)


# The reference solution (plain, no input checks: its source is the lesson; see base.py).
def reference_feature_loss(student_map, teacher_map, adapter):
    """FitNets hint: MSE between ``adapter(student_map)`` and the (detached) teacher's map."""
    s = adapter(student_map)
    t = teacher_map.detach()                 # the teacher is frozen: no gradient for it
    if s.shape[-2:] != t.shape[-2:]:         # different resolutions: shrink the larger one
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        s = F.adaptive_avg_pool2d(s, size)
        t = F.adaptive_avg_pool2d(t, size)
    return F.mse_loss(s, t)


# The hint: the ideas and the traps, never the code.
_HINT = ("Three steps. Lift the student's map to the teacher's width by calling the "
         "adapter on it. Take the teacher's map out of the autograd graph (the frozen "
         "teacher must get no gradient). If the two spatial sizes differ, shrink them to "
         "the per-dimension minimum of the two with adaptive average pooling (this only "
         "changes the larger). Then return the mean squared error between the two maps.")


class _CountingAdapter(nn.Module):
    """The check's adapter: a seeded 1x1 conv that counts its calls (was it applied?).

    A plain conv, no BN: averaging commutes with a 1x1 conv, so pooling before or after
    the adapter gives the same value and both orders pass.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def _feature_conv(cs: int, ct: int, seed: int) -> nn.Conv2d:
    g = _seeded(seed)
    conv = nn.Conv2d(cs, ct, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(ct, cs, 1, 1, generator=g) * 0.5)
        conv.bias.copy_(torch.randn(ct, generator=g) * 0.1)
    return conv


# (batch, C_s, C_t, student HxW, teacher HxW): equal sizes first, then the student's map
# larger, the teacher's larger, and mixed (factors not 2, where bilinear resizing = avg pooling)
_FEATURE_SHAPES = ((2, 3, 5, (4, 4), (4, 4)), (3, 4, 6, (5, 3), (5, 3)), (2, 3, 4, (6, 8), (4, 4)),
                   (2, 2, 5, (3, 3), (5, 6)), (3, 4, 3, (4, 7), (6, 5)))


def _feature_cases() -> list[_Case]:
    """Cases whose args are (student_map, teacher_map, conv); see ``_FEATURE_SHAPES``."""
    cases = []
    for i, (b, cs, ct, shw, thw) in enumerate(_FEATURE_SHAPES):
        g = _seeded(1500 + i)
        s = torch.randn(b, cs, *shw, generator=g)
        t = torch.randn(b, ct, *thw, generator=g)
        cases.append(_Case((s, t, _feature_conv(cs, ct, 1550 + i)),
                           f"case {i + 1} (batch={b}, student {cs}x{shw[0]}x{shw[1]}, "
                           f"teacher {ct}x{thw[0]}x{thw[1]})"))
    return cases


def _feature_args64(c: _Case) -> tuple:
    s, t, conv = c.args
    return s.double(), t.double(), copy.deepcopy(conv).double()


def _to_min(a, t, resize):
    if a.shape[-2:] == t.shape[-2:]:
        return a, t
    size = (min(a.shape[-2], t.shape[-2]), min(a.shape[-1], t.shape[-1]))
    return (resize(a, size) if a.shape[-2:] != size else a), (resize(t, size) if t.shape[-2:] != size else t)


def _avg(a, t):
    return _to_min(a, t, F.adaptive_avg_pool2d)


def _up_bilinear(a, t):
    if a.shape[-2:] == t.shape[-2:]:
        return a, t
    size = (max(a.shape[-2], t.shape[-2]), max(a.shape[-1], t.shape[-1]))
    up = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    return up(a), up(t)


# each variant takes (adapter(student_map), teacher_map), both float64
_FEATURE_VARIANTS: list[tuple[str, Callable]] = [
    ("sum", lambda a, t: F.mse_loss(*_avg(a, t), reduction="sum")),
    ("sum_over_batch", lambda a, t: F.mse_loss(*_avg(a, t), reduction="sum") / a.shape[0]),
    ("channel_sum", lambda a, t: (lambda x, y: (x - y).pow(2).sum(1).mean())(*_avg(a, t))),
    ("l1", lambda a, t: F.l1_loss(*_avg(a, t))),
    ("rmse", lambda a, t: F.mse_loss(*_avg(a, t)).sqrt()),
    ("max_pool", lambda a, t: F.mse_loss(*_to_min(a, t, F.adaptive_max_pool2d))),
    ("interpolate", lambda a, t: F.mse_loss(*_to_min(a, t, lambda x, size: F.interpolate(
        x, size=size, mode="bilinear", align_corners=False)))),
    ("interpolate", lambda a, t: F.mse_loss(*_to_min(a, t, lambda x, size: F.interpolate(
        x, size=size, mode="nearest")))),
    ("interpolate", lambda a, t: F.mse_loss(*_up_bilinear(a, t))),
    ("pooled_student_to_teacher", lambda a, t: F.mse_loss(F.adaptive_avg_pool2d(a, t.shape[-2:]), t)),
    ("pooled_teacher_to_student", lambda a, t: F.mse_loss(a, F.adaptive_avg_pool2d(t, a.shape[-2:]))),
]

_FEATURE_MESSAGES = {
    "adapter_not_applied": "the adapter is not applied: the student's map has C_s channels and the "
                           "teacher's C_t, so they can only be compared after adapter(student_map) "
                           "lifts the student's to the teacher's width (and the adapter only learns "
                           "if it is in the loss).",
    "teacher_not_detached": "the value is right, but the teacher's map is not detached: backward() put a "
                            "gradient on teacher_map. Use teacher_map.detach() in the loss: the teacher "
                            "is frozen, it must get no gradient (and keep no graph).",
    "sum": "you took the sum instead of the mean of the squared differences: the loss then grows with "
           "the batch, the channels and the map's size. Use the mean (F.mse_loss's default).",
    "sum_over_batch": "you summed the squared differences and divided by the batch size only: the MSE is "
                      "the mean over every element (batch, channels and positions), F.mse_loss's "
                      "default.",
    "channel_sum": "you summed the squared differences over channels (and averaged the rest): the MSE "
                   "averages over the channels too, F.mse_loss's default.",
    "l1": "you used the absolute error (L1) instead of the squared error: the FitNets hint is the mean "
          "*squared* error between the two maps.",
    "rmse": "you took the square root of the MSE (an RMSE, or a norm): the hint loss is the mean squared "
            "error itself.",
    "max_pool": "you max-pooled instead of average-pooled to match the sizes: use "
                "F.adaptive_avg_pool2d, which averages each region of the larger map.",
    "interpolate": "you resized with F.interpolate instead of average pooling: interpolation samples "
                   "a few pixels (or invents new ones when it enlarges). Bring the larger map down to "
                   "the smaller size with F.adaptive_avg_pool2d.",
    "pooled_student_to_teacher": "you always pooled the student's map to the teacher's size: right when "
                                 "the teacher's map is the smaller, but when it is the larger that "
                                 "enlarges the student's. Pool the larger map down to the smaller size "
                                 "(per dimension, the min of the two).",
    "pooled_teacher_to_student": "you always pooled the teacher's map to the student's size: right when "
                                 "the student's map is the smaller, but when it is the larger that "
                                 "enlarges the teacher's. Pool the larger map down to the smaller size "
                                 "(per dimension, the min of the two).",
}


def feature_loss(fn: Callable, *, quiet: bool = False) -> Verdict:
    """Check ``fn(student_map, teacher_map, adapter)`` against the FitNets hint loss.

    Five cases, always C_s != C_t (the adapter is needed): equal spatial sizes, the
    student's map larger, the teacher's larger, and mixed (each map larger in one
    dimension), with resize factors other than 2 so pooling and interpolation differ. The
    adapter handed over counts its calls (was it applied?); both maps require grad, and
    after ``backward()`` the teacher's must have no gradient (it was detached).
    """
    name, call = "feature_loss", "feature_loss(student_map, teacher_map, adapter)"

    def body(fn):
        cases = _feature_cases()
        outs = []
        for c in cases:
            s, t, conv = c.fresh(grad=(0, 1))
            wrapped = _CountingAdapter(conv)
            sizes_differ = s.shape[-2:] != t.shape[-2:]

            def on_error(e, c=c, s=s, t=t, wrapped=wrapped, sizes_differ=sizes_differ):
                shapes = any(w in str(e).lower() for w in ("size", "shape", "match", "channel", "broadcast"))
                if wrapped.calls == 0 and shapes:  # it compared the raw C_s map with the C_t one
                    return _mistake(name, "adapter_not_applied", _FEATURE_MESSAGES["adapter_not_applied"])
                if sizes_differ and wrapped.calls and shapes:
                    return _error(name, "no_pooling",
                                  f"on {c.desc} the spatial sizes differ (student {s.shape[2]}x{s.shape[3]} "
                                  f"after the adapter, teacher {t.shape[2]}x{t.shape[3]}) and your function "
                                  f"raised {type(e).__name__}: {_short(e)}{_location(e)}. When they "
                                  f"differ, F.adaptive_avg_pool2d the larger map down to the smaller size "
                                  f"(the min of the two in each dimension) before the MSE.")
                return None

            out = _invoke(name, fn, (s, t, wrapped), c.desc, call, on_error)
            if wrapped.calls == 0:
                raise _Stop(_mistake(name, "adapter_not_applied", _FEATURE_MESSAGES["adapter_not_applied"]))
            out = _loss_output(name, out, c.desc, s.shape[0])
            if not bool(torch.isfinite(out.detach()).all()):
                raise _Stop(_mistake(name, "non_finite", f"your loss is NaN or inf on {c.desc}: a division "
                                                         f"by 0, or a log or sqrt of 0?"))
            outs.append((out, t))
        values = [o.detach().double() for o, _ in outs]
        expected = [reference_feature_loss(*_feature_args64(c)).detach() for c in cases]
        if not _all_close(values, expected):
            adapted = [_Case((conv(s), t), c.desc) for c, (s, t, conv) in
                       ((c, _feature_args64(c)) for c in cases)]
            key = _which(values, adapted, _FEATURE_VARIANTS)
            if key is not None:
                raise _Stop(_mistake(name, key, _FEATURE_MESSAGES[key]))
            raise _Stop(_differs(name, values, expected, cases, "loss"))
        for (out, t), c in zip(outs, cases):
            if not out.requires_grad:
                raise _Stop(_mistake(name, "no_grad", "the value is right, but your loss has no gradient: "
                                                      "it is cut off from the student's map (.item(), "
                                                      ".detach() or torch.no_grad() on the student's "
                                                      "side?), so neither the student nor the adapter "
                                                      "would learn."))
            _invoke(name, out.backward, (), c.desc + ", in backward()", "loss.backward()")
            if t.grad is not None:
                raise _Stop(_mistake(name, "teacher_not_detached", _FEATURE_MESSAGES["teacher_not_detached"]))
        return _correct(name, f"matches MSE(adapter(student_map), teacher_map) on {len(cases)} cases "
                              f"(equal sizes, student larger, teacher larger, mixed) and leaves the "
                              f"teacher without gradient.")

    return _run(name, fn, body, quiet)


_register("feature_loss", feature_loss, reference_feature_loss, _HINT)
