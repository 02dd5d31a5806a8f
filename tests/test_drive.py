"""Google Drive on Colab: not mounted, read-only, full, or failing mid-run -> local
checkpoints with a warning, never a crash.

Colab is faked with a ``google.colab`` module and temp folders for the mount point. Tests
run as root, where ``chmod`` does not stop writes, so read-only and full are simulated at
the ``open``/``fsync`` level with the real errno values (EACCES, EROFS, ENOSPC).

Faults tried here: Drive not mounted (2 ways), mount refused, read-only (EACCES and
EROFS), full (ENOSPC at fsync), KDTP_CKPT_DIR on an unmounted Drive, and a Drive that
fills up during training (every write of the run's files fails) plus a real read-only
folder when not root.
"""
import builtins
import errno
import os
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import kdtp.checkpoint as ck
import kdtp.resume as kresume
import kdtp.env as env
from kdtp.checkpoint import load_checkpoint, train_or_load

TINY = dict(recipe="cpu", smoke=True, progress=False, train_subset=128, val_subset=64,
            test_subset=64, student_arch="cnn_tiny", epochs=2)
RUN = "student_scratch_baseline"


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """A fake Colab: ``google.colab`` importable, Drive mount point and project in tmp."""
    mount = tmp_path / "content" / "drive"
    google = types.ModuleType("google")
    colab_mod = types.ModuleType("google.colab")
    drive_mod = types.ModuleType("google.colab.drive")
    state = {"mounts": 0, "fail": None}

    def mount_fn(path, *args, **kwargs):
        state["mounts"] += 1
        if state["fail"]:
            raise state["fail"]
        (Path(path) / "MyDrive").mkdir(parents=True, exist_ok=True)

    drive_mod.mount = mount_fn
    colab_mod.drive = drive_mod
    google.colab = colab_mod
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab_mod)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive_mod)
    monkeypatch.setattr(env, "COLAB_DRIVE_MOUNT", mount)
    monkeypatch.setattr(env, "COLAB_CKPT_DIR", mount / "MyDrive" / "KD_checkpoints")
    monkeypatch.setattr(env, "project_root", lambda: tmp_path / "content" / "kit")
    monkeypatch.delenv("KDTP_CKPT_DIR", raising=False)
    assert env.in_colab()
    return types.SimpleNamespace(mount=mount, drive=mount / "MyDrive" / "KD_checkpoints",
                                 local=tmp_path / "content" / "kit" / "checkpoints", state=state)


def _fail_writes_under(monkeypatch, folder: Path, err: int, at: str = "open"):
    """Make writes under ``folder`` fail with ``err`` (at open, or at fsync = a full disk)."""
    folder = str(folder)
    real_open, real_fsync = builtins.open, os.fsync

    def fake_open(file, mode="r", *args, **kwargs):
        if at == "open" and str(file).startswith(folder) and any(c in mode for c in "wax+"):
            raise OSError(err, os.strerror(err), str(file))
        return real_open(file, mode, *args, **kwargs)

    def fake_fsync(fd):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if at == "fsync" and target.startswith(folder):
            raise OSError(err, os.strerror(err))
        return real_fsync(fd)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "fsync", fake_fsync)


def test_drive_mounted_and_writable_is_used(colab):
    assert env.mount_drive() == colab.drive and colab.state["mounts"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # no warning on the good path
        assert env.checkpoint_root() == colab.drive
    assert colab.drive.is_dir() and list(colab.drive.iterdir()) == []   # the probe is cleaned up


def test_not_mounted_warns_and_falls_back(colab):
    with pytest.warns(UserWarning, match="not mounted.*mount_drive"):
        assert env.checkpoint_root() == colab.local
    colab.mount.mkdir(parents=True)                # mount point without MyDrive: still not mounted
    with pytest.warns(UserWarning, match="not mounted"):
        assert env.checkpoint_root() == colab.local


def test_mount_refused_warns_and_returns_none(colab):
    colab.state["fail"] = ValueError("mount failed: user declined")
    with pytest.warns(UserWarning, match="could not be mounted.*user declined"):
        assert env.mount_drive() is None


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS])
def test_read_only_drive_warns_and_falls_back(colab, monkeypatch, err):
    env.mount_drive()
    _fail_writes_under(monkeypatch, colab.mount, err, at="open")
    with pytest.warns(UserWarning, match="not writable"):
        assert env.checkpoint_root() == colab.local
    with pytest.warns(UserWarning, match="not writable"):
        assert env.mount_drive() is None


def test_full_drive_warns_and_falls_back(colab, monkeypatch):
    env.mount_drive()
    _fail_writes_under(monkeypatch, colab.mount, errno.ENOSPC, at="fsync")
    with pytest.warns(UserWarning, match="Drive full"):
        assert env.checkpoint_root() == colab.local
    assert not list(colab.drive.glob(".kdtp-write-probe*"))       # the probe did not stay


def test_writable_is_false_when_the_folder_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert env._writable(tmp_path / "ok") is True
    assert env._writable(blocker / "sub") is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_real_read_only_folder(colab):
    env.mount_drive()
    colab.drive.mkdir(parents=True, exist_ok=True)
    colab.drive.chmod(0o500)
    try:
        with pytest.warns(UserWarning, match="not writable"):
            assert env.checkpoint_root() == colab.local
    finally:
        colab.drive.chmod(0o700)


def test_ckpt_dir_variable_on_unmounted_drive_is_not_created(colab, monkeypatch):
    """Writing under /content/drive before mounting would make Colab refuse the mount."""
    monkeypatch.setenv("KDTP_CKPT_DIR", str(colab.mount / "MyDrive" / "mine"))
    with pytest.warns(UserWarning, match="not mounted"):
        assert env.checkpoint_root() == colab.local
    assert not colab.mount.exists()
    env.mount_drive()
    assert env.checkpoint_root() == colab.mount / "MyDrive" / "mine"


def test_lab_does_not_crash_when_drive_fills_up_during_training(colab, monkeypatch, tmp_path):
    """Drive accepts the probe, then every checkpoint write fails: training finishes, the
    result is saved locally, the user is warned."""
    env.mount_drive()
    assert env.checkpoint_root() == colab.drive
    real_atomic_save = ck.atomic_save

    def full(obj, path):
        if str(path).startswith(str(colab.mount)):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_atomic_save(obj, path)

    monkeypatch.setattr(kresume, "atomic_save", full)
    with pytest.warns(RuntimeWarning) as caught:
        result = train_or_load(RUN, **TINY)
    messages = " | ".join(str(w.message) for w in caught)
    assert "could not write" in messages and "training goes on" in messages
    assert "saved to" in messages and "instead" in messages
    assert result.source == "trained" and len(result.history["train_loss"]) == 2
    assert result.path == colab.local / "smoke" / "cpu" / f"{RUN}_best.pt"
    assert load_checkpoint(result.path)["config_hash"] == result.config_hash
    assert sum("could not write" in str(w.message) for w in caught) == 1       # said once


def test_nothing_writable_anywhere_still_returns_the_model(colab, monkeypatch, tmp_path):
    env.mount_drive()
    monkeypatch.setattr(kresume, "atomic_save", lambda obj, path: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.warns(RuntimeWarning) as caught:
        result = train_or_load(RUN, **TINY)
    assert any("only in memory" in str(w.message) for w in caught)
    assert result.source == "trained" and isinstance(result.model, torch.nn.Module)
    assert not result.path.exists()
