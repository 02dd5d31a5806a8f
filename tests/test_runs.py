"""What identifies a run: the settings that change its weights, and only those."""
from types import SimpleNamespace

import pytest

from kdtp.env import ConfigError
from kdtp.models import build_model
from kdtp.recipes import get_recipe
from kdtp.runs import RUNS, TEACHER, build_strategy, run_config

DATA = SimpleNamespace(source="synthetic", sizes=lambda: {"train": 1, "val": 1, "test": 1},
                       fingerprint=lambda: "data-fingerprint")
STUDENT = "student_pretrained_kd_logits"


def _config(name, **overrides):
    return run_config(RUNS[name], get_recipe("cpu", smoke=False, **overrides), DATA, "teacher-hash")


def test_teacher_and_students_each_use_their_own_label_smoothing():
    recipe = get_recipe("cpu", smoke=False, label_smoothing=0.2, teacher_label_smoothing=0.05)
    teacher = build_strategy(RUNS[TEACHER], recipe, build_model("cnn_tiny"), None)
    student = build_strategy(RUNS[STUDENT], recipe, build_model("cnn_tiny"), build_model("cnn_tiny"))
    assert teacher.label_smoothing == 0.05
    assert student.label_smoothing == 0.2 and student.loss.label_smoothing == 0.2


def test_students_smoothing_never_makes_the_teacher_stale():
    assert _config(TEACHER, label_smoothing=0.0) == _config(TEACHER, label_smoothing=0.3)
    assert _config(TEACHER, teacher_label_smoothing=0.0) != _config(TEACHER, teacher_label_smoothing=0.1)
    assert _config(STUDENT, teacher_label_smoothing=0.0) == _config(STUDENT, teacher_label_smoothing=0.1)


def test_teacher_label_smoothing_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="teacher_label_smoothing"):
        get_recipe("cpu", teacher_label_smoothing=1.0)


def test_scratch_and_pretrained_are_one_training_only_without_imagenet_weights():
    from kdtp.runs import trains_the_same
    scratch, pretrained = RUNS["student_scratch_baseline"], RUNS["student_pretrained_baseline"]
    assert trains_the_same(scratch, pretrained, get_recipe("cpu", smoke=False))
    assert trains_the_same(scratch, pretrained, get_recipe("fast", smoke=True))      # smoke: no weights
    assert not trains_the_same(scratch, pretrained, get_recipe("fast", smoke=False))  # ImageNet start
    assert not trains_the_same(scratch, RUNS["student_scratch_kd_scores"], get_recipe("cpu", smoke=False))
