"""Runs as data: the lab's six keep their hashes, a declared run trains from any run.

``tests/fixtures/run_configs_v1.json`` holds the configuration (and its hash) of each of
the lab's six runs in every recipe, written by the code *before* runs became data: a
student's checkpoints on Drive load only while these stay the same.
"""
import json
from pathlib import Path

import pytest
import torch

import kdtp
import kdtp.resume as kresume
from kdtp import runs
from kdtp.distillers import METHODS, Strategy, register
from kdtp.env import ConfigError
from kdtp.recipes import get_recipe
from kdtp.runner import train_or_load
from kdtp.store import config_hash

FIXTURE = Path(__file__).parent / "fixtures" / "run_configs_v1.json"


pytestmark = pytest.mark.usefixtures("restore_run_registry")   # conftest.py


class StubData:
    """What ``run_config`` reads of the data (the fixture was written with these values)."""
    source = "cifar10"

    def sizes(self):
        return {"train": 45000, "val": 5000, "test": 10000}

    def fingerprint(self):
        return "f" * 64


@pytest.mark.parametrize("key", ["paper", "fast", "cpu", "paper-smoke", "fast-smoke", "cpu-smoke"])
def test_the_six_runs_keep_the_configuration_and_hash_of_before(key):
    stored = json.loads(FIXTURE.read_text())[key]
    recipe = get_recipe(key.split("-")[0], smoke=key.endswith("smoke"))
    teacher = config_hash(runs.run_config(runs.RUNS[runs.TEACHER], recipe, StubData()))
    assert list(runs.RUNS) == list(stored) or set(runs.RUNS) == set(stored)
    for name, spec in runs.RUNS.items():
        cfg = runs.run_config(spec, recipe, StubData(), teacher if spec.needs_teacher else None)
        assert cfg == stored[name]["config"], name
        assert config_hash(cfg) == stored[name]["hash"], name


def test_titles_tell_the_truth_of_the_recipe():
    cpu, paper = get_recipe("cpu", smoke=False), get_recipe("paper", smoke=False)
    teacher = runs.RUNS[runs.TEACHER]
    assert runs.describe(teacher, cpu) == "Teacher cnn_large, from scratch"        # no ResNet50 here
    assert runs.describe(teacher, paper) == "Teacher resnet50, ImageNet-pretrained"
    pre = runs.RUNS["student_pretrained_kd_logits"]
    assert runs.describe(pre, cpu) == "Student cnn_small, from scratch, KD on logits"
    assert runs.describe(pre, paper) == "Student resnet18, ImageNet-pretrained, KD on logits"
    # without ImageNet weights the "scratch" run is the "pretrained" one's training: said, once
    scratch = runs.RUNS["student_scratch_kd_scores"]
    assert runs.describe(scratch, cpu) == ("Student cnn_small, from scratch, KD on logits "
                                           "(the same training as student_pretrained_kd_logits)")
    assert runs.describe(pre, cpu) == "Student cnn_small, from scratch, KD on logits"
    assert runs.describe(scratch, paper) == "Student resnet18, from scratch, KD on logits"


def test_declaring_a_run_registers_it_and_bad_declarations_say_what_to_do():
    run = kdtp.Run("graph_test_kd", method="kd_logits", arch="cnn_tiny", overrides={"temperature": "8"})
    assert runs.get_run("graph_test_kd") is run and run.teachers == (runs.TEACHER,)
    assert run.overrides == {"temperature": 8.0}                                # coerced like --set
    with pytest.raises(ConfigError, match="one of the lab's six"):
        kdtp.Run("student_scratch_baseline", method="kd_logits")
    with pytest.raises(ConfigError, match="unknown method 'kd_magic'.*kd_logits"):
        kdtp.Run("graph_test_bad", method="kd_magic")
    with pytest.raises(ConfigError, match="learns from no teacher"):
        kdtp.Run("graph_test_bad", teacher=runs.TEACHER)
    with pytest.raises(ConfigError, match="unknown setting 'epoch'"):
        kdtp.Run("graph_test_bad", overrides={"epoch": 3})
    with pytest.raises(ConfigError, match="cannot be set per run"):
        kdtp.Run("graph_test_bad", overrides={"smoke": False})
    with pytest.raises(ConfigError, match="unknown run 'graph_nope'.*kdtp.Run"):
        runs.get_run("graph_nope")


