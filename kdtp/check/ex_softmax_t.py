"""The ``softmax_t`` exercise: ``softmax(logits / T)`` over the classes, and its check."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .base import (Verdict, _Case, _Stop, _all_close, _correct, _differs, _invoke, _mistake, _register,
                   _run, _seeded, _which)


# The reference solution (plain, no input checks: its source is the lesson; see base.py).
def reference_softmax_t(logits, T):
    """Temperature softmax: the probabilities of ``logits / T`` over the classes."""
    return F.softmax(logits / T, dim=1)  # T > 1 flattens the distribution, T < 1 sharpens it


# The hint: the ideas and the traps, never the code.
_HINT = ("Divide the logits by the temperature first, then turn each row into probabilities "
         "with a softmax over the classes (the logits are (batch, classes): the class "
         "dimension is 1). A temperature above 1 should flatten the distribution and below 1 "
         "sharpen it; each row of your output should sum to 1. Prefer torch's softmax to a "
         "hand-made exp (it stays finite on large logits).")


def _softmax_cases() -> list[_Case]:
    """(batch, classes, T): non-square, T != 1 (T = 1 hides every temperature mistake)."""
    cases = []
    for i, (b, c, T) in enumerate(((4, 6, 2.0), (3, 10, 4.0), (5, 7, 0.5))):
        z = torch.randn(b, c, generator=_seeded(1200 + i)) * 3
        cases.append(_Case((z, T), f"case {i + 1} (logits {b}x{c}, T={T})"))
    return cases


def _softmax_large_case() -> _Case:
    """Logits in the hundreds: exp() overflows float32 unless the row max is subtracted."""
    z = torch.randn(3, 5, generator=_seeded(1299)) * 300
    return _Case((z, 2.0), "large logits (|z| in the hundreds, T=2.0)")


_SOFTMAX_VARIANTS: list[tuple[str, Callable]] = [
    ("no_divide", lambda z, T: F.softmax(z, dim=1)),
    ("multiplied", lambda z, T: F.softmax(z * T, dim=1)),
    ("wrong_dim", lambda z, T: F.softmax(z / T, dim=0)),
    ("log_softmax", lambda z, T: F.log_softmax(z / T, dim=1)),
    ("divided_after", lambda z, T: F.softmax(z, dim=1) / T),
    ("not_normalised", lambda z, T: torch.exp(z / T)),
]

_SOFTMAX_MESSAGES = {
    "no_divide": "you forgot to divide the logits by T: the output is the plain softmax, the same for "
                 "every temperature. Divide the logits by T *before* the softmax; that is what "
                 "softens the distribution.",
    "multiplied": "you multiplied the logits by T instead of dividing: a large T then sharpens the "
                  "distribution instead of softening it. Divide by T before the softmax.",
    "wrong_dim": "softmax over the wrong dim: the columns sum to 1, not the rows. The logits are "
                 "(batch, classes): normalise over the classes, dim=1.",
    "log_softmax": "you returned log-probabilities (log_softmax) instead of probabilities: the values "
                   "are negative. This one returns the probabilities themselves (log_softmax is what "
                   "F.kl_div wants for the student, in kd_loss).",
    "divided_after": "you divided the probabilities by T instead of the logits: the rows now sum to "
                     "1/T. Divide the logits by T, then take the softmax.",
    "not_normalised": "the output is exp(logits / T), not normalised: each row must sum to 1. Divide by "
                      "the row's sum over the classes, or use F.softmax, which does it (stably).",
    "overflow": "correct on ordinary logits, but it overflows on large logits: exp() gives inf and the "
                "result NaN. Subtract each row's max before exp() (a shift leaves the softmax "
                "unchanged), or use F.softmax / torch.softmax, which do it for you.",
}


def _softmax_output(out, z: torch.Tensor, where: str) -> torch.Tensor:
    name = "softmax_t"
    if out is None:
        raise _Stop(_mistake(name, "returned_none", "your function returned None: did you forget the "
                                                    "`return`?"))
    if not torch.is_tensor(out):
        raise _Stop(_mistake(name, "not_tensor", f"your function returned a {type(out).__name__}, not a "
                                                 f"tensor: return the probabilities as a torch tensor."))
    if out.shape != z.shape:
        raise _Stop(_mistake(name, "wrong_shape", f"wrong shape: your function returned shape "
                                                  f"{tuple(out.shape)} for logits of shape "
                                                  f"{tuple(z.shape)} on {where}; the output has one "
                                                  f"probability per class for each example, the "
                                                  f"logits' shape (no sum, max or argmax)."))
    return out


def softmax_t(fn: Callable, *, quiet: bool = False) -> Verdict:
    """Check ``fn(logits, T)`` against ``softmax(logits / T, dim=1)``; print the verdict.

    Three ordinary cases (T = 2, 4 and 0.5) tell the mistakes apart; a last case with logits
    in the hundreds catches a naive ``exp`` that overflows (the softmax must be stable: the
    KD loss divides real logits by T and takes exps of them on every batch).
    """
    name, call = "softmax_t", "softmax_t(logits, T)"

    def body(fn):
        cases = _softmax_cases()
        values = []
        for c in cases:
            z, T = c.fresh()
            out = _softmax_output(_invoke(name, fn, (z, T), c.desc, call), c.args[0], c.desc)
            values.append(out.detach().double())
        expected = [reference_softmax_t(*c.double()) for c in cases]
        if not _all_close(values, expected):
            if not all(bool(torch.isfinite(v).all()) for v in values):
                raise _Stop(_mistake(name, "non_finite", "your output contains NaN or inf on ordinary "
                                                         "logits: a log of 0, or a division by 0?"))
            key = _which(values, cases, _SOFTMAX_VARIANTS)
            if key is not None:
                raise _Stop(_mistake(name, key, _SOFTMAX_MESSAGES[key]))
            rows = [float(v.sum(1).sub(1).abs().max()) for v in values]
            verdict = _differs(name, values, expected, cases, "output")
            if max(rows) > 1e-4:
                verdict.message += " Note: your rows do not sum to 1."
            raise _Stop(verdict)
        big = _softmax_large_case()
        z, T = big.fresh()
        out = _softmax_output(_invoke(name, fn, (z, T), big.desc, call), big.args[0], big.desc)
        value = out.detach().double()
        if not bool(torch.isfinite(value).all()):
            raise _Stop(_mistake(name, "overflow", _SOFTMAX_MESSAGES["overflow"]))
        if not _all_close([value], [reference_softmax_t(*big.double())]):
            raise _Stop(_differs(name, [value], [reference_softmax_t(*big.double())], [big], "output"))
        return _correct(name, f"matches softmax(logits / T, dim=1) on {len(cases)} cases "
                              f"(T = 2, 4, 0.5) and stays finite on large logits.")

    return _run(name, fn, body, quiet)


_register("softmax_t", softmax_t, reference_softmax_t, _HINT)
