"""Instant, specific feedback on the lab's exercises: write the piece, get a verdict.

The notebooks ask students to write four pieces of the lab themselves::

    kdtp.check.softmax_t(my_softmax_t)      # prints one paragraph: correct, or which mistake
    softmax_t = kdtp.check.use("softmax_t", my_softmax_t)   # yours if it passed, else the kit's
    kdtp.check.hint("kd_loss")              # a nudge, never the code
    kdtp.check.solution("kd_loss")          # the reference source, after a warning

Exercises (``NAMES``) and the signature each check calls:

* ``softmax_t(logits, T)``: ``softmax(logits / T)`` over the classes (dim 1);
* ``kd_loss(student_logits, teacher_logits, labels, T, alpha)``:
  ``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``, KL with
  ``batchmean``, CE on the raw student logits (the kit's ``kdtp.losses.KDLoss``);
* ``adapter(student_channels, teacher_channels) -> nn.Module``: a 1x1 conv (+ optional BN)
  lifting the student's map to the teacher's width (``kdtp.models.make_adapter``);
* ``feature_loss(student_map, teacher_map, adapter)``: ``MSE(adapter(s), t)``, the teacher
  detached, the larger map average-pooled to the smaller when the sizes differ
  (``kdtp.losses.FeatureLoss``).

How a check decides. It runs the student's function on a few seeded random cases (fixed
seeds, no global RNG touched, all on the CPU in well under a second) and compares with the
reference (``torch.allclose``, ``rtol=1e-4``, ``atol=1e-6``, in float64). If they differ,
it compares with each *known mistake*, implemented here as a variant of the reference, and
names the first that matches on every case; the cases are chosen so that no two variants
coincide (``T`` never 1, which hides every temperature mistake; ``alpha`` never 0.5, which
hides a swapped alpha; several batch sizes and class counts, which separate ``mean`` from
``batchmean`` and ``sum``). Anything else gets the largest difference and the case it
happened on. A ``NotImplementedError`` (the exercise's placeholder) is "not done yet", any
other exception is an "error" naming its type, message, line and likely cause.

A stuck student is never blocked: the checks and ``use`` never raise because of the
student's function (only for an unknown exercise name), and ``use`` hands back the kit's
reference, with the same signature, whenever the student's version is not correct yet.
"""
from __future__ import annotations

import copy
import inspect
import math
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NAMES", "Verdict", "softmax_t", "kd_loss", "adapter", "feature_loss", "use", "hint",
           "solution", "reference_softmax_t", "reference_kd_loss", "reference_adapter",
           "reference_feature_loss"]

NAMES = ("softmax_t", "kd_loss", "adapter", "feature_loss")

RTOL, ATOL = 1e-4, 1e-6


# --------------------------------------------------------------------------------------------
# The reference solutions: the readable textbook versions, shown by ``solution(name)`` and
# handed out by ``use(name, ...)``. Kept plain (no input checks) so that the source *is* the
# lesson; tests/test_check.py checks that they agree with kdtp.losses and kdtp.models.
# --------------------------------------------------------------------------------------------

def reference_softmax_t(logits, T):
    """Temperature softmax: the probabilities of ``logits / T`` over the classes."""
    return F.softmax(logits / T, dim=1)  # T > 1 flattens the distribution, T < 1 sharpens it


def reference_kd_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.5):
    """Hinton KD: ``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``."""
    hard = F.cross_entropy(student_logits, labels)             # on the raw logits
    log_p_student = F.log_softmax(student_logits / T, dim=1)   # kl_div wants log-probs first...
    p_teacher = F.softmax(teacher_logits.detach() / T, dim=1)  # ...and probabilities second
    soft = F.kl_div(log_p_student, p_teacher, reduction="batchmean") * T ** 2
    return alpha * hard + (1 - alpha) * soft  # T^2 keeps the soft gradients on the CE's scale


def reference_adapter(student_channels, teacher_channels):
    """A 1x1 conv (+ BN) lifting the student's map to the teacher's number of channels."""
    return nn.Sequential(
        nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(teacher_channels),
    )


def reference_feature_loss(student_map, teacher_map, adapter):
    """FitNets hint: MSE between ``adapter(student_map)`` and the (detached) teacher's map."""
    s = adapter(student_map)
    t = teacher_map.detach()                 # the teacher is frozen: no gradient for it
    if s.shape[-2:] != t.shape[-2:]:         # different resolutions: shrink the larger one
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        s = F.adaptive_avg_pool2d(s, size)
        t = F.adaptive_avg_pool2d(t, size)
    return F.mse_loss(s, t)


