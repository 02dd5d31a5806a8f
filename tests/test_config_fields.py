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
ALL = set(runs.REGISTRY)            # the lab's six and the course's runs (kdtp.course)


def reaching(direct) -> set[str]:
    """Runs for which ``direct(run)`` holds, and every run that learns from or starts from one."""
    hit = {n for n, s in runs.REGISTRY.items() if direct(s)}
    while True:
        more = {n for n, s in runs.REGISTRY.items() if set(s.depends_on) & hit} - hit
        if not more:
            return hit
        hit |= more


PRETRAINED = reaching(lambda s: s.pretrained)


def role_setting(role: str, setting: str) -> set[str]:
    """Runs of ``role`` that read the recipe's ``setting`` (a run's own override of it, or for
    the architecture an explicit ``arch=``, shields it), and every run that depends on one."""
    arch_field = setting in ("teacher_arch", "student_arch")
    return reaching(lambda s: s.role == role and setting not in s.overrides
                    and not (arch_field and s.arch is not None))


def using(setting: str) -> set[str]:
    from kdtp.distillers import get_method
    return reaching(lambda s: setting in get_method(s.method).recipe_settings)


# Which runs each field must reach, starting from the `fast` recipe (ImageNet-pretrained
# ResNets, teacher_lr set apart from lr). A setting reaches the runs that learn from a run
# it changes through that run's hash (a teacher's setting reaches its students).
SCOPE = {
    "name": ALL, "image_size": ALL, "cifar_stem": ALL, "optimizer": ALL, "weight_decay": ALL,
    "momentum": ALL, "batch_size": ALL, "schedule": ALL, "warmup_fraction": ALL,
    "train_subset": ALL, "val_subset": ALL, "test_subset": ALL, "synthetic": ALL, "smoke": ALL,
    "tta_flip": ALL, "normalization": ALL, "augmentation": ALL, "shared_augmentation": ALL, "norm_bias_lr_scale": ALL, "lookahead": ALL,
    "whiten_bias_epochs": ALL,     # named in every run's configuration where set (the CNNs without a whitening layer ignore it)
    "pretrained": PRETRAINED,        # scratch runs (and runs learning only from them) never use ImageNet
    **{k: role_setting("teacher", k) for k in ("teacher_arch", "teacher_lr", "teacher_epochs",
                                                "teacher_label_smoothing", "teacher_seed")},
    **{k: role_setting("student", k) for k in ("student_arch", "lr", "epochs", "label_smoothing", "seed")},
    "finetune_lr_scale": reaching(lambda s: s.init_from is not None and s.role == "student"),
    **{k: using(k) for k in ("temperature", "alpha", "feature_weight", "attention_weight",
                             "rkd_distance_weight", "rkd_angle_weight", "rkd_group_size", "pskd_alpha")},
}
assert SCOPE["feature_weight"] == {"student_pretrained_kd_features"}
assert {"student_scratch_baseline", "born_again_gen1", "student_ps_kd"}.isdisjoint(SCOPE["pretrained"])

OTHER_VALUE = {"name": "paper", "teacher_arch": "resnet18", "student_arch": "cnn_small",
               "optimizer": "adamw", "schedule": "cosine", "normalization": "cifar10", "augmentation": "airbench"}


def fake_data(recipe: Recipe) -> CifarData:
    """Sizes follow the recipe's subsets, contents its ``synthetic`` flag (no files read)."""
    def split(n, fill):
        return torch.full((n, 3, 2, 2), fill, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)
    tx, ty = split(recipe.train_subset or 45_000, 1 if recipe.synthetic else 0)
    vx, vy = split(recipe.val_subset or 5_000, 0)
    sx, sy = split(recipe.test_subset or 10_000, 0)
    return CifarData(tx, ty, vx, vy, sx, sy, "synthetic" if recipe.synthetic else "cifar10")


def hashes(recipe: Recipe) -> dict[str, str]:
    """Every declared run's hash, each dependency's hash feeding its dependants' (as train_or_load)."""
    data, out = fake_data(recipe), {}

    def one(name: str) -> str:
        if name not in out:
            spec = runs.REGISTRY[name]
            out[name] = config_hash(runs.run_config(spec, recipe, data, [one(t) for t in spec.teachers] or None,
                                                    init_hash=one(spec.init_from) if spec.init_from else None))
        return out[name]
    for name in ALL:
        one(name)
    return out


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
