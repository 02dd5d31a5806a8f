"""Park et al. (CVPR 2019): relational KD (distances and angles), added to logit KD.

Instead of matching each example's output, the student matches the *structure* of the
batch: how far apart the teacher puts two images (distance), and the angle three images
make (angle), on the penultimate embeddings (after global pooling, before the classifier).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..losses import KDLoss, RelationLoss
from ..models import PLAIN_CNN_ARCHS
from .base import WithTaps, register

# the embedding each network hands its classifier (torchvision's ResNet: ``flatten``)
EMBEDDING_NODE = {"resnet18": "flatten", "resnet50": "flatten", **{arch: "pool" for arch in PLAIN_CNN_ARCHS}}


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
    recipe_settings = ("temperature", "alpha", "rkd_distance_weight", "rkd_angle_weight", "rkd_group_size")
    teacher_gives = "logits + distances and angles of embeddings"

    def __init__(self, student: nn.Module, teacher: nn.Module, student_arch: str, teacher_arch: str,
                 distance_weight: float = 25.0, angle_weight: float = 50.0, label_smoothing: float = 0.0,
                 *, temperature: float = 4.0, alpha: float = 0.5, group_size: int = 0):
        self.s_node, self.t_node = EMBEDDING_NODE[student_arch], EMBEDDING_NODE[teacher_arch]
        super().__init__(student, teacher, [self.s_node], [self.t_node], label_smoothing)
        self.loss = KDLoss(temperature, alpha, label_smoothing)
        self.rkd = RelationLoss(distance_weight, angle_weight)
        self.group_size = group_size

    @classmethod
    def from_one_teacher(cls, student, teacher, recipe, *, student_arch, label_smoothing):
        return cls(student, teacher.model, student_arch, teacher.arch, recipe.rkd_distance_weight,
                   recipe.rkd_angle_weight, label_smoothing, temperature=recipe.temperature,
                   alpha=recipe.alpha, group_size=recipe.rkd_group_size)

    def training_step(self, x, y):
        out, t_out = self.both(x)
        logits = out["logits"]
        terms = self.loss.terms(logits, t_out["logits"], y)
        s_emb = F.normalize(out[self.s_node].float().flatten(1), dim=1)
        t_emb = F.normalize(t_out[self.t_node].float().flatten(1), dim=1)
        terms.update(grouped_relation_terms(self.rkd, s_emb, t_emb, self.group_size))
        return logits, terms


def relation_groups(n: int, group_size: int) -> list[slice]:
    """Consecutive slices of ``group_size`` examples covering a batch of ``n``; a last group
    too small to hold a pair joins the one before. ``group_size`` 0: one group, the batch."""
    if group_size <= 0 or group_size >= n:
        return [slice(0, n)]
    starts = list(range(0, n, group_size))
    if n - starts[-1] < 2:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n])]


def grouped_relation_terms(rkd: RelationLoss, s_emb, t_emb, group_size: int) -> dict:
    """RKD's terms within groups of the batch, averaged with each group weighted by its size.

    Why groups: the angle term compares every triplet, N^3 of them; at the ``cpu`` recipe's
    batch of 512 (134 million triplets) one step took minutes on two CPU cores, at 4 groups
    of 128 it costs 4 x 2 million. A departure from the paper, where the batch is the group:
    the relations of images in different groups are not compared (the batch shuffles each
    epoch, so every pair meets in some epochs). ``group_size`` 0 or >= the batch: the paper's loss.
    """
    groups = relation_groups(s_emb.shape[0], group_size)
    if len(groups) == 1:
        return rkd.terms(s_emb, t_emb)
    total = s_emb.shape[0]
    out: dict = {}
    for g in groups:
        share = (g.stop - g.start) / total
        for key, value in rkd.terms(s_emb[g], t_emb[g]).items():
            out[key] = out.get(key, 0) + share * value
    return out
