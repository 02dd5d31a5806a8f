"""Distillation from several teachers at once: their soft targets averaged, or weighted per image.

Two methods, one class each, both the loss of ``kd_logits`` with the teachers' *ensemble*
target in place of one teacher's soft target:

- ``kd_multi_mean``: the plain average of the teachers' temperature-softened probabilities,
  ``p = (1/K) sum_k softmax(z_k / T)`` (Hinton et al. 2015 distil an ensemble this way);
- ``kd_multi_confidence``: the weights of CA-MKD (Zhang, Chen & Wang, "Confidence-Aware
  Multi-Teacher Knowledge Distillation", ICASSP 2022, arXiv:2201.00007), per image and teacher,
  ``w_k = (1 - softmax_k(CE_k)) / (K - 1)`` with ``CE_k = CE(z_k, y)`` the teacher's
  cross-entropy with the label at temperature 1: the teacher closest to the one-hot label
  weighs most (the authors' code, Rorozhl/CA-MKD ``helper/loops.py``, ``ensemble_method ==
  'CAMKD'``). For two teachers this is ``softmax_k(-CE_k)``. Only the paper's weighting of
  the logit term is used; its intermediate-layer term is not.

The paper weighs the per-teacher losses, ``sum_k w_k T^2 KL(p_k || q)``; the kit distils from
the weighted mixture, ``T^2 KL(sum_k w_k p_k || q)``. The two differ by
``T^2 sum_k w_k KL(p_k || p)``, which does not depend on the student: the student gets the
same gradient (tests/test_multi_teacher.py checks both). The authors' code also divides the
term by ``K``; the kit does not, so ``alpha`` means what it means in ``kd_logits``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..env import ConfigError
from ..losses import KDLoss, _as_float, _check_logits, _check_temperature, _values_checked
from .base import Strategy, Teacher, freeze, register


def _stacked(teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K, batch, classes) float logits of K >= 1 teachers, shapes checked."""
    if len(teacher_logits) == 0:
        raise ValueError("no teacher logits given: pass one (batch, classes) tensor per teacher")
    first = teacher_logits[0]
    for k, z in enumerate(teacher_logits):
        if z.dim() != 2 or z.shape != first.shape:
            raise ValueError(f"teacher {k}'s logits {tuple(z.shape)} must be (batch, classes) like "
                             f"teacher 0's {tuple(first.shape)}: every teacher sees the same batch")
    return torch.stack([_as_float(z.detach()) for z in teacher_logits])


