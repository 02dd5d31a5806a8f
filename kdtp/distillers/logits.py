"""Hinton et al. (2015): distillation on the teacher's softened logits."""
from __future__ import annotations

import torch
from torch import nn

from ..losses import KDLoss
from .base import WithTeacher, register


@register
class LogitKD(WithTeacher):
    """Hinton KD: cross-entropy on labels plus ``T^2``-scaled KL to the teacher's soft targets."""

    name = "kd_logits"
    title = "KD on logits"
    short = "KD logits"
    recipe_settings = ("temperature", "alpha")
    reads_teacher_logits = True

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 4.0,
                 alpha: float = 0.5, label_smoothing: float = 0.0):
        super().__init__(student, teacher, label_smoothing)
        self.loss = KDLoss(temperature, alpha, label_smoothing)

    @classmethod
    def from_one_teacher(cls, student, teacher, recipe, *, student_arch, label_smoothing):
        return cls(student, teacher.model, recipe.temperature, recipe.alpha, label_smoothing)

    def training_step(self, x, y):
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = self.student(x)
        return logits, self.loss.terms(logits, teacher_logits, y)
