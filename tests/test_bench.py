"""Smoke test of ``python -m kdtp bench``: the code path runs and reports sane figures.

No timing is asserted here (speed goals live in the benchmark and benchmarks/RESULTS.md);
two steps of batch 8 only prove both loops, the loader timing and the JSON line work.
"""
import json
import subprocess
import sys

import pytest

from kdtp import bench

KEYS = ("kdtp_images_per_s", "reference_images_per_s", "ratio", "peak_rss_mb",
        "kdtp_loader_images_per_s", "reference_loader_images_per_s", "kdtp_step_ms",
        "reference_step_ms")


def test_bench_json_last_line(capsys):
    assert bench.main(steps=2, batch=8, data_dir=None, as_json=True) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    for key in KEYS:
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert result["steps"] == 2 and result["batch"] == 8
    assert result["data"] == "synthetic"
    assert result["precision"] in ("fp32", "bf16", "fp16")
    assert result["reference_precision"] == "fp32"
    # the ratio is the two throughputs' quotient, not an independent number
    assert result["ratio"] == pytest.approx(result["kdtp_images_per_s"] / result["reference_images_per_s"])
    assert any(line.startswith("  ratio kdtp / reference") for line in lines)


def test_bench_refuses_more_steps_than_images(tmp_path):
    from kdtp.data import write_synthetic_cifar10
    from kdtp.env import ConfigError

    write_synthetic_cifar10(tmp_path, n_train=100, n_test=10)
    with pytest.raises(ConfigError, match="fewer --steps"):
        bench.run(steps=50, batch=8, data_dir=tmp_path)


def test_bench_missing_data_dir_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdtp", "bench", "--data-dir", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "CIFAR-10" in proc.stderr


def _candidate(monkeypatch=None, argv=()):
    """benchmarks/airbench_cpu_candidate.py as a module (it is a script, not part of kdtp)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "airbench_cpu_candidate.py"
    spec = importlib.util.spec_from_file_location("airbench_cpu_candidate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "argv", [str(path), *argv])
    return module


def test_airbench_candidate_projects_a_lab_from_timed_steps(monkeypatch, capsys):
    """The projection behind RESULTS.md's part-4 lab-time figures runs, for all four trainings."""
    candidate = _candidate(monkeypatch, ["--project-lab", "--batch", "16", "--steps", "1",
                                         "--teacher-widths", "8,16,16", "--student-widths", "4,8,8"])
    candidate.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "ms/step" in line]
    assert [r.split()[0] for r in rows] == ["teacher", "student", "student", "student"]
    assert "logits + features" in rows[3]
    assert "projected core lab:" in out


def test_airbench_candidate_training_needs_a_data_dir(monkeypatch, capsys):
    candidate = _candidate(monkeypatch, [])
    with pytest.raises(SystemExit) as stop:
        candidate.main()
    assert stop.value.code == 2 and "--data-dir is required" in capsys.readouterr().err


def test_airbench_whitening_makes_patch_covariance_the_identity():
    """The frozen first layer whitens 2x2 patches: their covariance after it is ~I (airbench)."""
    import torch

    candidate = _candidate()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(200, 3, 32, 32, generator=g)
    images = images + 0.8 * images.roll(1, dims=3)          # correlated neighbouring pixels
    conv = torch.nn.Conv2d(3, 24, 2, bias=False)
    candidate.init_whitening(conv, images, eps=0.0)
    with torch.no_grad():
        out = conv(images)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = out.T @ out / len(out)
    assert torch.allclose(cov, torch.eye(12), atol=1e-3)


def test_airbench_candidate_refuses_malformed_widths(monkeypatch, capsys):
    candidate = _candidate(monkeypatch, ["--project-lab", "--student-widths", "16,48"])
    with pytest.raises(SystemExit) as stop:
        candidate.main()
    assert stop.value.code == 2 and "three positive channel counts" in capsys.readouterr().err


def test_precision_step_benchmark_times_both_precisions(monkeypatch, capsys):
    """benchmarks/precision_step.py (behind pick_precision's CPU rule) runs and prints both rates."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "precision_step.py"
    spec = importlib.util.spec_from_file_location("precision_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(path), "cnn_tiny", "--batch", "8", "--min-run-time", "0.01"])
    module.main()
    line = [ln for ln in capsys.readouterr().out.splitlines() if "cnn_tiny" in ln][0]
    assert "fp32" in line and "bf16" in line and line.rstrip().endswith("x")
