"""Park et al. (CVPR 2019): relational KD (distances and angles), added to logit KD.

Instead of matching each example's output, the student matches the *structure* of the
batch: how far apart the teacher puts two images (distance), and the angle three images
make (angle), on the penultimate embeddings (after global pooling, before the classifier).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..losses import KDLoss, RelationLoss
from .base import WithTaps, register

# the embedding each network hands its classifier (torchvision's ResNet: ``flatten``)
EMBEDDING_NODE = {"resnet18": "flatten", "resnet50": "flatten", "cnn_large": "pool",
                  "cnn_small": "pool", "cnn_tiny": "pool"}


@register
class RelationKD(WithTaps):
    """``alpha*CE + (1-alpha)*T^2*KL + w_D*L_D + w_A*L_A``, logged ``ce``, ``kd``, ``rkd_distance``,
    ``rkd_angle``.

    As in the authors' CIFAR-100 script (lenscloth/RKD), the embeddings are L2-normalised
    and the weights are 25 (distance) and 50 (angle): the recipe's ``rkd_distance_weight``
    and ``rkd_angle_weight``. Their script adds RKD to CE (and, optionally, to KD); here
    it is added to the recipe's logit KD so that this run minus ``kd_logits`` is what the
    relations add.
    """

    name = "kd_relations"
    title = "KD on logits + relations (RKD)"
    short = "KD logits+RKD"
    recipe_settings = ("temperature", "alpha", "rkd_distance_weight", "rkd_angle_weight")
    teacher_gives = "logits + distances and angles of embeddings"

    def __init__(self, student: nn.Module, teacher: nn.Module, student_arch: str, teacher_arch: str,
                 distance_weight: float = 25.0, angle_weight: float = 50.0, label_smoothing: float = 0.0,
                 *, temperature: float = 4.0, alpha: float = 0.5):
        self.s_node, self.t_node = EMBEDDING_NODE[student_arch], EMBEDDING_NODE[teacher_arch]
        super().__init__(student, teacher, [self.s_node], [self.t_node], label_smoothing)
        self.loss = KDLoss(temperature, alpha, label_smoothing)
        self.rkd = RelationLoss(distance_weight, angle_weight)

    @classmethod
    def from_one_teacher(cls, student, teacher, recipe, *, student_arch, label_smoothing):
        return cls(student, teacher.model, student_arch, teacher.arch, recipe.rkd_distance_weight,
                   recipe.rkd_angle_weight, label_smoothing, temperature=recipe.temperature,
                   alpha=recipe.alpha)

    def training_step(self, x, y):
        out, t_out = self.both(x)
        logits = out["logits"]
        terms = self.loss.terms(logits, t_out["logits"], y)
        s_emb = F.normalize(out[self.s_node].float().flatten(1), dim=1)
        t_emb = F.normalize(t_out[self.t_node].float().flatten(1), dim=1)
        terms.update(self.rkd.terms(s_emb, t_emb))
        return logits, terms
