"""Resume: an interrupted run continues where it stopped and ends exactly as an
uninterrupted one would (on CPU, bit for bit).

Faults tried here: a crash after epoch 2 of 3 inside the process (2 runs: a baseline and
feature KD with its trained adapter), and 5 SIGKILLs of a ``python -m kdtp train``
subprocess (1 right after a ``last`` file was written, 4 at seeded random moments), with
every ``*.pt`` on disk loaded after each kill.
"""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import kdtp.checkpoint as ck
import kdtp.resume as kresume
from kdtp.checkpoint import load_checkpoint, train_or_load
from kdtp.recipes import get_recipe
from kdtp.runs import get_data
from throttled import THROTTLED

TINY = dict(recipe="cpu", smoke=True, progress=False, train_subset=128, val_subset=64,
            test_subset=64, teacher_arch="cnn_tiny", student_arch="cnn_tiny", teacher_epochs=1)


KILLS = 5   # 1 right after an epoch was saved + 4 at random moments (each costs a ~5 s start)
STEP_SLEEP = 0.25


class Crash(Exception):
    """Stands for a disconnect: raised right after an epoch's ``last`` file is written."""


def _fit_recording(record: dict, crash_after: int | None = None):
    """Wrap ``kdtp.checkpoint.fit``: remember the final weights, optionally crash."""
    real_fit = kresume.fit

    def fit(strategy, *args, on_epoch_end, **kwargs):
        def cb(state):
            on_epoch_end(state)
            if crash_after is not None and state.epoch == crash_after:
                raise Crash
        state = real_fit(strategy, *args, on_epoch_end=cb, **kwargs)
        record["final"] = {k: v.detach().clone() for k, v in strategy.state_dict().items()}
        return state
    return fit


