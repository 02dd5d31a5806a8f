"""Distillation objectives, each a small ``nn.Module`` with its shapes checked.

The notebooks show the formulas; these modules are the same formulas with input checks,
so a student who passes the wrong tensor gets a sentence, not a broadcasting surprise.

Safe in a student's own loop:

* every loss detaches the teacher's tensors itself, so the teacher never receives a
  gradient through it, even if it was run without ``torch.no_grad()``;
* a NaN or inf in any input, an impossible temperature, labels that are not class indices
  and mismatched batches are ``ValueError``s naming the argument (one
  ``torch.isfinite(x).all()`` per tensor: cheap, but one host sync each on a GPU);
* half and bfloat16 inputs are computed in float32, float64 inputs stay float64 (so the
  losses can be checked against float64 references and with ``gradcheck``).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """float32 for everything but float64, which keeps its precision."""
    return x if x.dtype == torch.float64 else x.float()


_VALUE_CHECKS = {"on_accelerators": True}


@contextlib.contextmanager
def value_checks_on_accelerators(enabled: bool):
    """Turn the value checks (NaN/inf, label range) off or on for GPU tensors, within a block.

    Each check reads one number back from the device, a host sync that stalls a GPU's
    queue every step. The kit's own loop (``kdtp.train.fit``) turns them off on a GPU;
    shape, dtype and temperature checks cost nothing and always run, and every check runs
    on CPU tensors.
    """
    before = _VALUE_CHECKS["on_accelerators"]
    _VALUE_CHECKS["on_accelerators"] = bool(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS["on_accelerators"] = before


def _values_checked(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" or _VALUE_CHECKS["on_accelerators"]


def _check_finite(name: str, x: torch.Tensor) -> None:
    if _values_checked(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} {tuple(x.shape)} contains NaN or inf: the network that produced it "
                         f"has diverged or was fed a bad batch; check the inputs, lower the learning "
                         f"rate, and restart from the last good checkpoint")


def _check_temperature(temperature) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"temperature must be a number > 0, got T={temperature!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got T={temperature}: it divides "
                         f"the logits (T=1 leaves the softmax as it is, 2 to 8 is usual)")
    return t


def _check_logits(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits "
                         f"{tuple(teacher.shape)} must both be (batch, classes) and equal")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != student.shape[0]):
        raise ValueError(f"labels {tuple(labels.shape)} must be (batch,) = ({student.shape[0]},)")
    _check_finite("student_logits", student)
    _check_finite("teacher_logits", teacher)
    if labels is not None:
        classes = student.shape[1]
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}: pass the "
                             f"class numbers (e.g. labels.long()), not one-hot rows or probabilities")
        if _values_checked(labels) and bool(((labels < 0) | (labels >= classes)).any()):
            raise ValueError(f"labels must be class indices in [0, {classes}), got values from "
                             f"{int(labels.min())} to {int(labels.max())}: the logits have {classes} "
                             f"classes; check the dataset's labels against the model's num_classes")


def _kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature) -> torch.Tensor:
    log_p_s = F.log_softmax(_as_float(student_logits) / temperature, dim=1)
    log_p_t = F.log_softmax(_as_float(teacher_logits.detach()) / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature ** 2


def kd_kl_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, KL averaged over the batch.

    Why ``T^2``: the gradient of the softened KL scales as ``1/T^2``; multiplying back
    keeps the soft-target term comparable to the cross-entropy whatever T is (Hinton 2015).
    The teacher's logits are detached: only the student gets a gradient.
    """
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    _check_finite("student_logits", student_logits)
    _check_finite("teacher_logits", teacher_logits)
    return _kd_kl(student_logits, teacher_logits, temperature)


