"""Kim et al. (ICCV 2021): progressive self-knowledge distillation (PS-KD), no teacher.

The model is its own teacher: at epoch ``t`` of ``T`` its targets are
``(1 - a_t) * onehot(y) + a_t * p_{t-1}(x)``, ``a_t = alpha_T * t / T``, where ``p_{t-1}`` is
what the model itself predicted at the previous epoch. Here ``t`` counts epochs from 0 (the
first epoch has no past and learns from the labels alone), so ``a_t`` reaches
``alpha_T * (T-1)/T`` at the last epoch; the paper counts from 1 and reaches ``alpha_T``. Early on it learns from labels;
later, more and more from its own softened past, which penalises over-confidence much as
label smoothing does, but per example.

Difference of convention, stated: the authors store each training image's prediction
made *during* epoch ``t-1`` (on that epoch's augmented view, in training mode) and look it
up by index; here ``p_{t-1}`` comes from a frozen copy of the model as it was at the end
of epoch ``t-1``, run in eval mode on the current batch. It needs no per-image memory
(50,000 x 10 floats) and no image indices from the loader, costs one extra forward pass
per step (like any KD), and is exactly resumable: the copy is the weights a resumed run
restarts from.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .base import Strategy, freeze, register


@register
class ProgressiveSelfKD(Strategy):
    """Cross-entropy on the mixed targets, logged as one term ``ce`` (the paper's single loss)."""

    name = "ps_kd"
    title = "progressive self-KD (own past predictions)"
    short = "PS-KD (self)"
    recipe_settings = ("pskd_alpha",)
    teacher_gives = "nothing (its own previous epoch)"

    def __init__(self, student: nn.Module, alpha_T: float = 0.8, label_smoothing: float = 0.0):
        super().__init__(student, label_smoothing)
        if not 0.0 <= float(alpha_T) <= 1.0:
            raise ValueError(f"alpha_T must be in [0, 1] (the weight of the model's own past "
                             f"predictions at the last epoch), got {alpha_T!r}")
        self.alpha_T = float(alpha_T)
        self.alpha_t = 0.0
        object.__setattr__(self, "previous", None)   # not a submodule: never saved or trained

    @classmethod
    def from_recipe(cls, student, teachers, recipe, *, student_arch, label_smoothing):
        return cls(student, recipe.pskd_alpha, label_smoothing)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Before epoch ``epoch`` (0-based): freeze a copy of the model as it is now."""
        self.alpha_t = self.alpha_T * epoch / epochs
        if epoch == 0:
            object.__setattr__(self, "previous", None)
            return
        object.__setattr__(self, "previous", freeze(copy.deepcopy(self.student)))

    def targets(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        hard = F.one_hot(y, num_classes).float()
        if self.label_smoothing:
            hard = hard * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        if self.previous is None or self.alpha_t == 0:
            return hard
        with torch.no_grad():
            past = F.softmax(self.previous(x).float(), dim=1)
        return (1 - self.alpha_t) * hard + self.alpha_t * past

    def training_step(self, x, y):
        logits = self.student(x)
        soft = self.targets(x, y, logits.shape[1])
        return logits, {"ce": torch.sum(-soft * F.log_softmax(logits.float(), dim=1), dim=1).mean()}