# --------------------------------------------------------------------------------------------
# Verdicts and the machinery shared by the checks.
# --------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """The outcome of one check.

    ``status`` is ``"correct"``, ``"mistake"``, ``"not done yet"`` or ``"error"``;
    ``mistake`` names the detected problem (e.g. ``"kl_swapped"``, ``"differs"``), ``None``
    when correct. The message is left out of the repr: the check has printed it already,
    and a notebook echoing the returned object should not show the paragraph twice.
    """
    name: str
    passed: bool
    status: str
    message: str = field(repr=False)
    mistake: str | None = None

    def __str__(self) -> str:
        return self.message


class _Stop(Exception):
    """Carries the verdict out of a check as soon as one is reached."""

    def __init__(self, verdict: Verdict):
        super().__init__(verdict.message)
        self.verdict = verdict


@dataclass(frozen=True)
class _Case:
    args: tuple
    desc: str

    def double(self) -> tuple:
        """The arguments in float64: the references and variants are computed in it."""
        return tuple(a.detach().double() if torch.is_tensor(a) and a.is_floating_point() else a
                     for a in self.args)

    def fresh(self, grad: tuple = ()) -> tuple:
        """Clones for the student (who may modify them in place), ``grad`` ones as leaves."""
        out = []
        for i, a in enumerate(self.args):
            if torch.is_tensor(a):
                a = a.detach().clone()
                if i in grad:
                    a.requires_grad_(True)
            out.append(a)
        return tuple(out)


_LAST: dict[str, tuple[object, Verdict]] = {}


def _mistake(name: str, key: str, text: str) -> Verdict:
    return Verdict(name, False, "mistake", f"{name}: mistake - {text}", key)


def _error(name: str, key: str, text: str) -> Verdict:
    return Verdict(name, False, "error", f"{name}: error - {text}", key)


def _correct(name: str, text: str) -> Verdict:
    return Verdict(name, True, "correct",
                   f"{name}: correct - {text} Use it with kdtp.check.use({name!r}, your_function).")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    text = text[0] if text else ""
    return text if len(text) <= 200 else text[:197] + "..."


def _location(e: BaseException) -> str:
    """`` (line N: `code`)`` of the innermost frame outside torch and this module, if any."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if f.filename != __file__ and "/torch/" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    return f" (line {f.lineno}: `{f.line.strip()}`)" if f.line else f" (line {f.lineno})"


def _likely_cause(e: BaseException, call: str) -> str:
    """A guess at the cause of an exception, from its type and message."""
    msg = str(e)
    low = msg.lower()
    if isinstance(e, TypeError) and any(w in low for w in ("positional argument", "unexpected keyword",
                                                           "takes", "missing")):
        return f"the signature: the check calls {call}; make yours take the same arguments in that order."
    if isinstance(e, NameError):
        return ("a name that is not defined: a typo, or an import or variable from a cell you have not "
                "run (e.g. `import torch.nn.functional as F`).")
    if isinstance(e, AttributeError):
        return ("an attribute that does not exist: check the spelling (F.log_softmax, F.kl_div, "
                "F.cross_entropy, nn.Conv2d) and what the object is (a tensor, a module?).")
    if "in-place" in low or "leaf variable" in low or "inplace" in low:
        return "an in-place operation on an input (/=, +=, .div_()): write x = x / T instead."
    if "dimension out of range" in low:
        return "a dim= that does not exist: count the input's dimensions (logits are (batch, classes))."
    if "running_mean" in low or "running_var" in low:
        return "a BatchNorm2d whose number of features is not the number of channels it receives."
    if "channels" in low and ("expected" in low or "weight" in low):
        return "a conv whose in_channels is not the number of channels of the map it receives."
    if "scalar type" in low or "dtype" in low or "long" in low:
        return "a dtype mismatch: labels stay integer class indices (long), logits and maps float."
    if any(w in low for w in ("size of tensor", "must match", "shape", "size mismatch", "broadcast")):
        return ("two tensors whose shapes do not line up: print the .shape of your intermediate "
                "results, and check your dim= arguments.")
    return "see the line above; try your function by hand on a small tensor and print the intermediates."