class KDLoss(nn.Module):
    """Hinton knowledge distillation on logits.

    ``loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``

    Convention (the reference lab's): ``alpha`` weighs the *hard-label* cross-entropy;
    ``alpha=1`` is plain training, ``alpha=0`` pure imitation of the teacher. ``terms``
    returns the two weighted parts separately so a notebook can plot them. The KL is
    averaged over the batch (``batchmean``), the CE too; the teacher's logits are detached.
    ``labels`` are integer class indices in ``[0, classes)`` (any integer dtype).
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5, label_smoothing: float = 0.0):
        super().__init__()
        _check_temperature(temperature)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (it weighs the hard-label loss), got alpha={alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)

    def terms(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              labels: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_logits(student_logits, teacher_logits, labels)
        ce = F.cross_entropy(_as_float(student_logits), labels.long(), label_smoothing=self.label_smoothing)
        kd = _kd_kl(student_logits, teacher_logits, self.temperature)
        return {"ce": self.alpha * ce, "kd": (1.0 - self.alpha) * kd}

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        t = self.terms(student_logits, teacher_logits, labels)
        return t["ce"] + t["kd"]

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"


def _check_maps(student_map: torch.Tensor, teacher_map: torch.Tensor) -> None:
    if student_map.dim() != 4 or teacher_map.dim() != 4 or student_map.shape[0] != teacher_map.shape[0]:
        raise ValueError(f"feature maps must be (batch, C, H, W) with equal batch: student "
                         f"{tuple(student_map.shape)}, teacher {tuple(teacher_map.shape)}")
    _check_finite("student_map", student_map)
    _check_finite("teacher_map", teacher_map)


class FeatureLoss(nn.Module):
    """FitNets-style hint: MSE between ``adapter(student map)`` and the teacher's map.

    The adapter (1x1 conv) fixes the channel mismatch (512 -> 2048 for ResNet18 ->
    ResNet50); a spatial mismatch is fixed by average-pooling the larger map down to the
    smaller one. The adapter is trained with the student and dropped for evaluation.
    The teacher's map is detached.
    """

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        _check_maps(student_map, teacher_map)
        s = self.adapter(student_map)
        if s.shape[1] != teacher_map.shape[1]:
            raise ValueError(f"adapter gives {s.shape[1]} channels but the teacher map has "
                             f"{teacher_map.shape[1]}: build it with make_adapter(student C, teacher C)")
        t = teacher_map.detach()
        if s.shape[-2:] != t.shape[-2:]:
            size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
        return F.mse_loss(_as_float(s), _as_float(t))


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Spatial attention of a map (Zagoruyko & Komodakis 2017), flattened and L2-normalised.

    The paper's map is ``Q = sum_c |A_c|^p`` with ``p=2``; this takes the channel *mean*
    of the squares, as the authors' code (``at`` in szagoruyko/attention-transfer) does.
    The two differ by the factor ``C``, which the L2 normalisation cancels: same map.
    """
    return F.normalize(_as_float(feature).pow(2).mean(1).flatten(1), dim=1)


class AttentionTransferLoss(nn.Module):
    """Attention transfer: match where the two networks look, not what they compute.

    ``loss = mean over batch and positions of (q_s - q_t)^2``, ``q = attention_map(.)``:
    the authors' ``at_loss`` (``(at(x) - at(y)).pow(2).mean()``). The paper's eq. 2 writes
    ``beta/2 * || q_s - q_t ||_2`` per example (the norm, not its square) and sets ``beta``
    to 1000 divided by the batch size and the map's size, i.e. the mean is folded into
    ``beta``; the code, followed here, squares the difference. The weight (``beta/2``) is
    the caller's. Needs no adapter (channels are averaged away); spatial sizes are pooled
    to match; the batch sizes must be equal; the teacher's map is detached.
    """

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        if student_map.dim() != 4 or teacher_map.dim() != 4:
            raise ValueError(f"feature maps must be 4-D, got {tuple(student_map.shape)} "
                             f"and {tuple(teacher_map.shape)}")
        if student_map.shape[0] != teacher_map.shape[0]:
            raise ValueError(f"batch sizes differ: student_map {tuple(student_map.shape)}, teacher_map "
                             f"{tuple(teacher_map.shape)}: run the teacher on the same batch as the student")
        _check_maps(student_map, teacher_map)
        s, t = student_map, teacher_map.detach()
        if s.shape[-2:] != t.shape[-2:]:
            size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
            s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
        return (attention_map(s) - attention_map(t)).pow(2).mean()


def _differences(x: torch.Tensor) -> torch.Tensor:
    """``diff[j, i] = x_i - x_j`` for a (N, D) batch: exact (no Gram-matrix shortcut), diagonal 0."""
    return x.unsqueeze(0) - x.unsqueeze(1)


def _rkd_distance(s_diff: torch.Tensor, t_diff: torch.Tensor) -> torch.Tensor:
    n = s_diff.shape[0]
    pairs = n * (n - 1)

    def normalised(diff):
        d = torch.linalg.vector_norm(diff, dim=2)          # exact distances, d_ii == 0 exactly
        return d / (d.sum() / pairs).clamp_min(1e-12)      # mu: mean over the pairs i != j
    # mean over all N^2 entries; the diagonal is 0 in both, so it adds nothing but the 1/N^2
    return F.smooth_l1_loss(normalised(s_diff), normalised(t_diff))


