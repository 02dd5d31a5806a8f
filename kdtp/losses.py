"""Distillation objectives, each a small ``nn.Module`` with its shapes checked.

The notebooks show the formulas; these modules are the same formulas with input checks,
so a student who passes the wrong tensor gets a sentence, not a broadcasting surprise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_logits(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits "
                         f"{tuple(teacher.shape)} must both be (batch, classes) and equal")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != student.shape[0]):
        raise ValueError(f"labels {tuple(labels.shape)} must be (batch,) = ({student.shape[0]},)")


def kd_kl_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, KL averaged over the batch.

    Why ``T^2``: the gradient of the softened KL scales as ``1/T^2``; multiplying back
    keeps the soft-target term comparable to the cross-entropy whatever T is (Hinton 2015).
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature ** 2


class KDLoss(nn.Module):
    """Hinton knowledge distillation on logits.

    ``loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``

    Convention (the reference lab's): ``alpha`` weighs the *hard-label* cross-entropy;
    ``alpha=1`` is plain training, ``alpha=0`` pure imitation of the teacher. ``terms``
    returns the two weighted parts separately so a notebook can plot them.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5, label_smoothing: float = 0.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got T={temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (it weighs the hard-label loss), got alpha={alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)

    def terms(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              labels: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_logits(student_logits, teacher_logits, labels)
        ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=self.label_smoothing)
        kd = kd_kl_term(student_logits, teacher_logits, self.temperature)
        return {"ce": self.alpha * ce, "kd": (1.0 - self.alpha) * kd}

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        t = self.terms(student_logits, teacher_logits, labels)
        return t["ce"] + t["kd"]

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


class FeatureLoss(nn.Module):
    """FitNets-style hint: MSE between ``adapter(student map)`` and the teacher's map.

    The adapter (1x1 conv) fixes the channel mismatch (512 -> 2048 for ResNet18 ->
    ResNet50); a spatial mismatch is fixed by average-pooling the larger map down to the
    smaller one. The adapter is trained with the student and dropped for evaluation.
    """

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        if student_map.dim() != 4 or teacher_map.dim() != 4 or student_map.shape[0] != teacher_map.shape[0]:
            raise ValueError(f"feature maps must be (batch, C, H, W) with equal batch: student "
                             f"{tuple(student_map.shape)}, teacher {tuple(teacher_map.shape)}")
        s = self.adapter(student_map)
        if s.shape[1] != teacher_map.shape[1]:
            raise ValueError(f"adapter gives {s.shape[1]} channels but the teacher map has "
                             f"{teacher_map.shape[1]}: build it with make_adapter(student C, teacher C)")
        t = teacher_map
        if s.shape[-2:] != t.shape[-2:]:
            size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
        return F.mse_loss(s.float(), t.float())


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Spatial attention of a map (Zagoruyko & Komodakis): channel-mean of squares, L2-normalised."""
    return F.normalize(feature.float().pow(2).mean(1).flatten(1), dim=1)


class AttentionTransferLoss(nn.Module):
    """Attention transfer: match where the two networks look, not what they compute.

    Needs no adapter (channels are averaged away); spatial sizes are pooled to match.
    """

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        if student_map.dim() != 4 or teacher_map.dim() != 4:
            raise ValueError(f"feature maps must be 4-D, got {tuple(student_map.shape)} "
                             f"and {tuple(teacher_map.shape)}")
        s, t = student_map, teacher_map
        if s.shape[-2:] != t.shape[-2:]:
            size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
        return (attention_map(s) - attention_map(t)).pow(2).mean()


class RelationLoss(nn.Module):
    """Relational KD (distance-wise RKD): match the batch's pairwise-distance structure."""

    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        s, t = student_emb.float().flatten(1), teacher_emb.float().flatten(1)
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"batch sizes differ: student {s.shape[0]}, teacher {t.shape[0]}")
        ds, dt = torch.cdist(s, s), torch.cdist(t, t)
        ds = ds / ds[ds > 0].mean().clamp_min(1e-8)
        dt = dt / dt[dt > 0].mean().clamp_min(1e-8)
        return F.smooth_l1_loss(ds, dt)
