"""Where we run: Colab detection, folders, smoke flag, device, banner."""
import sys
import types

import pytest
import torch

from kdtp import env


def test_colab_detection_with_a_fake_google_colab(monkeypatch):
    assert not env.in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert env.in_colab()


def test_mount_drive_outside_colab_does_nothing():
    assert env.mount_drive() is None


def test_folders_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KDTP_CKPT_DIR", str(tmp_path / "ck"))
    monkeypatch.setenv("KDTP_DATA_DIR", str(tmp_path / "dd"))
    assert env.checkpoint_root() == tmp_path / "ck"
    assert env.data_root() == tmp_path / "dd"
    monkeypatch.delenv("KDTP_CKPT_DIR")
    assert env.checkpoint_root() == env.project_root() / "checkpoints"


def test_folder_variable_pointing_at_a_file_is_refused(monkeypatch, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("KDTP_DATA_DIR", str(f))
    with pytest.raises(env.ConfigError, match="KDTP_DATA_DIR"):
        env.data_root()


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_smoke_flag(monkeypatch, value, expected):
    monkeypatch.setenv("KDTP_SMOKE", value)
    assert env.smoke_mode() is expected


def test_unreadable_smoke_flag_says_what_to_type(monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "maybe")
    with pytest.raises(env.ConfigError, match="set it to 1"):
        env.smoke_mode()


def test_device_and_precision_here(monkeypatch):
    monkeypatch.delenv("KDTP_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert env.pick_device().type == expected
    assert env.pick_precision(torch.device("cpu")) in {"bf16", "fp32"}
    monkeypatch.setenv("KDTP_DEVICE", "tpu")
    with pytest.raises(env.ConfigError, match="cpu, cuda or mps"):
        env.pick_device()


def test_banner_names_device_folders_and_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("KDTP_CKPT_DIR", str(tmp_path))
    text = env.banner(torch.device("cpu"))
    assert "cpu" in text and str(tmp_path) in text and "SMOKE" in text