def _invoke(name: str, fn: Callable, args: tuple, where: str, call: str,
            on_error: Callable[[Exception], Verdict | None] | None = None):
    """Run the student's code; NotImplementedError and other exceptions become verdicts."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the verdict is the feedback: one paragraph
            return fn(*args)
    except NotImplementedError:
        raise _Stop(Verdict(
            name, False, "not done yet",
            f"{name}: not done yet - your function still raises NotImplementedError (the exercise's "
            f"placeholder). Replace the `raise NotImplementedError` line with your code and run this "
            f"check again; stuck? kdtp.check.hint({name!r}).", "not_done")) from None
    except Exception as e:  # noqa: BLE001 - any failure of the student's code is a verdict
        verdict = on_error(e) if on_error is not None else None
        raise _Stop(verdict or _error(
            name, "error", f"your function raised {type(e).__name__}: {_short(e)}{_location(e)} on "
                           f"{where}. Likely cause: {_likely_cause(e, call)}")) from None


def _run(name: str, fn, body: Callable, quiet: bool) -> Verdict:
    """Run one check, remember its verdict for ``use`` and print its message (once)."""
    try:
        if not callable(fn):
            raise _Stop(_error(name, "not_callable",
                               f"got a {type(fn).__name__}, not a function: pass the function itself "
                               f"(kdtp.check.{name}(my_{name})), not the result of calling it."))
        verdict = body(fn)
    except _Stop as stop:
        verdict = stop.verdict
    except Exception as e:  # noqa: BLE001 - e.g. an output of a type the check cannot read
        verdict = _error(name, "error", f"the check could not use your function's output "
                                        f"({type(e).__name__}: {_short(e)}); print what your "
                                        f"function returns on a small input and compare with the "
                                        f"exercise's description.")
    _LAST[name] = (fn, verdict)
    if not quiet:
        print(verdict.message)
    return verdict


def _loss_output(name: str, out, where: str, batch: int) -> torch.Tensor:
    """A loss must be a 0-dim tensor; anything else gets its own message."""
    if out is None:
        raise _Stop(_mistake(name, "returned_none", "your function returned None: did you forget the "
                                                    "`return`?"))
    if not torch.is_tensor(out):
        extra = (" (did you call .item()? that cuts the loss off from autograd: backward() needs the "
                 "tensor)") if isinstance(out, (int, float)) else ""
        raise _Stop(_mistake(name, "not_tensor", f"your function returned a {type(out).__name__}, not a "
                                                 f"tensor{extra}. Return the loss as a 0-dim torch tensor."))
    if out.dim() != 0:
        per = (" - one value per example: average over the batch to get a single number"
               if tuple(out.shape) == (batch,) else "")
        raise _Stop(_mistake(name, "not_scalar", f"your function returned a tensor of shape "
                                                 f"{tuple(out.shape)} on {where}, not a scalar (0-dim) "
                                                 f"tensor{per}."))
    return out


def _all_close(values, expected) -> bool:
    return all(v.shape == e.shape and torch.allclose(v, e, rtol=RTOL, atol=ATOL)
               for v, e in zip(values, expected))


def _variant_values(variant: Callable, cases: list[_Case]) -> list[torch.Tensor] | None:
    """The variant's output on every case, or None where it cannot be computed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [variant(*c.double()).detach() for c in cases]
    except Exception:  # noqa: BLE001 - a variant that does not apply to these cases
        return None


def _which(values, cases, variants) -> str | None:
    """The key of the first mistake variant matching ``values`` on every case."""
    for key, variant in variants:
        expected = _variant_values(variant, cases)
        if expected is not None and _all_close(values, expected):
            return key
    return None


def _first_difference(values, expected, cases) -> tuple[int, float]:
    for i, (v, e) in enumerate(zip(values, expected)):
        if not (v.shape == e.shape and torch.allclose(v, e, rtol=RTOL, atol=ATOL)):
            return i, float((v - e).abs().max()) if v.shape == e.shape else math.nan
    return -1, 0.0


def _differs(name: str, values, expected, cases, what: str) -> Verdict:
    i, diff = _first_difference(values, expected, cases)
    good = sum(v.shape == e.shape and bool(torch.allclose(v, e, rtol=RTOL, atol=ATOL))
               for v, e in zip(values, expected))
    v, e = values[i], expected[i]
    shown = f": yours {float(v):.6g}, expected {float(e):.6g}" if v.dim() == 0 else ""
    return _mistake(name, "differs",
                    f"your {what} differs from the reference by {diff:.3g} on {cases[i].desc}{shown} "
                    f"(it matches on {good} of {len(cases)} cases), and it is not one of the usual "
                    f"mistakes the check knows. Compare it term by term with the formula; "
                    f"kdtp.check.hint({name!r}) gives a nudge.")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# softmax_t
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# kd_loss
# --------------------------------------------------------------------------------------------