def test_config_reaches_through_the_graph_and_lists_several_teachers():
    recipe = get_recipe("cpu", smoke=False)
    kdtp.Run("graph_gen1", method="kd_logits", arch="cnn_large")
    two = kdtp.Run("graph_two", method="kd_logits", teacher=("graph_gen1", runs.TEACHER))
    with pytest.raises(ValueError, match="one teacher, not 2"):
        runs.build_strategy(two, recipe, kdtp.build_model("cnn_tiny"),
                            [kdtp.build_model("cnn_tiny"), kdtp.build_model("cnn_tiny")])
    cfg = runs.run_config(two, recipe, StubData(), ["h1", "h2"])
    assert cfg["teacher_config"] == ["h1", "h2"] and cfg["teacher_arch"] == ["cnn_large", "cnn_large"]
    assert cfg["teachers"] == ["graph_gen1", runs.TEACHER]
    one = runs.run_config(runs.get_run("graph_gen1"), recipe, StubData(), "h1")
    other = runs.run_config(runs.get_run("graph_gen1"), recipe, StubData(), "h9")
    assert config_hash(one) != config_hash(other)                 # a new teacher retrains the student


def test_born_again_chain_trains_each_generation_once_then_loads(tmp_path, monkeypatch):
    kw = dict(recipe="cpu", smoke=True, train_subset=256, val_subset=64, test_subset=64, teacher_arch="cnn_tiny",
              ckpt_dir=tmp_path, data_dir=tmp_path / "d", progress=False,
              verbose=False)
    kdtp.Run("graph_ba1", method="kd_logits", teacher=runs.TEACHER, arch="cnn_tiny")
    kdtp.Run("graph_ba2", method="kd_logits", teacher="graph_ba1", arch="cnn_tiny")
    # and a run that starts from gen 1's weights; a learning rate of 1e-9 moves nothing visible
    kdtp.Run("graph_tuned", init_from="graph_ba1", arch="cnn_tiny", overrides={"epochs": 1, "lr": 1e-9})
    gen2 = train_or_load("graph_ba2", **kw)
    assert gen2.source == "trained" and gen2.teacher.name == "graph_ba1"
    assert gen2.teacher.teacher.name == runs.TEACHER
    assert gen2.config["teacher_config"] == gen2.teacher.config_hash
    assert gen2.config["arch"] == "cnn_tiny" and gen2.path.name == "graph_ba2_best.pt"
    tuned = train_or_load("graph_tuned", **kw)
    assert tuned.config["init_config"] == gen2.teacher.config_hash
    first = next(iter(tuned.model.state_dict()))
    assert torch.allclose(tuned.model.state_dict()[first], gen2.teacher.model.state_dict()[first], atol=1e-5)
    monkeypatch.setattr(kresume, "fit", lambda *a, **k: pytest.fail("trained a finished run again"))
    again = train_or_load("graph_ba2", **kw)
    assert again.source == "loaded" and again.test_acc == gen2.test_acc


def test_a_circle_of_runs_is_refused(tmp_path):
    kdtp.Run("graph_loop_a", method="kd_logits", teacher="graph_loop_b", arch="cnn_tiny")
    kdtp.Run("graph_loop_b", method="kd_logits", teacher="graph_loop_a", arch="cnn_tiny")
    with pytest.raises(ConfigError, match="circle.*graph_loop_a -> graph_loop_b -> graph_loop_a"):
        train_or_load("graph_loop_a", "cpu", smoke=True, ckpt_dir=tmp_path, data_dir=tmp_path / "d",
                      progress=False, verbose=False)


def test_a_new_method_is_one_registered_class():
    @register
    class Noisy(Strategy):
        name = "graph_test_noisy"
        title = "labels, plus noise"

    try:
        run = kdtp.Run("graph_noisy", method="graph_test_noisy")
        assert runs.describe(run, get_recipe("cpu", smoke=False)).endswith("labels, plus noise")
        strategy = runs.build_strategy(run, get_recipe("cpu"), kdtp.build_model("cnn_tiny"), None)
        assert isinstance(strategy, Noisy)
    finally:
        METHODS.pop("graph_test_noisy")
        runs.REGISTRY.pop("graph_noisy", None)
