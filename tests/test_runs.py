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


# ----------------------------------------------------------------- settings for one recipe only
@pytest.mark.usefixtures("restore_run_registry")      # conftest.py: the runs declared here go away
def test_a_runs_settings_for_one_recipe_change_that_recipe_alone():
    from kdtp.runs import Run, training_settings
    plain = Run("ro_plain", role="teacher", overrides={"teacher_seed": 1})
    tuned = Run("ro_tuned", role="teacher", overrides={"teacher_seed": 1},
                recipe_overrides={"cpu_air": {"teacher_epochs": "6"}})     # strings are typed, as --set
    assert tuned.recipe_overrides == {"cpu_air": {"teacher_epochs": 6}}
    air, cpu = get_recipe("cpu_air", smoke=False), get_recipe("cpu", smoke=False)
    assert training_settings(tuned, air)["epochs"] == 6 != air.teacher_epochs
    assert training_settings(tuned, cpu) == training_settings(plain, cpu), "other recipes: as declared"
    differs = {k for k, v in run_config(tuned, air, DATA).items() if run_config(plain, air, DATA)[k] != v}
    assert differs == {"run", "epochs"}, "in the configuration (the hash) of that recipe: the epochs"
    assert {k for k, v in run_config(tuned, cpu, DATA).items() if run_config(plain, cpu, DATA)[k] != v} == {"run"}
    assert hash(tuned) != hash(Run("ro_tuned2", role="teacher", overrides={"teacher_seed": 1}))


@pytest.mark.usefixtures("restore_run_registry")
def test_smoke_mode_never_trains_more_epochs_than_its_own():
    from kdtp.runs import Run, training_settings
    long = Run("ro_long", overrides={"epochs": 20}, recipe_overrides={"cpu_air": {"epochs": 30}})
    assert training_settings(long, get_recipe("cpu_air", smoke=True))["epochs"] == 1
    assert training_settings(long, get_recipe("cpu", smoke=True))["epochs"] == 1
    assert training_settings(long, get_recipe("cpu_air", smoke=False))["epochs"] == 30
    assert training_settings(long, get_recipe("cpu", smoke=False))["epochs"] == 20


@pytest.mark.usefixtures("restore_run_registry")
@pytest.mark.parametrize("bad, message", [
    ({"cpu-air": {"epochs": 3}}, "unknown; choose among"),          # a typo of a recipe name
    ({"cpu_air": {"epoch": 3}}, "unknown setting 'epoch'"),
    ({"cpu_air": {"epochs": "three"}}, "not a valid int"),
    ({"cpu_air": {"train_subset": 100}}, "cannot be set per run"),
    ({"cpu_air": 6}, "must be a dict of settings"),
])
def test_bad_recipe_overrides_are_refused_with_what_to_do(bad, message):
    from kdtp.runs import Run
    with pytest.raises(ConfigError, match=message):
        Run("ro_bad", recipe_overrides=bad)


def test_the_second_teacher_of_10_trains_six_epochs_in_cpu_air_only():
    from kdtp.runs import get_run, training_settings
    b = get_run("teacher_b")
    assert training_settings(b, get_recipe("cpu_air", smoke=False))["epochs"] == 6
    for name in ("cpu", "fast", "paper"):
        recipe = get_recipe(name, smoke=False)
        assert training_settings(b, recipe)["epochs"] == recipe.teacher_epochs
    assert training_settings(b, get_recipe("cpu_air", smoke=True))["epochs"] == 1


def test_a_printed_run_shows_its_declaration_not_its_defaults():
    from kdtp.runs import REGISTRY
    assert repr(REGISTRY["student_pretrained_baseline"]) == "Run('student_pretrained_baseline', pretrained=True)"
    text = repr(REGISTRY["teacher_b"])
    assert "recipe_overrides={'cpu_air': {'teacher_epochs': 6}}" in text and "method=" not in text
    assert "recipe_overrides" not in repr(REGISTRY["student_kd_pruned"])
