"""The six runs of the lab: what each one trains, from what, and with which settings.

A run is a name (the reference lab's checkpoint names) plus a recipe. This module turns
the pair into a model, a strategy and the *configuration that identifies the result*:
only the settings that change the weights, so changing the KD temperature never makes
the teacher look stale.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import CifarData, DeviceLoader, load_cifar10
from .distillers import FeatureKD, LogitKD, Strategy
from .env import ConfigError, seed_everything
from .models import build_model, has_pretrained_weights
from .recipes import Recipe

TEACHER = "teacher_resnet50"


@dataclass(frozen=True)
class RunSpec:
    name: str
    role: str          # "teacher" or "student"
    method: str        # "baseline", "kd_logits" or "kd_features"
    pretrained: bool   # starts from ImageNet weights (when the recipe and arch allow)
    title: str

    @property
    def needs_teacher(self) -> bool:
        return self.method != "baseline"


RUNS: dict[str, RunSpec] = {s.name: s for s in (
    RunSpec(TEACHER, "teacher", "baseline", True, "Teacher ResNet50 (pretrained, fine-tuned)"),
    RunSpec("student_pretrained_baseline", "student", "baseline", True, "Student ResNet18, pretrained, labels only"),
    RunSpec("student_pretrained_kd_logits", "student", "kd_logits", True, "Student ResNet18, pretrained, KD on logits"),
    RunSpec("student_pretrained_kd_features", "student", "kd_features", True, "Student ResNet18, pretrained, KD on features"),
    RunSpec("student_scratch_baseline", "student", "baseline", False, "Student ResNet18, from scratch, labels only"),
    RunSpec("student_scratch_kd_scores", "student", "kd_logits", False, "Student ResNet18, from scratch, KD on logits"),
)}


def get_run(name: str) -> RunSpec:
    if name not in RUNS:
        raise ConfigError(f"unknown run {name!r}; choose one of: {', '.join(RUNS)}")
    return RUNS[name]


def arch_of(spec: RunSpec, recipe: Recipe) -> str:
    return recipe.teacher_arch if spec.role == "teacher" else recipe.student_arch


def label_smoothing_of(spec: RunSpec, recipe: Recipe) -> float:
    return recipe.teacher_label_smoothing if spec.role == "teacher" else recipe.label_smoothing


def seed_of(spec: RunSpec, recipe: Recipe) -> int:
    """The teacher trains with ``teacher_seed``, every student with ``seed``."""
    return recipe.teacher_seed if spec.role == "teacher" else recipe.seed


def uses_pretrained(spec: RunSpec, recipe: Recipe) -> bool:
    """ImageNet weights only when the run, the recipe and the architecture all allow it."""
    return spec.pretrained and recipe.pretrained and has_pretrained_weights(arch_of(spec, recipe))


def trains_the_same(a: RunSpec, b: RunSpec, recipe: Recipe) -> bool:
    """True when runs ``a`` and ``b`` of ``recipe`` are one training under two names.

    Where the recipe gives no ImageNet weights (``cpu``, smoke mode), a "scratch" run and its
    "pretrained" namesake build the same network from the same seed and see the same
    batches: ``train_or_load`` then reuses the finished one instead of training it again.
    """
    return (a.role == b.role and a.method == b.method
            and uses_pretrained(a, recipe) == uses_pretrained(b, recipe))


# Recipe settings that cannot change a run's weights or reported numbers, each with the
# reason; every other setting must be in ``run_config`` (tests/test_config_fields.py walks
# every field of ``Recipe`` and fails on one that is in neither place). Empty today: every
# setting of a recipe changes some run.
CANNOT_CHANGE_A_RESULT: dict[str, str] = {}


def run_config(spec: RunSpec, recipe: Recipe, data: CifarData, teacher_hash: str | None = None) -> dict:
    """The settings that determine this run's weights (stored in and compared with checkpoints)."""
    teacher = spec.role == "teacher"
    cfg = {
        "run": spec.name, "recipe": recipe.name, "method": spec.method,
        "arch": arch_of(spec, recipe), "pretrained": uses_pretrained(spec, recipe),
        "cifar_stem": recipe.cifar_stem, "image_size": recipe.image_size,
        "optimizer": recipe.optimizer, "lr": (recipe.teacher_lr or recipe.lr) if teacher else recipe.lr,
        "weight_decay": recipe.weight_decay, "momentum": recipe.momentum,
        "batch_size": recipe.batch_size, "epochs": recipe.teacher_epochs if teacher else recipe.epochs,
        "schedule": recipe.schedule, "warmup_fraction": recipe.warmup_fraction,
        "label_smoothing": label_smoothing_of(spec, recipe), "seed": seed_of(spec, recipe),
        "data": data.source, "data_sizes": data.sizes(), "data_fingerprint": data.fingerprint(),
        "normalization": recipe.normalization, "tta_flip": recipe.tta_flip, "smoke": recipe.smoke,
    }
    if spec.method in ("kd_logits", "kd_features"):
        cfg.update(temperature=recipe.temperature, alpha=recipe.alpha)
    if spec.method == "kd_features":
        cfg.update(feature_weight=recipe.feature_weight)
    if spec.needs_teacher:
        cfg.update(teacher_arch=recipe.teacher_arch, teacher_config=teacher_hash)
    return cfg


