"""Zagoruyko & Komodakis (ICLR 2017): attention transfer, added to logit KD.

The student matches *where* the teacher looks at several depths: the spatial attention
map of a stage (``sum_c |A_c|^2``, flattened, L2-normalised) has no channel axis, so a
ResNet18 and a ResNet50 (or two CNNs of different widths) compare without an adapter.
Stages correspond by depth and spatial size: ResNets' ``layer2..layer4`` (at 32 px:
16, 8 and 4 px for ResNet18 and ResNet50 alike), the small CNNs' ``layer1..layer3``.
"""
from __future__ import annotations

from torch import nn

from ..losses import AttentionTransferLoss, KDLoss
from ..models import PLAIN_CNN_ARCHS
from .base import WithTaps, register

ATTENTION_LAYERS = {"resnet18": ("layer2", "layer3", "layer4"), "resnet50": ("layer2", "layer3", "layer4"),
                    **{arch: ("layer1", "layer2", "layer3") for arch in PLAIN_CNN_ARCHS}}


@register
class AttentionKD(WithTaps):
    """``alpha*CE + (1-alpha)*T^2*KL + beta/2 * sum_stages AT(stage)``, logged ``ce``, ``kd``, ``at``.

    ``beta`` is the recipe's ``attention_weight``: 1000, the authors' value with their
    ``at_loss`` (the mean of squared differences of the normalised maps), which
    ``AttentionTransferLoss`` computes; 250 in the ``cpu`` recipe, whose maps have 4x fewer
    positions than the authors' (that mean grows as 1/positions; measured in RESULTS.md).
    The paper's AT+KD result on CIFAR (their Table 2) adds AT to KD the same way.
    """

    name = "kd_attention"
    title = "KD on logits + attention maps"
    short = "KD logits+AT"
    recipe_settings = ("temperature", "alpha", "attention_weight")
    teacher_gives = "logits + attention maps of 3 stages"

    def __init__(self, student: nn.Module, teacher: nn.Module, student_arch: str, teacher_arch: str,
                 attention_weight: float = 1000.0, label_smoothing: float = 0.0, *,
                 temperature: float = 4.0, alpha: float = 0.5):
        self.s_layers, self.t_layers = ATTENTION_LAYERS[student_arch], ATTENTION_LAYERS[teacher_arch]
        super().__init__(student, teacher, self.s_layers, self.t_layers, label_smoothing)
        self.loss = KDLoss(temperature, alpha, label_smoothing)
        self.at = AttentionTransferLoss()
        self.attention_weight = float(attention_weight)

    @classmethod
    def from_one_teacher(cls, student, teacher, recipe, *, student_arch, label_smoothing):
        return cls(student, teacher.model, student_arch, teacher.arch, recipe.attention_weight,
                   label_smoothing, temperature=recipe.temperature, alpha=recipe.alpha)

    def training_step(self, x, y):
        out, t_out = self.both(x)
        logits = out["logits"]
        terms = self.loss.terms(logits, t_out["logits"], y)
        at = sum(self.at(out[s], t_out[t]) for s, t in zip(self.s_layers, self.t_layers))
        terms["at"] = self.attention_weight / 2 * at
        return logits, terms
