"""One run, one trainer: processes asking for the same run train it once; a dead holder's
lock is taken over and the run resumes; different runs never wait for each other."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kdtp import lock
from kdtp.checkpoint import load_checkpoint
from throttled import THROTTLED

ARGS = ["train", "student_pretrained_baseline", "--recipe", "cpu", "--smoke", "--epochs", "3",
        "--set", "student_arch=cnn_tiny", "--set", "train_subset=128", "--set", "val_subset=64",
        "--set", "test_subset=64", "--set", "batch_size=32"]


def _env(tmp_path, **extra):
    env = {**os.environ, "KDTP_CKPT_DIR": str(tmp_path / "ck"), "KDTP_DATA_DIR": str(tmp_path / "data"),
           "OMP_NUM_THREADS": "1", "KDTP_SMOKE": "1", **extra}
    env.pop("KDTP_RECIPE", None)
    return env


def _start(tmp_path, sleep=0.05, **extra):
    return subprocess.Popen([sys.executable, "-c", THROTTLED.format(sleep), *ARGS, "--ckpt-dir", str(tmp_path / "ck")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(tmp_path, **extra))


def _folder(tmp_path):
    return tmp_path / "ck" / "smoke" / "cpu"


def test_three_processes_asking_for_one_run_train_it_once(tmp_path):
    # no data yet: the three also generate the synthetic set at once (written atomically)
    procs = [_start(tmp_path, sleep=0.4) for _ in range(3)]     # ~5 s of training: they overlap
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trained = [o for o in outs if "(trained:" in o]
    assert len(trained) == 1, outs
    assert all("(trained:" in o or "(loaded:" in o for o in outs), outs
    assert sum("is being trained by" in o for o in outs) >= 1, outs   # a waiter said who trains it
    accs = {o.strip().splitlines()[-1].split("test accuracy ")[1].split()[0] for o in outs}
    assert len(accs) == 1, outs                                    # one result for all three
    rows = [json.loads(r) for r in (_folder(tmp_path) / "results.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == ["student_pretrained_baseline"], "recorded once"
    assert not list(_folder(tmp_path).glob("*.lock")), "the lock is released"


def test_a_killed_holders_lock_is_taken_over_and_the_run_resumes(tmp_path):
    holder = _start(tmp_path, sleep=0.3)
    last = _folder(tmp_path) / "student_pretrained_baseline_last.pt"
    deadline = time.time() + 240
    while not last.is_file() and time.time() < deadline:          # one epoch finished
        time.sleep(0.2)
    assert last.is_file(), "the holder never finished an epoch"
    assert (_folder(tmp_path) / "student_pretrained_baseline.lock").is_file()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    done_before = load_checkpoint(last)["epoch"]
    second = _start(tmp_path, sleep=0.0)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    assert "taking over the lock" in out and "no longer running" in out, out
    assert f"resuming student_pretrained_baseline from student_pretrained_baseline_last.pt: {done_before}/3" in out, out
    assert not list(_folder(tmp_path).glob("*.lock"))


def test_another_hosts_lock_waits_until_its_heartbeat_is_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDTP_LOCK_STALE_S", "1.5")
    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"host": "other-colab-runtime", "pid": 1, "token": "x", "started": time.time(),
                                "heartbeat": time.time()}))
    start = time.time()
    with lock.hold(tmp_path, "run", poll_s=0.1) as waited:
        assert waited and lock.RunLock(tmp_path, "run").path.is_file()
    assert time.time() - start >= 1.4                               # waited for the stale time
    out = capsys.readouterr().out
    assert "is being trained by other-colab-runtime" in out and "heartbeat is" in out
    assert not path.exists()


def test_a_live_holder_is_waited_for_and_different_runs_do_not_wait(tmp_path):
    a = lock.RunLock(tmp_path, "run_a")
    assert a.acquire()
    try:
        assert lock.live_holder(tmp_path, "run_a")["pid"] == os.getpid()
        start = time.time()
        with lock.hold(tmp_path, "run_b", log=lambda m: pytest.fail(m)) as waited:
            assert not waited
        assert time.time() - start < 1.0
        assert not lock.RunLock(tmp_path, "run_a").acquire(), "a held lock is never taken twice"
    finally:
        a.release()
    assert lock.live_holder(tmp_path, "run_a") is None and not a.path.exists()


def test_load_only_says_who_is_training_instead_of_waiting(tmp_path, capsys):
    folder = _folder(tmp_path)
    held = lock.RunLock(folder, "student_pretrained_baseline")
    assert held.acquire()
    try:
        proc = subprocess.run([sys.executable, "-m", "kdtp", *ARGS, "--load-only", "--ckpt-dir", str(tmp_path / "ck")],
                              capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    finally:
        held.release()
    assert proc.returncode == 1 and "is being trained right now by this machine" in proc.stderr, proc.stderr


def test_a_bad_stale_setting_is_refused():
    from kdtp.env import ConfigError
    os.environ["KDTP_LOCK_STALE_S"] = "soon"
    try:
        with pytest.raises(ConfigError, match="KDTP_LOCK_STALE_S"):
            lock.stale_after()
    finally:
        del os.environ["KDTP_LOCK_STALE_S"]
