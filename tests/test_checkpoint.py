"""Checkpoint files: atomic writes, strict and safe loading, stale configurations.

Faults tried here: a write that dies half-way (exception, full disk, 3 times), processes
writing checkpoints in a loop frozen 20 times and killed 4 times at random moments, truncated files (5 cut points), empty / HTML /
random / bit-flipped files, pickles whose unpickling would run code (3 kinds), files with
missing keys, and checkpoints made with other settings (alpha, epochs, smoke vs real).
"""
import errno
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

import kdtp.checkpoint as ck
import kdtp.resume as kresume
from kdtp.checkpoint import (CheckpointError, CorruptCheckpointError, atomic_save, load_checkpoint,
                             train_or_load)

# the smallest real runs: tiny CNNs, a few batches, one epoch
TINY = dict(recipe="cpu", smoke=True, progress=False, train_subset=128, val_subset=64,
            test_subset=64, teacher_arch="cnn_tiny", student_arch="cnn_tiny", epochs=1,
            teacher_epochs=1)
RUN = "student_scratch_baseline"


def _no_training(*args, **kwargs):
    raise AssertionError("trained although it should not have")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run (its folder is copied by the tests that damage it)."""
    root = tmp_path_factory.mktemp("trained")
    result = train_or_load(RUN, ckpt_dir=root, verbose=False, **TINY)
    assert result.source == "trained" and result.path.is_file()
    return result


def _copy_run(trained, tmp_path) -> Path:
    """A private copy of the trained run's folder; returns the copy of its best file."""
    src = trained.path.parent
    dst = tmp_path / "ck" / src.relative_to(src.parents[1])
    shutil.copytree(src, dst)
    return dst / trained.path.name


