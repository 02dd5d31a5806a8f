"""The ``kd_loss`` exercise: Hinton's KD loss (``kdtp.losses.KDLoss``), and its check."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .base import (Verdict, _Case, _Stop, _all_close, _correct, _differs, _invoke, _loss_output, _mistake,
                   _register, _run, _seeded, _which)


# The reference solution (plain, no input checks: its source is the lesson; see base.py).
def reference_kd_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.5):
    """Hinton KD: ``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``."""
    hard = F.cross_entropy(student_logits, labels)             # on the raw logits
    log_p_student = F.log_softmax(student_logits / T, dim=1)   # kl_div wants log-probs first...
    p_teacher = F.softmax(teacher_logits.detach() / T, dim=1)  # ...and probabilities second
    soft = F.kl_div(log_p_student, p_teacher, reduction="batchmean") * T ** 2
    return alpha * hard + (1 - alpha) * soft  # T^2 keeps the soft gradients on the CE's scale


# The hint: the ideas and the traps, never the code.
_HINT = ("Build it in three pieces. (1) The hard-label part: the cross-entropy between the "
         "student's *raw* logits and the labels. (2) The soft part: soften both logit sets by "
         "dividing them by T; F.kl_div(input, target) wants the student's LOG-probabilities as "
         "input and the teacher's probabilities as target, with reduction='batchmean' for the "
         "true KL averaged over the batch; multiply it by T squared to keep its gradients on the "
         "CE's scale. (3) Mix them: alpha weighs the hard-label part, (1 - alpha) the soft part.")


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


_register("kd_loss", kd_loss, reference_kd_loss, _HINT)
