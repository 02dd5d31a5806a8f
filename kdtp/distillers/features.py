"""The reference lab's feature KD: logit KD plus a FitNets-style hint on the last stage."""
from __future__ import annotations

import torch
from torch import nn

from ..losses import FeatureLoss, KDLoss
from ..models import FEATURE_LAYER, feature_shape, make_adapter
from .base import WithTaps, register


@register
class FeatureKD(WithTaps):
    """The reference lab's feature KD: logit KD *plus* a hint on the last stage (layer4).

    ``loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(p_t || p_s) + beta * MSE(A(F_s), F_t)``,
    the three terms logged as ``ce``, ``kd`` and ``feat``. Built on top of logit KD so that
    comparing this run with ``kd_logits`` measures what the features add (the reference lab,
    section 4.3). ``beta`` is the recipe's ``feature_weight``; ``A`` the 1x1 adapter.
    """

    name = "kd_features"
    title = "KD on logits + features"
    short = "KD logits+feat"
    recipe_settings = ("temperature", "alpha", "feature_weight")
    teacher_gives = "logits + last-stage features"

    def __init__(self, student: nn.Module, teacher: nn.Module, student_arch: str,
                 teacher_arch: str, image_size: int = 32, feature_weight: float = 1.0,
                 label_smoothing: float = 0.0, *, temperature: float = 4.0, alpha: float = 0.5):
        self.s_layer, self.t_layer = FEATURE_LAYER[student_arch], FEATURE_LAYER[teacher_arch]
        super().__init__(student, teacher, [self.s_layer], [self.t_layer], label_smoothing)
        self.loss = KDLoss(temperature, alpha, label_smoothing)
        s_c = feature_shape(student, self.s_layer, image_size)[0]
        t_c = feature_shape(teacher, self.t_layer, image_size)[0]
        device = next(student.parameters()).device
        self.hint = FeatureLoss(make_adapter(s_c, t_c)).to(device).to(memory_format=torch.channels_last)
        self.feature_weight = feature_weight

    @classmethod
    def from_one_teacher(cls, student, teacher, recipe, *, student_arch, label_smoothing):
        return cls(student, teacher.model, student_arch, teacher.arch, recipe.image_size,
                   recipe.feature_weight, label_smoothing,
                   temperature=recipe.temperature, alpha=recipe.alpha)

    def training_step(self, x, y):
        out, t_out = self.both(x)
        logits = out["logits"]
        terms = self.loss.terms(logits, t_out["logits"], y)
        terms["feat"] = self.feature_weight * self.hint(out[self.s_layer], t_out[self.t_layer])
        return logits, terms

    def extra_state(self):
        return {f"hint.{k}": v for k, v in self.hint.state_dict().items()}

    def load_extra_state(self, state):
        self.hint.load_state_dict({k[len("hint."):]: v for k, v in state.items() if k.startswith("hint.")})