def _kdtp_payload(**extra):
    return {"format": ck.FORMAT, "kind": "best", "model": {"w": torch.ones(2)}, "config": {},
            "config_hash": "x", "metrics": {"test_acc": 0.5}, **extra}


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_save_keeps_the_old_file_when_the_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "run_last.pt"
    atomic_save(_kdtp_payload(epoch=1), path)
    real_save = torch.save

    def dies_half_way(obj, fh):
        real_save(obj, fh)
        fh.truncate(fh.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    for _ in range(3):
        with pytest.raises(OSError, match="No space"):
            atomic_save(_kdtp_payload(epoch=2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1                   # the previous good copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_last.pt"]   # no temp debris


def test_atomic_save_respects_umask_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_save(_kdtp_payload(), tmp_path / "a_best.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


_WRITER = textwrap.dedent("""
    import sys, torch
    from kdtp.checkpoint import atomic_save, FORMAT
    path = sys.argv[1]
    big = torch.randn(6_000_000)       # 24 MB: a kill often lands inside a write
    i = 0
    while True:
        i += 1
        big[0] = i
        atomic_save({"format": FORMAT, "kind": "best", "model": {"w": big}, "config": {},
                     "config_hash": str(i), "metrics": {"test_acc": 0.0}}, path)
        print(i, flush=True)
""")


def test_sigkill_during_writes_never_leaves_a_torn_checkpoint(tmp_path):
    """Writers saving 24 MB checkpoints in a loop: 20 freezes (SIGSTOP: the disk then holds
    exactly what a kill at that instant would leave) and 4 SIGKILLs at random moments; the
    file on disk must load after every one."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    target = tmp_path / "out" / "model_best.pt"
    rng = random.Random(1234)
    versions, mid_write = [], 0

    def check_disk():
        nonlocal mid_write
        payload = load_checkpoint(target)                      # must load, every time
        assert payload["model"]["w"][0].item() == int(payload["config_hash"])
        versions.append(int(payload["config_hash"]))
        leftovers = [p for p in target.parent.iterdir() if p != target]
        assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers), leftovers
        assert list(target.parent.glob("*.pt")) == [target], "a temp file looks like a checkpoint"
        return leftovers

    kills = freezes = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout.readline().strip(), "the writer died before its first save"
            for _ in range(5):
                time.sleep(rng.uniform(0.0, 0.3))
                proc.send_signal(signal.SIGSTOP)
                try:
                    freezes += 1
                    mid_write += any(f".{proc.pid}." in p.name for p in check_disk())
                finally:
                    proc.send_signal(signal.SIGCONT)
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            kills += 1
        check_disk()
    assert (kills, freezes) == (4, 20) and len(set(versions)) > 1
    assert mid_write > 0, "no freeze landed inside a write: the test proved nothing"
    # kills inside a write left a temp file (one each at most); the next run in that
    # folder removes the leftovers of dead writers
    present = sorted(target.parent.glob(".*.tmp"))
    assert len(present) <= kills
    assert sorted(ck.remove_stale_temps(target.parent)) == present
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    print(f"{kills} kills and {freezes} freezes, {mid_write} freezes inside a write, "
          f"{len(present)} kills inside a write")


# ----------------------------------------------------------------------------- safe loading
@pytest.mark.parametrize("cut", [0, 100, 5000, 0.5, -1])
def test_truncated_checkpoint_is_reported_with_its_name(trained, tmp_path, cut):
    data = trained.path.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (len(data) + cut if cut < 0 else cut)
    bad = tmp_path / "x_best.pt"
    bad.write_bytes(data[:n])
    with pytest.raises(CorruptCheckpointError) as info:
        load_checkpoint(bad)
    msg = str(info.value)
    assert str(bad) in msg
    assert ("empty" in msg) if n == 0 else ("truncated" in msg or "damaged" in msg)
    assert "weights_only=False" not in msg or "Never" in msg   # never advise the unsafe load


@pytest.mark.parametrize("content,reason", [
    (b"<!DOCTYPE html><html><body>Google Drive - Quota exceeded</body></html>", "web page"),
    (bytes(random.Random(0).randrange(256) for _ in range(4096)), "damaged"),
])
def test_foreign_bytes_are_refused(tmp_path, content, reason):
    bad = tmp_path / "x_best.pt"
    bad.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=reason):
        load_checkpoint(bad)


def test_flipped_bytes_are_refused(trained, tmp_path):
    data = bytearray(trained.path.read_bytes())
    for i in range(64, 192):           # the pickle at the start of the archive
        data[i] ^= 0xFF
    bad = tmp_path / "x_best.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=str(bad.name)):
        load_checkpoint(bad)


class _TouchOnLoad:
    """Unpickling this would create a file (the attack: code in a 'checkpoint')."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


class _SystemOnLoad:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _hostile_files(tmp_path):
    """(name, writer) for three ways of hiding code in a checkpoint-named file."""
    canary = tmp_path / "PWNED"

    def torch_zip(path):
        torch.save(_kdtp_payload(extra=_TouchOnLoad(canary)), path)

    def torch_zip_system(path):
        torch.save(_kdtp_payload(extra=_SystemOnLoad(canary)), path)

    def plain_pickle_in_zip(path):      # a hand-made zip whose data.pkl is a plain pickle
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps(_TouchOnLoad(canary), protocol=2))
            z.writestr("archive/version", "3\n")

    return canary, [torch_zip, torch_zip_system, plain_pickle_in_zip]


def test_pickled_code_is_never_run(tmp_path):
    canary, writers = _hostile_files(tmp_path)
    # the payloads do work when unpickled unsafely: the test would notice a safe-load regression
    with open(tmp_path / "probe.pkl", "wb") as fh:
        pickle.dump(_TouchOnLoad(tmp_path / "probe_ran"), fh)
    pickle.loads((tmp_path / "probe.pkl").read_bytes())
    assert (tmp_path / "probe_ran").exists()
    for write in writers:
        path = tmp_path / f"{write.__name__}_best.pt"
        write(path)
        with pytest.raises(CorruptCheckpointError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
        assert not canary.exists(), f"{write.__name__}: unpickling ran code"
    assert "pickled code" in str(info.value) or "damaged" in str(info.value)


def test_hostile_best_file_is_moved_aside_and_retrained(trained, tmp_path, capsys):
    best = _copy_run(trained, tmp_path)
    canary = tmp_path / "PWNED"
    torch.save(_kdtp_payload(extra=_TouchOnLoad(canary)), best)
    root = tmp_path / "ck"
    with pytest.raises(CheckpointError, match=f"{best.name}.*pickled code.*without load_only"):
        train_or_load(RUN, ckpt_dir=root, load_only=True, **TINY)
    assert best.is_file() and not canary.exists()                   # load-only moves nothing
    result = train_or_load(RUN, ckpt_dir=root, **TINY)
    out = capsys.readouterr().out
    assert result.source == "trained" and not canary.exists()
    assert "pickled code" in out and "moved aside" in out
    aside = list(best.parent.glob(f"{best.name}.corrupt-*"))
    assert len(aside) == 1 and not aside[0].name.endswith(".pt")
    assert load_checkpoint(best)["config_hash"] == result.config_hash


def test_incomplete_kdtp_file_is_refused(tmp_path):
    path = tmp_path / "x_last.pt"
    torch.save({"format": ck.FORMAT, "kind": "last", "model": {}}, path)
    with pytest.raises(CorruptCheckpointError, match="missing: config"):
        load_checkpoint(path)
    torch.save({"some": "dict"}, path)
    with pytest.raises(CorruptCheckpointError, match="not a kdtp checkpoint"):
        load_checkpoint(path)


def test_truncated_best_is_moved_aside_and_retrained(trained, tmp_path, capsys):
    best = _copy_run(trained, tmp_path)
    best.write_bytes(trained.path.read_bytes()[:5000])
    root = tmp_path / "ck"
    with pytest.raises(CheckpointError, match="truncated.*without load_only"):
        train_or_load(RUN, ckpt_dir=root, load_only=True, **TINY)
    result = train_or_load(RUN, ckpt_dir=root, **TINY)
    out = capsys.readouterr().out
    assert f"{best} cannot be loaded: it is truncated" in out and "moved aside" in out
    assert result.source == "trained" and load_checkpoint(best)       # replaced by a sound file
    assert len(list(best.parent.glob("*.corrupt-*"))) == 1


def test_checkpoint_of_another_network_is_not_loaded(trained, tmp_path, monkeypatch):
    """A file whose hash matches but whose weights do not fit (edited by hand) is refused."""
    best = _copy_run(trained, tmp_path)
    payload = load_checkpoint(best)
    payload["model"] = {"conv.weight": torch.zeros(1)}
    torch.save(payload, best)
    with pytest.raises(CheckpointError, match="does not fit"):
        train_or_load(RUN, ckpt_dir=tmp_path / "ck", load_only=True, **TINY)


# ----------------------------------------------------------------------------- other settings
def test_stale_config_is_never_loaded_and_the_message_says_what_differs(trained, tmp_path, monkeypatch):
    _copy_run(trained, tmp_path)
    root = tmp_path / "ck"
    monkeypatch.setattr(kresume, "fit", _no_training)
    with pytest.raises(CheckpointError) as info:
        train_or_load(RUN, ckpt_dir=root, load_only=True, **{**TINY, "epochs": 2, "lr": 0.5})
    msg = str(info.value)
    assert "epochs: 1 in the file, 2 asked" in msg and "lr: " in msg and "without load_only" in msg
    assert "alpha" not in msg                                # baselines do not depend on KD settings


def test_kd_settings_alpha_and_temperature_are_compared(tmp_path):
    root = tmp_path / "ck"
    kd = "student_scratch_kd_scores"
    first = train_or_load(kd, ckpt_dir=root, **TINY)
    with pytest.raises(CheckpointError, match=r"alpha: 0.5 in the file, 0.9 asked.*temperature: 4.0 in the file, 2.0 asked"):
        train_or_load(kd, ckpt_dir=root, load_only=True, alpha=0.9, temperature=2.0, **TINY)
    assert load_checkpoint(first.path)["config"]["alpha"] == 0.5             # kept as it was


def test_smoke_checkpoint_never_stands_in_for_a_real_one(trained, tmp_path):
    """Copied into the real run folder, a smoke file is detected by its settings."""
    root = tmp_path / "ck"
    real_folder = root / "cpu"
    real_folder.mkdir(parents=True)
    shutil.copy(trained.path, real_folder / trained.path.name)
    real = {**TINY, "smoke": False, "synthetic": True}     # "real" mode without network
    with pytest.raises(CheckpointError, match=r"smoke: True in the file, False asked"):
        train_or_load(RUN, ckpt_dir=root, load_only=True, **real)


def test_unfinished_run_of_other_settings_is_parked_then_resumed(tmp_path, monkeypatch, capsys):
    """A last file from alpha=... is not resumed by another config, nor lost: it resumes later."""
    root = tmp_path / "ck"
    kw = {**TINY, "epochs": 2}

    class Crash(Exception):
        pass

    real_fit = kresume.fit

    def crash_after_first_epoch(*args, on_epoch_end, **kwargs):
        def cb(state):
            on_epoch_end(state)
            raise Crash
        return real_fit(*args, on_epoch_end=cb, **kwargs)

    monkeypatch.setattr(kresume, "fit", crash_after_first_epoch)
    with pytest.raises(Crash):
        train_or_load(RUN, ckpt_dir=root, lr=0.01, **kw)          # leaves RUN_last.pt (lr 0.01)
    with pytest.raises(Crash):
        train_or_load(RUN, ckpt_dir=root, lr=0.02, **kw)          # parks it, starts lr 0.02
    out = capsys.readouterr().out
    assert "unfinished run with other settings (lr: 0.01 in the file, 0.02 asked" in out
    folder = root / "smoke" / "cpu"
    lasts = {load_checkpoint(p)["config"]["lr"]: p.name for p in folder.glob("*_last.pt")}
    assert set(lasts) == {0.01, 0.02}
    monkeypatch.setattr(kresume, "fit", real_fit)
    again = train_or_load(RUN, ckpt_dir=root, lr=0.01, **kw)
    assert again.source == "resumed" and again.config["lr"] == 0.01
    assert "resuming" in capsys.readouterr().out
