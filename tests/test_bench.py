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
