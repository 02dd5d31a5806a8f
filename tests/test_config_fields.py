"""Every recipe setting that can change a result is part of the configuration train-or-load compares.

The test walks *every* field of ``Recipe``: a new field fails here until it is either in a
run's configuration (and so in its hash) or on ``runs.CANNOT_CHANGE_A_RESULT`` with a reason.
"""
from __future__ import annotations

import dataclasses
from dataclasses import fields, replace

import pytest
import torch

from kdtp import runs
from kdtp.checkpoint import config_hash
from kdtp.data import CifarData
from kdtp.recipes import RECIPES, Recipe

TEACHER = runs.TEACHER
KD = {n for n, s in runs.RUNS.items() if s.needs_teacher}
STUDENTS = {n for n, s in runs.RUNS.items() if s.role == "student"}
ALL = set(runs.RUNS)

# Which runs each field must reach, starting from the `fast` recipe (ImageNet-pretrained
# ResNets, teacher_lr set apart from lr). A teacher setting reaches the distilled students
# through their teacher's hash.
SCOPE = {
    "name": ALL, "image_size": ALL, "cifar_stem": ALL, "optimizer": ALL, "weight_decay": ALL,
    "momentum": ALL, "batch_size": ALL, "schedule": ALL, "warmup_fraction": ALL,
    "train_subset": ALL, "val_subset": ALL, "test_subset": ALL, "synthetic": ALL, "smoke": ALL,
    "tta_flip": ALL, "normalization": ALL,
    "pretrained": ALL - {"student_scratch_baseline"},   # scratch baselines never use ImageNet
    "teacher_arch": {TEACHER} | KD, "teacher_lr": {TEACHER} | KD, "teacher_epochs": {TEACHER} | KD,
    "teacher_label_smoothing": {TEACHER} | KD, "teacher_seed": {TEACHER} | KD,
    "student_arch": STUDENTS, "lr": STUDENTS, "epochs": STUDENTS, "label_smoothing": STUDENTS,
    "seed": STUDENTS,
    "temperature": KD, "alpha": KD,
    "feature_weight": {"student_pretrained_kd_features"},
}

OTHER_VALUE = {"name": "paper", "teacher_arch": "resnet18", "student_arch": "cnn_small",
               "optimizer": "adamw", "schedule": "cosine", "normalization": "cifar10"}


def fake_data(recipe: Recipe) -> CifarData:
    """Sizes follow the recipe's subsets, contents its ``synthetic`` flag (no files read)."""
    def split(n, fill):
        return torch.full((n, 3, 2, 2), fill, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)
    tx, ty = split(recipe.train_subset or 45_000, 1 if recipe.synthetic else 0)
    vx, vy = split(recipe.val_subset or 5_000, 0)
    sx, sy = split(recipe.test_subset or 10_000, 0)
    return CifarData(tx, ty, vx, vy, sx, sy, "synthetic" if recipe.synthetic else "cifar10")


def hashes(recipe: Recipe) -> dict[str, str]:
    data = fake_data(recipe)
    teacher = config_hash(runs.run_config(runs.RUNS[TEACHER], recipe, data))
    return {name: config_hash(runs.run_config(spec, recipe, data, teacher if spec.needs_teacher else None))
            for name, spec in runs.RUNS.items()}


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.05
    raise TypeError(value)


@pytest.mark.parametrize("field", [f.name for f in fields(Recipe)])
def test_every_recipe_field_changes_the_hash_of_the_runs_it_affects(field):
    if field in runs.CANNOT_CHANGE_A_RESULT:
        assert runs.CANNOT_CHANGE_A_RESULT[field], f"say why {field} cannot change a result"
        return
    assert field in SCOPE, (f"new recipe field {field!r}: put it in the runs' configuration "
                            "(runs.run_config) and in SCOPE here, or on runs.CANNOT_CHANGE_A_RESULT")
    base = RECIPES["fast"]
    value = getattr(base, field)
    other = OTHER_VALUE[field] if field in OTHER_VALUE else changed(value)
    before, after = hashes(base), hashes(replace(base, **{field: other}))
    moved = {name for name in ALL if before[name] != after[name]}
    assert moved == SCOPE[field], (f"{field}: {value!r} -> {other!r} changed the hash of {sorted(moved)}, "
                                   f"expected {sorted(SCOPE[field])}")


def test_tta_flip_is_compared_so_a_flip_averaged_accuracy_never_loads_for_a_plain_one():
    base = RECIPES["cpu"]
    data = fake_data(base)
    a = runs.run_config(runs.RUNS["student_pretrained_baseline"], base, data)
    b = runs.run_config(runs.RUNS["student_pretrained_baseline"], replace(base, tta_flip=not base.tta_flip), data)
    assert a["tta_flip"] != b["tta_flip"] and config_hash(a) != config_hash(b)


def test_data_contents_enter_the_configuration():
    """Same split sizes, other images or other labels: another hash."""
    recipe = RECIPES["cpu"]
    data = fake_data(recipe)
    other_images = dataclasses.replace(data, test_x=data.test_x.clone())
    other_images.test_x[0, 0, 0, 0] += 1
    other_labels = dataclasses.replace(data, val_y=data.val_y.clone())
    other_labels.val_y[3] = 7
    spec = runs.RUNS["student_pretrained_baseline"]
    base = config_hash(runs.run_config(spec, recipe, data))
    assert config_hash(runs.run_config(spec, recipe, other_images)) != base
    assert config_hash(runs.run_config(spec, recipe, other_labels)) != base
    assert data.sizes() == other_images.sizes() == other_labels.sizes()


def test_feature_kd_configuration_holds_the_logit_kd_settings():
    """kd_features is logit KD plus the hint: its T and alpha are part of what it trained."""
    recipe = RECIPES["cpu"]
    cfg = runs.run_config(runs.RUNS["student_pretrained_kd_features"], recipe, fake_data(recipe), "t")
    assert (cfg["temperature"], cfg["alpha"], cfg["feature_weight"]) == (4.0, 0.5, 1.0)
