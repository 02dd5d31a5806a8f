"""The machinery shared by the exercise checks: verdicts, running the student's code, the
comparisons with the reference and the known mistakes, and ``use`` / ``hint`` / ``solution``.

Each exercise has its own module (``ex_softmax_t``, ``ex_kd_loss``, ``ex_adapter``,
``ex_feature_loss``) holding its reference solution, its cases, its known mistakes (as
variants of the reference) with their messages, its check and its hint; it imports this
module only, and registers itself with ``_register`` when imported (``kdtp.check`` imports
all four). The reference solutions are the readable textbook versions, shown by
``solution(name)`` and handed out by ``use(name, ...)``. Kept plain (no input checks) so that
the source *is* the lesson; tests/test_check.py checks that they agree with kdtp.losses and
kdtp.models.
"""
from __future__ import annotations

import inspect
import math
import os
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

NAMES = ("softmax_t", "kd_loss", "adapter", "feature_loss")

RTOL, ATOL = 1e-4, 1e-6


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


_PACKAGE_DIR = os.path.dirname(__file__)  # frames of the check's own files are not the student's


def _location(e: BaseException) -> str:
    """`` (line N: `code`)`` of the innermost frame outside torch and this package, if any."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.dirname(f.filename) != _PACKAGE_DIR
              and "/torch/" not in f.filename.replace("\\", "/")]
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
# use, hint, solution
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Exercise:
    check: Callable
    reference: Callable
    hint: str


_EXERCISES: dict[str, _Exercise] = {}  # filled by each exercise's module, through _register


def _register(name: str, check: Callable, reference: Callable, hint: str) -> None:
    """Make exercise ``name`` known to ``use``, ``hint`` and ``solution``."""
    _EXERCISES[name] = _Exercise(check, reference, hint)


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
