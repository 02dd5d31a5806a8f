"""Training strategies: what one step computes, as a dict of named loss terms.

Following mdistiller, a strategy wraps the student (and a frozen teacher) and its
``training_step`` returns the student's logits and ``{"ce": ..., "kd": ...}``; ``fit`` only
sums the dict and logs each term, so a notebook can plot the hard-label and distillation
parts separately and a new method is one new class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses import FeatureLoss, KDLoss
from .models import FEATURE_LAYER, feature_shape, feature_tap, make_adapter


class Strategy(nn.Module):
    """Plain supervised training of ``student`` (label-smoothed cross-entropy)."""

    name = "baseline"

    def __init__(self, student: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.student = student
        self.label_smoothing = label_smoothing

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Trainable parts other than the student (an adapter); saved in ``last`` only."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


class _WithTeacher(Strategy):
    """A strategy with a frozen teacher: eval mode, no gradients, never in ``state_dict``."""

    def __init__(self, student: nn.Module, teacher: nn.Module, label_smoothing: float = 0.0):
        super().__init__(student, label_smoothing)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not saved, not trained

    def train(self, mode: bool = True) -> "_WithTeacher":
        super().train(mode)
        self.teacher.eval()  # BN statistics of the teacher must never move
        return self


class LogitKD(_WithTeacher):
    """Hinton KD: cross-entropy on labels plus ``T^2``-scaled KL to the teacher's soft targets."""

    name = "kd_logits"

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 4.0,
                 alpha: float = 0.5, label_smoothing: float = 0.0):
        super().__init__(student, teacher, label_smoothing)
        self.loss = KDLoss(temperature, alpha, label_smoothing)

    def training_step(self, x, y):
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = self.student(x)
        return logits, self.loss.terms(logits, teacher_logits, y)


class FeatureKD(_WithTeacher):
    """The reference lab's feature KD: logit KD *plus* a hint on the last stage (layer4).

    ``loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(p_t || p_s) + beta * MSE(A(F_s), F_t)``,
    the three terms logged as ``ce``, ``kd`` and ``feat``. Built on top of logit KD so that
    comparing this run with ``kd_logits`` measures what the features add (the reference lab,
    section 4.3). ``beta`` is the recipe's ``feature_weight``; ``A`` the 1x1 adapter.
    """

    name = "kd_features"

    def __init__(self, student: nn.Module, teacher: nn.Module, student_arch: str,
                 teacher_arch: str, image_size: int = 32, feature_weight: float = 1.0,
                 label_smoothing: float = 0.0, *, temperature: float = 4.0, alpha: float = 0.5):
        super().__init__(student, teacher, label_smoothing)
        self.loss = KDLoss(temperature, alpha, label_smoothing)
        self.s_layer, self.t_layer = FEATURE_LAYER[student_arch], FEATURE_LAYER[teacher_arch]
        s_c = feature_shape(student, self.s_layer, image_size)[0]
        t_c = feature_shape(teacher, self.t_layer, image_size)[0]
        device = next(student.parameters()).device
        self.hint = FeatureLoss(make_adapter(s_c, t_c)).to(device).to(memory_format=torch.channels_last)
        self.feature_weight = feature_weight
        object.__setattr__(self, "student_tap", feature_tap(student, [self.s_layer]))
        object.__setattr__(self, "teacher_tap", feature_tap(teacher, [self.t_layer]))

    def train(self, mode: bool = True) -> "FeatureKD":
        super().train(mode)
        self.student_tap.train(mode)
        self.teacher_tap.eval()
        return self

    def training_step(self, x, y):
        with torch.no_grad():
            t_out = self.teacher_tap(x)
        out = self.student_tap(x)
        logits = out["logits"]
        terms = self.loss.terms(logits, t_out["logits"], y)
        terms["feat"] = self.feature_weight * self.hint(out[self.s_layer], t_out[self.t_layer])
        return logits, terms

    def extra_state(self):
        return {f"hint.{k}": v for k, v in self.hint.state_dict().items()}

    def load_extra_state(self, state):
        self.hint.load_state_dict({k[len("hint."):]: v for k, v in state.items() if k.startswith("hint.")})