def _rkd_angle(s_diff: torch.Tensor, t_diff: torch.Tensor) -> torch.Tensor:
    n = s_diff.shape[0]

    def cosines(diff):
        e = F.normalize(diff, dim=2)                       # e[j, i] = e_ij; e[j, j] = 0
        return torch.bmm(e, e.transpose(1, 2))            # cos[j, i, k] = <e_ij, e_kj>
    huber = F.smooth_l1_loss(cosines(s_diff), cosines(t_diff), reduction="none")
    # triplets with i == j or k == j are exactly 0 in both; i == k gives cos = 1 in both up to
    # rounding: mask it so only distinct triplets count, then divide by N^3 as the authors do
    distinct = ~torch.eye(n, dtype=torch.bool, device=huber.device)
    return (huber * distinct).sum() / n ** 3


class RelationLoss(nn.Module):
    """Relational KD (Park et al., CVPR 2019): match the batch's distance and angle structure.

    ``loss = distance_weight * L_D + angle_weight * L_A`` on flattened embeddings
    ``s_i`` (student) and ``t_i`` (teacher), with ``l`` the Huber loss (``smooth_l1``,
    delta 1):

    * distance-wise: ``psi_D(i, j) = ||x_i - x_j|| / mu``, ``mu`` the mean distance over the
      pairs ``i != j`` of the batch; ``L_D = 1/N^2 * sum_{i != j} l(psi_D(s), psi_D(t))``;
    * angle-wise: ``psi_A(i, j, k) = <e_ij, e_kj>``, ``e_ij = (x_i - x_j) / ||x_i - x_j||``
      (the cosine of the angle at ``x_j``); ``L_A = 1/N^3 * sum_{i, j, k distinct} l(...)``.

    Distances are exact (the difference form: ``torch.cdist``'s matrix-product shortcut,
    taken above 25 rows, leaves non-zero self-distances and ~1% error), the diagonal is
    exactly 0. Conventions: the paper writes both losses as *sums* over the distinct pairs
    and triplets; the authors' code (lenscloth/RKD ``RkdDistance``, ``RKdAngle``) averages
    over all ``N^2`` / ``N^3`` entries, where the degenerate ones are 0: that is followed
    here, so that the authors' weights mean the same. Their ``mu`` is the mean of the
    *positive* distances, which is the mean over ``i != j`` unless two embeddings coincide.
    Memory: the angle term builds an (N, N, D) tensor and an (N, N, N) one, like theirs.

    Weights: the defaults ``distance_weight=1, angle_weight=2`` are the authors' for metric
    learning (their README and examples/*.sh: ``--dist_ratio 1 --angle_ratio 2``); their
    CIFAR classification script, where RKD is added to CE and KD on L2-normalised
    penultimate embeddings, uses 25 and 50 (same 1:2 ratio; RepDistiller's ``RKDLoss``
    default too). ``terms`` gives the two weighted parts as ``rkd_distance`` and
    ``rkd_angle``; a term whose weight is 0 is not computed. The teacher is detached.
    """

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0):
        super().__init__()
        for name, w in (("distance_weight", distance_weight), ("angle_weight", angle_weight)):
            try:
                ok = math.isfinite(float(w)) and float(w) >= 0
            except (TypeError, ValueError, RuntimeError):
                ok = False
            if not ok:
                raise ValueError(f"{name} must be a finite number >= 0, got {name}={w!r}: it weighs "
                                 f"its term in the loss (0 switches the term off)")
        if distance_weight == 0 and angle_weight == 0:
            raise ValueError("distance_weight and angle_weight are both 0: the loss would be 0; "
                             "give at least one a positive weight (the paper's: 1 and 2)")
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def terms(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        if student_emb.dim() < 2 or teacher_emb.dim() < 2:
            raise ValueError(f"embeddings must be (batch, ...), got student_emb {tuple(student_emb.shape)} "
                             f"and teacher_emb {tuple(teacher_emb.shape)}")
        s, t = _as_float(student_emb).flatten(1), _as_float(teacher_emb.detach()).flatten(1)
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"batch sizes differ: student {s.shape[0]}, teacher {t.shape[0]}")
        if s.shape[0] < 2:
            raise ValueError(f"RelationLoss compares pairs of examples: it needs a batch of at least 2, "
                             f"got {s.shape[0]}; use a larger batch (or drop_last=True in the loader)")
        _check_finite("student_emb", s)
        _check_finite("teacher_emb", t)
        s_diff, t_diff = _differences(s), _differences(t)
        zero = s.new_zeros(())
        return {
            "rkd_distance": self.distance_weight * _rkd_distance(s_diff, t_diff) if self.distance_weight else zero,
            "rkd_angle": self.angle_weight * _rkd_angle(s_diff, t_diff) if self.angle_weight else zero,
        }

    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
        t = self.terms(student_emb, teacher_emb)
        return t["rkd_distance"] + t["rkd_angle"]

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"