def build_network(spec: RunSpec, recipe: Recipe, device: torch.device) -> nn.Module:
    """The run's network, seeded, on ``device`` in channels_last (faster convs, CPU and GPU)."""
    seed_everything(seed_of(spec, recipe))
    model = build_model(arch_of(spec, recipe), num_classes=10,
                        pretrained=uses_pretrained(spec, recipe), cifar_stem=recipe.cifar_stem)
    return model.to(device).to(memory_format=torch.channels_last)


def build_strategy(spec: RunSpec, recipe: Recipe, model: nn.Module, teacher: nn.Module | None) -> Strategy:
    if spec.method == "baseline":
        return Strategy(model, label_smoothing_of(spec, recipe))
    if teacher is None:
        raise ValueError(f"{spec.name} distils from a teacher: pass teacher=")
    if spec.method == "kd_logits":
        return LogitKD(model, teacher, recipe.temperature, recipe.alpha, recipe.label_smoothing)
    return FeatureKD(model, teacher, recipe.student_arch, recipe.teacher_arch, recipe.image_size,
                     recipe.feature_weight, recipe.label_smoothing,
                     temperature=recipe.temperature, alpha=recipe.alpha)


_DATA_CACHE: dict[tuple, CifarData] = {}


def get_data(recipe: Recipe, data_dir: Path | str | None = None) -> CifarData:
    """CIFAR-10 (or the synthetic set) for ``recipe``, read once per process."""
    from .env import data_root

    root = Path(data_dir) if data_dir is not None else data_root()
    key = (str(root.resolve()), recipe.synthetic, recipe.train_subset, recipe.val_subset, recipe.test_subset)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_cifar10(root, synthetic=recipe.synthetic,
                                        train_subset=recipe.train_subset or None,
                                        val_subset=recipe.val_subset or None,
                                        test_subset=recipe.test_subset or None)
    return _DATA_CACHE[key]


def loaders(data: CifarData, recipe: Recipe, device: torch.device,
            eval_batch: int = 500, seed: int | None = None) -> tuple[DeviceLoader, DeviceLoader, DeviceLoader]:
    """Train (augmented, shuffled), validation and test loaders on ``device``."""
    kw = dict(device=device, image_size=recipe.image_size, seed=recipe.seed if seed is None else seed,
              normalization=recipe.normalization)
    return (DeviceLoader(data.train_x, data.train_y, recipe.batch_size, train=True, **kw),
            DeviceLoader(data.val_x, data.val_y, eval_batch, train=False, **kw),
            DeviceLoader(data.test_x, data.test_y, eval_batch, train=False, **kw))
