"""Bad input anywhere a user types -> one line on stderr, exit code 2, nothing written.

Every case runs ``kdtp.cli.main`` in-process (fast) with the checkpoint, data and figure
folders pointed at folders that do not exist yet: after the error they still must not.
Two cases also run as real ``python -m kdtp`` subprocesses for the exit status.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdtp.cli import main

RUN = "student_scratch_baseline"
SESSION_DATA = os.environ.get("KDTP_DATA_DIR")      # conftest's shared synthetic data

# (argv, extra environment, what the one line must say); {file}/{dir}/{missing} are filled in
CASES = [
    (["train", "nope"], {}, "invalid choice: 'nope'"),
    (["train"], {}, "required: NAME"),
    ([], {}, "required: command"),
    (["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    (["train", RUN, "--recipe", "turbo"], {}, "invalid choice: 'turbo'"),
    (["train", RUN, "--epochs", "0"], {}, "'0' must be >= 1"),
    (["train", RUN, "--epochs", "two"], {}, "'two' is not a whole number"),
    (["train", RUN, "--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
    (["train", RUN, "--set", "alpha"], {}, "--set expects key=value, got 'alpha'"),
    (["train", RUN, "--set", "=3"], {}, "--set expects key=value"),
    (["train", RUN, "--set", "nosuch=1"], {}, "unknown setting 'nosuch'"),
    (["train", RUN, "--set", "name=mine"], {}, "unknown setting 'name'"),
    (["train", RUN, "--set", "smoke=perhaps"], {}, "smoke='perhaps' is not a valid bool"),
    (["train", RUN, "--set", "alpha=high"], {}, "alpha='high' is not a valid float"),
    (["train", RUN, "--set", "alpha=2"], {}, "alpha must be in [0, 1]"),
    (["train", RUN, "--set", "epochs=1.5"], {}, "epochs='1.5' is not a valid int"),
    (["train", RUN, "--set", "tta_flip=maybe"], {}, "tta_flip='maybe' is not a valid bool"),
    (["train", RUN, "--set", "batch_size=0"], {}, "batch_size must be >= 1"),
    (["train", RUN, "--set", "student_arch=vgg"], {}, "student_arch must be one of"),
    (["train", RUN, "--ckpt-dir", "{file}"], {}, "--ckpt-dir {file} is a file, not a folder"),
    (["train", RUN, "--ckpt-dir", "{file}/sub"], {}, "which is a file"),
    (["train", RUN, "--data-dir", "{file}"], {}, "--data-dir {file} is a file"),
    (["train", RUN], {"KDTP_SMOKE": "maybe"}, "KDTP_SMOKE='maybe' is not understood"),
    (["train", RUN], {"KDTP_CKPT_DIR": "{file}"}, "KDTP_CKPT_DIR="),
    (["train", RUN], {"KDTP_DATA_DIR": "{file}"}, "KDTP_DATA_DIR="),
    (["train", RUN], {"KDTP_FIGURES_DIR": "{file}"}, "KDTP_FIGURES_DIR="),
    (["train", RUN], {"KDTP_RECIPE": "turbo"}, "KDTP_RECIPE='turbo' is unknown"),
    (["train", RUN], {"KDTP_DEVICE": "tpu"}, "device 'tpu' is unknown"),
    (["train", RUN], {"KDTP_MANIFEST": "{dir}"}, "KDTP_MANIFEST="),
    (["train", RUN], {"KDTP_PRECISION": "fp8"}, "KDTP_PRECISION"),
    (["train", RUN], {"KDTP_LOCK_STALE_S": "soon"}, "KDTP_LOCK_STALE_S"),
    (["data"], {}, "required: --synthetic"),
    (["data", "--synthetic", "{file}"], {}, "--synthetic {file} is a file"),
    (["data", "--synthetic", "{dir}", "--train", "-5"], {}, "'-5' must be >= 1"),
    (["lab", "--out", "{file}"], {}, "--out {file} is a file"),
    (["bench", "--steps", "0"], {}, "'0' must be >= 1"),
    (["publish", "--id", "x"], {}, "--id expects RUN=DRIVE_ID"),
    (["publish", "--id", "nobody=1AbCdEfGhIjKlMn"], {}, "unknown run 'nobody'"),
    (["publish", "--recipe", "turbo"], {}, "invalid choice: 'turbo'"),
    (["publish", "--ckpt-dir", "{file}"], {}, "--ckpt-dir {file} is a file"),
    (["publish", "--ckpt-dir", "{missing}"], {}, "does not exist"),
    (["publish", "--manifest", "{dir}"], {}, "is a folder"),
]
if not torch.cuda.is_available():
    CASES.append((["train", RUN], {"KDTP_DEVICE": "cuda"}, "no CUDA GPU is visible"))


def _tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                  for p in root.rglob("*"))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Folders the CLI would write to (not created), one file and one folder to misuse."""
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_dir").mkdir()
    for var, sub in (("KDTP_CKPT_DIR", "ck"), ("KDTP_DATA_DIR", "data"), ("KDTP_FIGURES_DIR", "fig"),
                     ("KDTP_MANIFEST", "manifest.json")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("KDTP_SMOKE", "1")
    monkeypatch.delenv("KDTP_RECIPE", raising=False)
    monkeypatch.delenv("KDTP_DEVICE", raising=False)
    monkeypatch.chdir(tmp_path / "a_dir")
    return tmp_path


def _fill(text: str, root: Path) -> str:
    return text.format(file=root / "a_file", dir=root / "a_dir", missing=root / "missing")


@pytest.mark.parametrize("argv,env,expected", CASES, ids=[" ".join(c[0]) + " " + " ".join(
    f"{k}={v}" for k, v in c[1].items()) for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(sandbox, monkeypatch, capsys, argv, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, _fill(v, sandbox))
    argv = [_fill(a, sandbox) for a in argv]
    before = _tree(sandbox)
    try:
        rc = main(argv)
    except SystemExit as exc:          # argparse's own errors
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert out == ""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("python -m kdtp"), err
    assert _fill(expected, sandbox) in lines[0]
    assert "Traceback" not in err
    assert _tree(sandbox) == before, "something was written"


def test_load_only_without_checkpoint_is_one_line_exit_1(sandbox, monkeypatch, capsys):
    """Not a typo but a missing file: exit 1, one line that says what to do."""
    data = SESSION_DATA or str(sandbox / "data")
    rc = main(["train", RUN, "--set", "smoke=1", "--recipe", "cpu", "--load-only", "--set", "student_arch=cnn_tiny",
               "--set", "train_subset=128", "--ckpt-dir", str(sandbox / "ck"), "--data-dir", data])
    out, err = capsys.readouterr()
    assert rc == 1 and len(err.strip().split("\n")) == 1 and "without load_only" in err
    assert not (sandbox / "ck").exists()


@pytest.mark.parametrize("argv,env,expected", [
    (["train", RUN, "--set", "alpha=high"], {}, "not a valid float"),
    (["train", RUN], {"KDTP_SMOKE": "maybe"}, "KDTP_SMOKE"),
])
def test_real_process_exit_status(tmp_path, argv, env, expected):
    full_env = {**os.environ, "KDTP_CKPT_DIR": str(tmp_path / "ck"), "KDTP_DATA_DIR": str(tmp_path / "d"), **env}
    p = subprocess.run([sys.executable, "-m", "kdtp", *argv], capture_output=True, text=True,
                       env=full_env, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and expected in p.stderr
    assert list(tmp_path.iterdir()) == []