def _kd_cases() -> list[_Case]:
    """(batch, classes, T, alpha): T != 1 and alpha != 0.5, batches and class counts varied."""
    cases = []
    for i, (b, c, T, alpha) in enumerate(((4, 5, 2.0, 0.3), (7, 10, 4.0, 0.7),
                                          (3, 8, 3.0, 0.2), (6, 3, 2.5, 0.9))):
        g = _seeded(1300 + i)
        s = torch.randn(b, c, generator=g) * 2
        t = torch.randn(b, c, generator=g) * 3
        y = torch.randint(0, c, (b,), generator=g)
        cases.append(_Case((s, t, y, T, alpha),
                           f"case {i + 1} (batch={b}, classes={c}, T={T}, alpha={alpha})"))
    return cases


def _ce(s, y):
    return F.cross_entropy(s, y)


def _kl(t, s, Tt, Ts, reduction="batchmean"):
    """``KL(softmax(t/Tt) || softmax(s/Ts))`` with F.kl_div's ``reduction``."""
    return F.kl_div(F.log_softmax(s / Ts, dim=1), F.softmax(t / Tt, dim=1), reduction=reduction)


def _kd(s, t, T):
    return T ** 2 * _kl(t, s, T, T)


_KD_VARIANTS: list[tuple[str, Callable]] = [
    ("no_T2", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * _kl(t, s, T, T)),
    ("T_not_T2", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * T * _kl(t, s, T, T)),
    ("T2_divided", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * _kl(t, s, T, T) / T ** 2),
    ("kl_swapped", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * T ** 2 * _kl(s, t, T, T)),
    ("probs_not_log", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * T ** 2 * F.kl_div(
        F.softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean")),
    ("mean_reduction", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * T ** 2 * _kl(t, s, T, T, "mean")),
    ("sum_reduction", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * T ** 2 * _kl(t, s, T, T, "sum")),
    ("T_teacher_only", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * T ** 2 * _kl(t, s, T, 1.0)),
    ("T_student_only", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * T ** 2 * _kl(t, s, 1.0, T)),
    ("no_temperature", lambda s, t, y, T, a: a * _ce(s, y) + (1 - a) * _kl(t, s, 1.0, 1.0)),
    ("alpha_swapped", lambda s, t, y, T, a: (1 - a) * _ce(s, y) + a * _kd(s, t, T)),
    ("no_alpha", lambda s, t, y, T, a: _ce(s, y) + _kd(s, t, T)),
    ("ce_softened", lambda s, t, y, T, a: a * _ce(s / T, y) + (1 - a) * _kd(s, t, T)),
    ("kd_subtracted", lambda s, t, y, T, a: a * _ce(s, y) - (1 - a) * _kd(s, t, T)),
    ("negated", lambda s, t, y, T, a: -(a * _ce(s, y) + (1 - a) * _kd(s, t, T))),
    ("no_ce", lambda s, t, y, T, a: (1 - a) * _kd(s, t, T)),
    ("no_ce", lambda s, t, y, T, a: _kd(s, t, T)),
    ("no_kd", lambda s, t, y, T, a: a * _ce(s, y)),
    ("no_kd", lambda s, t, y, T, a: _ce(s, y)),
]

_KD_MESSAGES = {
    "no_T2": "the T^2 factor is missing: multiply the KL term by T**2. Softening by T shrinks the KL's "
             "gradients by 1/T^2; T^2 puts them back on the cross-entropy's scale, so that changing T "
             "does not silently re-weight the two terms.",
    "T_not_T2": "you multiplied the KL term by T instead of T^2: the gradients of the softened KL shrink "
                "as 1/T^2, so the factor that restores their scale is T**2.",
    "T2_divided": "you divided the KL term by T^2 instead of multiplying: the softened KL is already "
                  "1/T^2 too small in its gradients; T**2 multiplies it back.",
    "kl_swapped": "the KL arguments are swapped: you computed KL(p_student || p_teacher). The student "
                  "imitates the teacher: KL(p_teacher || p_student), i.e. F.kl_div(student's "
                  "log-probabilities, teacher's probabilities) - F.kl_div takes the *model's* log-probs "
                  "first and the *target* second.",
    "probs_not_log": "you passed probabilities instead of log-probabilities as F.kl_div's first "
                     "argument: F.kl_div(input, target) expects input = log-probabilities (the "
                     "student's log_softmax of s/T) and target = probabilities (the teacher's).",
    "mean_reduction": "you used reduction=\"mean\" instead of \"batchmean\" in F.kl_div: \"mean\" also "
                      "divides by the number of classes, so the KD term is too small by a factor of "
                      "C. \"batchmean\" is the true KL averaged over the batch.",
    "sum_reduction": "you used reduction=\"sum\" without dividing by the batch size: the KD term then "
                     "grows with the batch. Use reduction=\"batchmean\" (the KL averaged over the "
                     "examples).",
    "T_teacher_only": "the temperature is applied to the teacher only: soften both - divide the "
                      "student's logits by T as well, inside the KL term (student and teacher are "
                      "compared at the same temperature).",
    "T_student_only": "the temperature is applied to the student only: soften the teacher's logits by "
                      "T as well - its softened distribution (the 'dark knowledge') is the target.",
    "no_temperature": "the temperature is not used at all: divide both the student's and the teacher's "
                      "logits by T inside the KL term, and multiply the term by T**2.",
    "alpha_swapped": "alpha is on the wrong term: in this kit alpha weighs the hard-label "
                     "cross-entropy and (1 - alpha) the KD term (alpha=1 is plain training, alpha=0 "
                     "pure imitation).",
    "no_alpha": "the alpha weights are missing: mix the two terms as alpha * CE + (1 - alpha) * KD.",
    "ce_softened": "the cross-entropy is computed on the softened logits (student_logits / T): the "
                   "hard-label term uses the raw logits; only the KL term is softened.",
    "kd_subtracted": "the KD term is subtracted: both terms are to be minimised, so add them "
                     "(alpha * CE + (1 - alpha) * KD).",
    "negated": "the whole loss has the wrong sign: minimising it would push the student away from "
               "the labels and the teacher. Both terms are added, with a plus sign.",
    "no_ce": "the cross-entropy term is missing: the loss has only the KD term. Add the hard-label "
             "cross-entropy on the student's raw logits, weighted by alpha.",
    "no_kd": "the KD term is missing: the loss is only the (weighted) cross-entropy. Add the softened "
             "KL term, weighted by (1 - alpha).",
}


def kd_loss(fn: Callable, *, quiet: bool = False) -> Verdict:
    """Check ``fn(student_logits, teacher_logits, labels, T, alpha)`` against Hinton's KD loss.

    Four cases with T in {2, 4, 3, 2.5}, alpha in {0.3, 0.7, 0.2, 0.9}, batch sizes 3 to 7
    and 3 to 10 classes: enough to tell apart the 17 mistakes of ``_KD_VARIANTS`` (checked
    pairwise in tests/test_check.py). The student's logits require grad: a loss cut off
    from them (``.item()``, ``.detach()``) is reported too.
    """
    name, call = "kd_loss", "kd_loss(student_logits, teacher_logits, labels, T, alpha)"

    def body(fn):
        cases = _kd_cases()
        outs = []
        for c in cases:
            args = c.fresh(grad=(0,))
            out = _loss_output(name, _invoke(name, fn, args, c.desc, call), c.desc, c.args[0].shape[0])
            if not bool(torch.isfinite(out.detach()).all()):
                raise _Stop(_mistake(name, "non_finite", f"your loss is NaN or inf on {c.desc}: usually "
                                                         f"F.kl_div got log-probabilities as its target "
                                                         f"(without log_target=True), or a log of a "
                                                         f"softmax that underflowed to 0 - use "
                                                         f"F.log_softmax for the student."))
            outs.append(out)
        values = [o.detach().double() for o in outs]
        expected = [reference_kd_loss(*c.double()) for c in cases]
        if not _all_close(values, expected):
            key = _which(values, cases, _KD_VARIANTS)
            if key is not None:
                raise _Stop(_mistake(name, key, _KD_MESSAGES[key]))
            raise _Stop(_differs(name, values, expected, cases, "loss"))
        if not all(o.requires_grad for o in outs):
            raise _Stop(_mistake(name, "no_grad", "the value is right, but your loss has no gradient: it "
                                                  "is cut off from the student's logits (.item(), "
                                                  ".detach(), torch.tensor(...) or torch.no_grad()?), "
                                                  "so backward() could not train the student."))
        return _correct(name, f"matches alpha * CE + (1 - alpha) * T^2 * KL on {len(cases)} cases "
                              f"(T = 2, 4, 3, 2.5; alpha = 0.3, 0.7, 0.2, 0.9) and has a gradient.")

    return _run(name, fn, body, quiet)


# --------------------------------------------------------------------------------------------
# adapter
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# feature_loss
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# use, hint, solution
# --------------------------------------------------------------------------------------------

_HINTS = {
    "softmax_t": "Divide the logits by the temperature first, then turn each row into probabilities "
                 "with a softmax over the classes (the logits are (batch, classes): the class "
                 "dimension is 1). A temperature above 1 should flatten the distribution and below 1 "
                 "sharpen it; each row of your output should sum to 1. Prefer torch's softmax to a "
                 "hand-made exp (it stays finite on large logits).",
    "kd_loss": "Build it in three pieces. (1) The hard-label part: the cross-entropy between the "
               "student's *raw* logits and the labels. (2) The soft part: soften both logit sets by "
               "dividing them by T; F.kl_div(input, target) wants the student's LOG-probabilities as "
               "input and the teacher's probabilities as target, with reduction='batchmean' for the "
               "true KL averaged over the batch; multiply it by T squared to keep its gradients on the "
               "CE's scale. (3) Mix them: alpha weighs the hard-label part, (1 - alpha) the soft part.",
    "adapter": "The adapter is one convolution whose kernel covers a single pixel, from "
               "student_channels input channels to teacher_channels output channels (a bias is not "
               "needed if batch normalisation over the teacher's channels follows it; nn.Sequential "
               "chains the two). Return the module itself: do not apply it to anything.",
    "feature_loss": "Three steps. Lift the student's map to the teacher's width by calling the "
                    "adapter on it. Take the teacher's map out of the autograd graph (the frozen "
                    "teacher must get no gradient). If the two spatial sizes differ, shrink them to "
                    "the per-dimension minimum of the two with adaptive average pooling (this only "
                    "changes the larger). Then return the mean squared error between the two maps.",
}


@dataclass(frozen=True)
class _Exercise:
    check: Callable
    reference: Callable
    hint: str


_EXERCISES = {
    "softmax_t": _Exercise(softmax_t, reference_softmax_t, _HINTS["softmax_t"]),
    "kd_loss": _Exercise(kd_loss, reference_kd_loss, _HINTS["kd_loss"]),
    "adapter": _Exercise(adapter, reference_adapter, _HINTS["adapter"]),
    "feature_loss": _Exercise(feature_loss, reference_feature_loss, _HINTS["feature_loss"]),
}


def _exercise(name) -> _Exercise:
    if name not in _EXERCISES:
        raise ValueError(f"unknown exercise {name!r}: the exercises are {', '.join(NAMES)}")
    return _EXERCISES[name]


def use(name: str, fn: Callable | None = None) -> Callable:
    """The student's ``fn`` if it passes the check of ``name``, else the kit's reference.

    Uses the verdict of the last check of ``name`` if it was run on this very ``fn``, and
    runs the check silently otherwise. Prints which one is used. Never raises because of
    ``fn`` (a stuck student carries on with the kit's version); ``fn=None`` asks for the
    kit's directly. Raises ``ValueError`` for an unknown ``name``.
    """
    ex = _exercise(name)
    if fn is None:
        print(f"using the kit's {name}")
        return ex.reference
    last = _LAST.get(name)
    verdict = last[1] if last is not None and last[0] is fn else ex.check(fn, quiet=True)
    if verdict.passed:
        print(f"using your {name}")
        return fn
    print(f"using the kit's {name} (yours is not correct yet: kdtp.check.{name}(your_function) says why)")
    return ex.reference


def hint(name: str) -> None:
    """Print a hint for exercise ``name``: the ideas and the traps, never the code."""
    print(f"Hint for {name}: {_exercise(name).hint}")


def solution(name: str) -> None:
    """Print the reference solution's source, after a warning to try the hint first."""
    ex = _exercise(name)
    print(f"Warning: try the hint first (kdtp.check.hint({name!r})): getting it working yourself is "
          f"the exercise, and reading the answer first takes most of that away.\n\n"
          f"{inspect.getsource(ex.reference)}")