def _same_history(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


# cpu_air: airbench's lookahead average and alternating flips must resume exactly too
AIR = dict(recipe="cpu_air", teacher_arch="air_w4", student_arch="air_w4",
           whiten_bias_epochs=1)   # the whitening bias frozen in epochs 2-3: the resumed epoch must freeze it too


@pytest.mark.parametrize("run, recipe", [("student_scratch_baseline", {}), ("student_pretrained_kd_features", {}),
                                         ("student_pretrained_kd_logits", AIR)])
def test_resumed_run_equals_uninterrupted_run(run, recipe, tmp_path, monkeypatch, capsys):
    """3 epochs straight vs 2 epochs, crash, resume to 3: same weights, history, metrics."""
    kw = dict(TINY, epochs=3, **recipe)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    one: dict = {}
    monkeypatch.setattr(kresume, "fit", _fit_recording(one))
    a = train_or_load(run, ckpt_dir=straight, **kw)
    if a.teacher is not None:      # same teacher file for both (not trained twice)
        dst = resumed / a.teacher.path.relative_to(straight)
        dst.parent.mkdir(parents=True)
        shutil.copy(a.teacher.path, dst)

    two: dict = {}
    monkeypatch.setattr(kresume, "fit", _fit_recording(two, crash_after=2))
    with pytest.raises(Crash):
        train_or_load(run, ckpt_dir=resumed, **kw)
    last = resumed / "smoke" / kw["recipe"] / f"{run}_last.pt"
    assert load_checkpoint(last)["epoch"] == 2 and not last.with_name(f"{run}_best.pt").exists()
    capsys.readouterr()

    monkeypatch.setattr(kresume, "fit", _fit_recording(two))
    b = train_or_load(run, ckpt_dir=resumed, **kw)
    assert b.source == "resumed" and a.source == "trained"
    out = capsys.readouterr().out
    assert "resuming" in out and "2/3 epochs already done" in out
    assert not last.exists()                              # a finished run leaves only _best
    # the last epoch ran after the resume: its weights and numbers must match exactly
    assert one["final"].keys() == two["final"].keys()
    for k, v in one["final"].items():
        assert torch.equal(v, two["final"][k]), f"final weights differ at {k}"
    assert _same_history(a.history, b.history) and len(b.history["train_loss"]) == 3
    for k in ("test_acc", "val_acc", "best_epoch"):
        assert a.metrics[k] == b.metrics[k]
    sa, sb = load_checkpoint(a.path)["model"], load_checkpoint(b.path)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    if run.endswith("features"):                      # the adapter was resumed too
        assert any(k.startswith("hint.") for k in two["final"])


def _load_everything(folder: Path) -> dict[str, dict]:
    """Every ``*.pt`` on disk must load; temp files must not look like checkpoints."""
    out = {}
    for p in sorted(folder.rglob("*.pt")):
        out[p.name] = load_checkpoint(p)        # raises on a torn file
    for p in folder.rglob("*"):
        # a killed run's lock stays until the next run takes it over (kdtp.lock)
        if p.is_file() and not p.name.endswith((".pt", ".jsonl", ".lock")):
            assert p.name.startswith(".") and p.name.endswith(".tmp"), f"unexpected file {p}"
    return out


def test_kill_at_random_moments_then_resume(tmp_path):
    """SIGKILL ``python -m kdtp train`` KILLS times; nothing torn, no finished epoch lost, and the
    final result equals an uninterrupted run's.

    Kill moments are seeded random delays, anchored on the run's own progress lines: right
    after the first save, at the start of a (resumed) run, or right after an epoch line
    (just before that epoch's save), so kills land in training steps, evaluation and saves.
    """
    run, epochs = "student_scratch_baseline", 5
    sets = dict(train_subset=256, val_subset=64, test_subset=64, student_arch="cnn_tiny")
    data_dir = Path(os.environ["KDTP_DATA_DIR"])
    get_data(get_recipe("cpu", smoke=True, **sets), data_dir)       # data exists before any kill
    ckpt = tmp_path / "ck"
    folder = ckpt / "smoke" / "cpu"
    last = folder / f"{run}_last.pt"
    args = ["train", run, "--smoke", "--recipe", "cpu", "--epochs", str(epochs), "--ckpt-dir", str(ckpt),
            "--data-dir", str(data_dir)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    # the killed runs are throttled (>= STEP_SLEEP per training batch), so an epoch lasts at
    # least 4 * STEP_SLEEP however fast the machine is: a random delay below that can cross
    # at most one epoch boundary, and the run cannot finish before its last kill
    killed_cmd = [sys.executable, "-c", THROTTLED.format(STEP_SLEEP), *args]
    env = {**os.environ, "KDTP_SMOKE": "1", "PYTHONUNBUFFERED": "1"}
    rng = random.Random(20240605)

    def wait_for(proc, marker: str) -> list[str]:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                break
        return lines

    epochs_on_disk, resumed_seen, kills, moments = [0], 0, 0, []
    t0 = time.time()
    for i in range(KILLS):
        proc = subprocess.Popen(killed_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            lines = wait_for(proc, "[kdtp] training")
            resumed_seen += any("resuming" in ln for ln in lines)
            if i == 0:         # the first kill lands right after epoch 1 was saved
                wait_for(proc, f"epoch 1/{epochs}:")      # printed just before the save
                deadline = time.time() + 120
                while time.time() < deadline and proc.poll() is None and not last.exists():
                    time.sleep(0.01)
                moments.append("just after the first save")
            else:
                anchor = "start"
                if i % 2 == 1:                      # kills 2 and 4: one epoch later
                    wait_for(proc, f"epoch {epochs_on_disk[-1] + 1}/{epochs}:")
                    anchor = "epoch line"
                delay = rng.uniform(0.0, 0.9) * 4 * STEP_SLEEP       # within one epoch
                moments.append(f"{anchor} + {delay:.2f}s")
                time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            kills += 1
        on_disk = _load_everything(folder)
        assert f"{run}_best.pt" not in on_disk, "finished before being killed: kills came too late"
        epoch = on_disk[f"{run}_last.pt"]["epoch"] if f"{run}_last.pt" in on_disk else 0
        assert epoch >= epochs_on_disk[-1], f"kill {kills}: a saved epoch was lost"
        epochs_on_disk.append(epoch)
    assert 0 < epochs_on_disk[-1] < epochs

    t_kills = time.time() - t0
    final = subprocess.run([sys.executable, "-m", "kdtp", *args], capture_output=True, text=True, env=env, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"resuming {run} from {run}_last.pt: {epochs_on_disk[-1]}/{epochs} epochs" in final.stdout
    assert "(resumed:" in final.stdout
    on_disk = _load_everything(folder)
    assert set(on_disk) == {f"{run}_best.pt"}
    assert not list(folder.glob("*.lock")), "the run that finished released the lock"
    best = on_disk[f"{run}_best.pt"]
    print(f"{kills} kills at {moments}; epochs on disk after each: {epochs_on_disk[1:]}; "
          f"{resumed_seen} killed runs had resumed; temp files left: "
          f"{len(list(folder.glob('.*.tmp')))}; {t_kills:.0f}s of kills, final run {time.time() - t0 - t_kills:.0f}s")

    # the same run, never interrupted, in this process: identical numbers
    straight = train_or_load(run, "cpu", smoke=True, epochs=epochs, teacher_epochs=epochs,
                             ckpt_dir=tmp_path / "straight", data_dir=data_dir, progress=False,
                             verbose=False, **sets)
    assert straight.config_hash == best["config_hash"]
    assert _same_history(straight.history, best["history"])
    assert straight.metrics["test_acc"] == best["metrics"]["test_acc"]
    assert all(torch.equal(v, best["model"][k]) for k, v in straight.model.state_dict().items())


def test_rng_states_survive_a_safe_save_and_load(tmp_path):
    """torch, numpy and python generators are saved in a weights_only-loadable form and
    restored exactly (a strategy with dropout or random choices resumes identically)."""
    import random as pyrandom

    import numpy as np

    torch.manual_seed(1), np.random.seed(2), pyrandom.seed(3)
    np.random.randn()                              # a cached gaussian is part of the state
    state = kresume.rng_state()
    first = (torch.rand(3), np.random.rand(3), [pyrandom.random() for _ in range(3)])
    path = ck.atomic_save({"format": ck.FORMAT, "kind": "best", "model": {}, "config": {},
                           "config_hash": "x", "metrics": {}, "rng": state}, tmp_path / "r_best.pt")
    torch.manual_seed(99), np.random.seed(99), pyrandom.seed(99)
    kresume.set_rng_state(load_checkpoint(path)["rng"])
    again = (torch.rand(3), np.random.rand(3), [pyrandom.random() for _ in range(3)])
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