def confidence_weights(teacher_logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """CA-MKD's weight of each teacher on each image, (K, batch); each column sums to 1.

    ``w_k = (1 - softmax_k(CE_k)) / (K - 1)``, ``CE_k`` the teacher's cross-entropy with the
    label (temperature 1, unsmoothed): a teacher that is right, and sure, weighs most. Why
    per image: two teachers of similar accuracy are wrong on different images, and a mean
    would let the wrong one pull the target away from the label there.
    """
    z = _stacked(teacher_logits)
    if len(z) < 2:
        raise ValueError("confidence weights compare teachers: give at least 2 teachers' logits")
    _check_logits(z[0], z[0], labels)
    ce = torch.stack([F.cross_entropy(zk, labels.long(), reduction="none") for zk in z])   # (K, B)
    return (1.0 - torch.softmax(ce, dim=0)) / (len(z) - 1)


def ensemble_soft_targets(teacher_logits: Sequence[torch.Tensor], temperature: float,
                          weights: torch.Tensor | None = None) -> torch.Tensor:
    """The ensemble's soft target, (batch, classes): ``sum_k w_k softmax(z_k / T)``.

    ``weights``: (K, batch) or (K,), each summing to 1 over the teachers; ``None`` is the
    plain mean ``1/K``. A mixture of distributions is a distribution, so the target sums to 1
    per image; it is detached (a target, never trained).
    """
    t = _check_temperature(temperature)
    z = _stacked(teacher_logits)
    probs = torch.softmax(z / t, dim=2)                                                    # (K, B, C)
    if weights is None:
        return probs.mean(0)
    w = _as_float(weights.detach()).to(probs.device)
    w = w[:, None].expand(-1, probs.shape[1]) if w.dim() == 1 else w
    if w.shape != probs.shape[:2]:
        raise ValueError(f"weights {tuple(weights.shape)} must be (teachers, batch) = {tuple(probs.shape[:2])} "
                         "or (teachers,)")
    # a value check reads a number back from the device: CPU tensors only in fit (kdtp.losses)
    if _values_checked(w) and (bool((w < 0).any()) or not torch.allclose(w.sum(0), torch.ones_like(w[0]), atol=1e-4)):
        raise ValueError("weights must be >= 0 and sum to 1 over the teachers for every image "
                         "(a weighted average of distributions); normalise them first")
    return (w[:, :, None] * probs).sum(0)


def ensemble_accuracy(probs: Sequence[torch.Tensor], labels: torch.Tensor) -> float:
    """Top-1 accuracy of the mean of ``probs`` (one (n, classes) softmax output per model).

    The usual ensemble: average the members' probabilities, take the most likely class.
    It uses no label, unlike the confidence weights, which exist only where labels do (training).
    """
    mean = _stacked(probs).mean(0)
    return (mean.argmax(1) == labels.to(mean.device)).float().mean().item()


@register
class MultiTeacherKD(Strategy):
    """KD from the average of K >= 2 frozen teachers' soft targets (``kd_multi_mean``)."""

    name = "kd_multi_mean"
    title = "KD on the mean of the teachers' soft targets"
    short = "KD mean of teachers"
    needs_teacher = True
    recipe_settings = ("temperature", "alpha")
    teacher_gives = "logits of 2+ teachers, averaged"
    reads_teacher_logits = True

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module], temperature: float = 4.0,
                 alpha: float = 0.5, label_smoothing: float = 0.0):
        super().__init__(student, label_smoothing)
        if len(teachers) < 2:
            raise ConfigError(f"method {self.name!r} distils an ensemble: it needs at least 2 teachers, got "
                              f"{len(teachers)}; declare the run with teacher=('teacher_resnet50', "
                              "'teacher_b'), or use method='kd_logits' for one teacher")
        for t in teachers:
            freeze(t)
        object.__setattr__(self, "teachers", tuple(teachers))   # not submodules: not saved, not trained
        self.loss = KDLoss(temperature, alpha, label_smoothing)  # its checks, and the weighted CE term

    @classmethod
    def from_recipe(cls, student, teachers: list[Teacher], recipe, *, student_arch, label_smoothing):
        return cls(student, [t.model for t in teachers], recipe.temperature, recipe.alpha, label_smoothing)

    def train(self, mode: bool = True) -> "MultiTeacherKD":
        super().train(mode)
        for t in self.teachers:
            t.eval()   # BN statistics of the teachers must never move
        return self

    def weights(self, teacher_logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor | None:
        """(K, batch) weights of the teachers, or None for the plain mean."""
        return None

    def targets(self, teacher_logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return ensemble_soft_targets(teacher_logits, self.loss.temperature, self.weights(teacher_logits, labels))

    def terms(self, logits: torch.Tensor, teacher_logits: list[torch.Tensor],
              labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``alpha CE(s, y)`` and ``(1 - alpha) T^2 KL(p_ensemble || softmax(s / T))`` (batch mean)."""
        for z in teacher_logits:
            _check_logits(logits, z, labels)
        t, a = self.loss.temperature, self.loss.alpha
        target = self.targets(teacher_logits, labels)
        ce = F.cross_entropy(_as_float(logits), labels.long(), label_smoothing=self.label_smoothing)
        kd = F.kl_div(F.log_softmax(_as_float(logits) / t, dim=1), target.to(_as_float(logits).dtype),
                      reduction="batchmean") * t ** 2
        return {"ce": a * ce, "kd": (1.0 - a) * kd}

    def training_step(self, x, y):
        with torch.no_grad():
            teacher_logits = [t(x) for t in self.teachers]
        logits = self.student(x)
        return logits, self.terms(logits, teacher_logits, y)


@register
class ConfidenceMultiTeacherKD(MultiTeacherKD):
    """KD from the teachers' soft targets weighted per image by CA-MKD's confidence (``kd_multi_confidence``)."""

    name = "kd_multi_confidence"
    title = "KD on the teachers' soft targets weighted by CA-MKD"
    short = "KD CA-MKD weights"
    teacher_gives = "logits of 2+ teachers, weighted by their CE with the label"

    def weights(self, teacher_logits, labels):
        return confidence_weights(teacher_logits, labels)
