"""train_or_load: trains once, loads afterwards, never loads another configuration."""
import subprocess
import sys

import pytest
import torch

import kdtp.checkpoint as ck
import kdtp.resume as kresume
from kdtp.checkpoint import load_checkpoint, train_or_load


# small data and the tiniest networks: these tests check what is loaded and trained, not accuracy
SMALL = dict(train_subset=256, val_subset=64, test_subset=64, teacher_arch="cnn_tiny", student_arch="cnn_tiny")


def _no_training(*args, **kwargs):
    raise AssertionError("train_or_load trained although a matching checkpoint exists")


def test_second_call_loads_without_training(tmp_path, monkeypatch):
    kw = dict(recipe="cpu", smoke=True, **SMALL, ckpt_dir=tmp_path / "ck", data_dir=tmp_path / "d", progress=False)
    first = train_or_load("student_scratch_baseline", **kw)
    assert first.source == "trained" and first.path.name == "student_scratch_baseline_best.pt"
    assert first.path.parent == tmp_path / "ck" / "smoke" / "cpu"        # smoke kept apart
    monkeypatch.setattr(kresume, "fit", _no_training)
    second = train_or_load("student_scratch_baseline", **kw)
    assert second.source == "loaded"
    assert second.test_acc == first.test_acc
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])


def test_checkpoint_holds_only_safe_types_and_the_facts(tmp_path):
    r = train_or_load("teacher_resnet50", "cpu", smoke=True, **SMALL, ckpt_dir=tmp_path, data_dir=tmp_path / "d",
                      progress=False)
    payload = torch.load(r.path, weights_only=True)                    # no pickled code needed
    assert payload["config_hash"] == r.config_hash and payload["smoke"] is True
    assert payload["config"]["data"] == "synthetic" and payload["config"]["recipe"] == "cpu"
    assert {"test_acc", "val_acc", "params"} <= set(payload["metrics"])
    assert {"torch", "torchvision", "kdtp"} <= set(payload["versions"])
    assert r.smoke and "smoke" in r.label


def test_other_settings_train_separately_and_keep_the_first(tmp_path, monkeypatch):
    kw = dict(recipe="cpu", smoke=True, **SMALL, ckpt_dir=tmp_path, data_dir=tmp_path / "d", progress=False)
    base = train_or_load("student_scratch_kd_scores", **kw)
    other = train_or_load("student_scratch_kd_scores", alpha=0.9, **kw)
    assert other.source == "trained" and other.path != base.path
    assert other.config["alpha"] == 0.9 and base.config["alpha"] == 0.5
    assert load_checkpoint(base.path)["config"]["alpha"] == 0.5         # first run untouched
    monkeypatch.setattr(kresume, "fit", _no_training)
    again = train_or_load("student_scratch_kd_scores", alpha=0.9, **kw)   # finds the variant
    assert again.source == "loaded" and again.path == other.path
    # the teacher's identity does not depend on KD-only settings
    assert other.teacher.path == base.teacher.path


def test_load_only_without_a_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(ck.CheckpointError, match="without load_only"):
        train_or_load("student_scratch_baseline", "cpu", smoke=True, ckpt_dir=tmp_path,
                      data_dir=tmp_path / "d", load_only=True, progress=False)


def test_cli_trains_then_loads(tmp_path):
    cmd = [sys.executable, "-m", "kdtp", "train", "student_pretrained_baseline", "--smoke",
           "--recipe", "cpu", "--ckpt-dir", str(tmp_path / "ck"), "--data-dir", str(tmp_path / "d"),
           *[arg for k, v in SMALL.items() for arg in ("--set", f"{k}={v}")]]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "test accuracy" in first.stdout and "(trained:" in first.stdout and "SMOKE" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "(loaded:" in second.stdout and "[kdtp] training" not in second.stdout


def test_runs_without_imagenet_weights_are_twins_trained_once(tmp_path, monkeypatch):
    """In the cpu recipe (no ImageNet weights) "pretrained" and "scratch" runs are the same
    training: first shown by training both independently, then the kit must reuse one."""
    kw = dict(recipe="cpu", smoke=True, **SMALL, data_dir=tmp_path / "d", progress=False)
    apart = train_or_load("student_scratch_baseline", ckpt_dir=tmp_path / "a", **kw)
    pretrained = train_or_load("student_pretrained_baseline", ckpt_dir=tmp_path / "b", **kw)
    assert pretrained.source == "trained"
    for k, v in pretrained.model.state_dict().items():
        assert torch.equal(v, apart.model.state_dict()[k]), f"{k} differs: not the same training"

    monkeypatch.setattr(kresume, "fit", _no_training)
    scratch = train_or_load("student_scratch_baseline", ckpt_dir=tmp_path / "b", **kw)
    assert scratch.path == tmp_path / "b" / "smoke" / "cpu" / "student_scratch_baseline_best.pt"
    assert scratch.config["run"] == "student_scratch_baseline" and scratch.test_acc == apart.test_acc
    payload = load_checkpoint(scratch.path)
    assert payload["config_hash"] == scratch.config_hash and payload["name"] == "student_scratch_baseline"
    assert payload["same_training_as"] == "student_pretrained_baseline"
    again = train_or_load("student_scratch_baseline", ckpt_dir=tmp_path / "b", **kw)
    assert again.source == "loaded" and again.path == scratch.path          # its own file now
    from kdtp.results import latest_by_run, load_results
    rows = latest_by_run(load_results(scratch.path.parent))
    assert rows["student_scratch_baseline"]["test_acc"] == scratch.test_acc


def test_a_twin_with_other_settings_is_not_reused(tmp_path, monkeypatch):
    kw = dict(recipe="cpu", smoke=True, **SMALL, ckpt_dir=tmp_path, data_dir=tmp_path / "d", progress=False)
    train_or_load("student_pretrained_baseline", label_smoothing=0.0, **kw)
    trained = []
    real_fit = kresume.fit
    monkeypatch.setattr(kresume, "fit", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    scratch = train_or_load("student_scratch_baseline", **kw)         # the recipe's own smoothing
    assert trained and scratch.source == "trained"
