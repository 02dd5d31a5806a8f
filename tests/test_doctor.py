"""``python -m kdtp doctor``: each fact in the environment that makes it true (no GPU, a T4,
a read-only or full checkpoint folder, missing data offline or unreachable, ImageNet weights
missing, an empty, broken or matching manifest), every problem with what to do next, the
time estimate only where RESULTS.md measured one, and the exit status."""
import json
import types

import pytest
import torch

import kdtp.doctor as doctor
import kdtp.env as env
from kdtp.checkpoint import train_or_load
from kdtp.cli import main as cli_main
from kdtp.data import SYNTHETIC_MARKER, write_synthetic_cifar10
from kdtp.doctor import FAIL, OK, WARN, Fact
from kdtp.recipes import get_recipe
from kdtp.runs import REGISTRY, get_data

RUNS = list(REGISTRY)
ALL_TRAIN = {r: "train" for r in RUNS}
TINY = dict(train_subset=128, val_subset=64, test_subset=64, teacher_arch="cnn_tiny",
            student_arch="cnn_tiny", epochs=1, teacher_epochs=1)


def _unreachable(url):
    return False, "Name or service not known"


def _reachable(url):
    return True, ""


def _problem(fact: Fact, status: str, *words: str) -> None:
    assert fact.status == status, fact
    assert all(w in fact.line + " " + fact.todo for w in words), fact
    assert fact.todo or status not in (WARN, FAIL), "every problem says what to do next"


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("KDTP_DEVICE", raising=False)
    monkeypatch.delenv("KDTP_PRECISION", raising=False)


@pytest.fixture
def t4(monkeypatch):
    """A Colab T4 as torch reports it (no GPU is needed to run this)."""
    monkeypatch.setattr(env, "pick_device", lambda prefer=None: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: types.SimpleNamespace(
        name="Tesla T4", total_memory=15 * 2**30, major=7, minor=5))
    monkeypatch.delenv("KDTP_PRECISION", raising=False)


def test_device_without_gpu_and_on_a_t4(no_gpu, monkeypatch):
    fact = doctor.device_fact(get_recipe("cpu", smoke=False))
    assert fact.status == OK and "no CUDA GPU" in fact.line and env.cpu_class() in fact.line
    _problem(doctor.device_fact(get_recipe("fast", smoke=False)), WARN, "take hours", "T4 GPU", "--recipe cpu_air")
    assert "no CUDA GPU: small CNNs" in doctor.recipe_fact(get_recipe(None, smoke=False), None).line


def test_device_on_a_t4_says_fp16_and_its_class(t4):
    fact = doctor.device_fact(get_recipe("fast", smoke=False))
    assert fact.status == OK and "GPU Tesla T4, 15.0 GiB" in fact.line and "fp16 (no fast bf16)" in fact.line
    assert fact.line.endswith("trains in fp16") and doctor.device_class(torch.device("cuda")) == "gpu-t4"
    assert "a CUDA GPU is visible" in doctor.recipe_fact(get_recipe(None, smoke=False), None).line
    # nothing was measured on a T4: unknown, not a guess
    fact = doctor.time_fact(get_recipe("fast", smoke=False), ALL_TRAIN)
    assert "unknown (nothing measured for this device class, gpu-t4" in fact.line


def test_cpu_class_from_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(env, "cpu_has_amx", lambda: False)
    for flags, klass in (("fpu avx2 avx512_bf16", "cpu-avx512bf16"), ("fpu avx2", "cpu-avx2"), ("fpu sse2", "cpu")):
        (tmp_path / "cpuinfo").write_text(f"processor : 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(env, "CPUINFO", tmp_path / "cpuinfo")
        assert env.cpu_class() == klass
    monkeypatch.setattr(env, "cpu_has_amx", lambda: True)
    assert env.cpu_class() == "cpu-amx"


def test_time_estimate_only_where_results_md_measured_it(no_gpu, monkeypatch):
    rows = doctor.measured_times((doctor.env.project_root() / doctor.RESULTS_MD).read_text())
    assert {"class": "cpu-avx2", "cores": 2, "recipe": "cpu", "time": "29-34 min"} in rows
    cpu = get_recipe("cpu", smoke=False)
    monkeypatch.setattr(env, "cpu_class", lambda: "cpu-avx2")
    monkeypatch.setattr(doctor, "_cores", lambda: 2)
    fact = doctor.time_fact(cpu, ALL_TRAIN)
    assert "29-34 min" in fact.line and "an estimate" in fact.line and "this machine has" not in fact.line
    monkeypatch.setattr(doctor, "_cores", lambda: 8)
    assert "this machine has 8" in doctor.time_fact(cpu, ALL_TRAIN).line
    monkeypatch.setattr(env, "cpu_class", lambda: "cpu-amx")
    assert "unknown (nothing measured for this device class, cpu-amx" in doctor.time_fact(cpu, ALL_TRAIN).line
    assert "every run downloads" in doctor.time_fact(cpu, {r: "download" for r in RUNS}).line
    # the default CPU recipe on the slowest class has a row too, and it says how it was measured
    monkeypatch.setattr(env, "cpu_class", lambda: "cpu-avx2")
    air = doctor.time_fact(get_recipe("cpu_air", smoke=False), ALL_TRAIN).line
    assert "26.5 min" in air and "AVX2 kernels" in air and "an estimate" in air and "29-34" not in air


def test_checkpoint_folder_read_only_full_or_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTP_CKPT_DIR", str(tmp_path / "ck"))
    recipe = get_recipe("cpu", smoke=False)
    need = doctor.lab_bytes(recipe, RUNS)
    assert 1e6 < need < 1e8                               # small CNNs: megabytes, not gigabytes
    assert doctor.lab_bytes(get_recipe("paper", smoke=False), RUNS) > 10 * need
    fact = doctor.checkpoint_fact(recipe, need)
    assert fact.status == OK and f"{tmp_path / 'ck' / 'cpu'} (KDTP_CKPT_DIR, writable" in fact.line
    assert not (tmp_path / "ck").exists(), "the check creates nothing"
    monkeypatch.setattr(env, "_writable", lambda folder: False)     # tests run as root: chmod would not stop writes
    _problem(doctor.checkpoint_fact(recipe, need), FAIL, "not writable", "KDTP_CKPT_DIR")
    monkeypatch.undo()
    monkeypatch.setenv("KDTP_CKPT_DIR", str(tmp_path / "ck"))
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=1000))
    _problem(doctor.checkpoint_fact(recipe, need), FAIL, "0 MiB free", "free some space")


def test_data_present_missing_offline_or_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTP_DATA_DIR", str(tmp_path / "data"))
    real = get_recipe("cpu", smoke=False)
    assert doctor.data_fact(get_recipe("cpu", smoke=True), None).status == OK
    _problem(doctor.data_fact(real, None), WARN, "not checked: offline")
    assert doctor.data_fact(real, _reachable).status == OK
    _problem(doctor.data_fact(real, _unreachable), FAIL, "cannot be downloaded", "Name or service",
             "cifar-10-batches-py", "KDTP_DATA_DIR", "KDTP_SMOKE=1")
    folder = write_synthetic_cifar10(tmp_path / "data", n_train=50, n_test=10)
    assert doctor.data_fact(real, _unreachable).status == FAIL, "generated data is not CIFAR-10"
    (folder / SYNTHETIC_MARKER).unlink()
    assert doctor.data_fact(real, _unreachable) == Fact(OK, f"data: CIFAR-10 present in {folder}")


def test_imagenet_weights_cached_needed_or_not(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    fast = get_recipe("fast", smoke=False)
    _problem(doctor.weights_fact(fast, ALL_TRAIN, _unreachable), FAIL, "resnet50-", "copy", str(tmp_path / "hub"),
             "--recipe cpu_air")
    _problem(doctor.weights_fact(fast, ALL_TRAIN, None), WARN, "not checked: offline")
    assert doctor.weights_fact(fast, ALL_TRAIN, _reachable).status == OK
    fact = doctor.weights_fact(fast, {r: "download" for r in RUNS}, _unreachable)
    assert fact.status == OK and "not needed" in fact.line
    from kdtp.models import _RESNETS

    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    for _, weights in _RESNETS.values():
        (tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]).write_bytes(b"x")
    assert "cached" in doctor.weights_fact(fast, ALL_TRAIN, _unreachable).line
    assert "not used" in doctor.weights_fact(get_recipe("cpu", smoke=False), ALL_TRAIN, None).line


def test_manifest_empty_broken_matching_or_stale(tmp_path, monkeypatch):
    recipe = get_recipe("cpu", smoke=True, **TINY)
    run = "student_scratch_baseline"
    # the doctor's hashes are train_or_load's: a finished run's hash is the one it predicts
    result = train_or_load(run, recipe, ckpt_dir=tmp_path / "ck", verbose=False, progress=False)
    hashes = doctor.expected_hashes(recipe, get_data(recipe), RUNS)
    assert hashes[run] == result.config_hash
    assert len(set(hashes.values())) == len(RUNS)

    how, problem = doctor.plan(recipe, tmp_path / "none.json", hashes, RUNS)
    assert how == ALL_TRAIN and problem == ""
    assert "nothing downloads, all" in doctor.manifest_fact(tmp_path / "none.json", how, "", None).line
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    how, problem = doctor.plan(recipe, broken, hashes, RUNS)
    _problem(doctor.manifest_fact(broken, how, problem, None), WARN, "not valid JSON", "every run trains",
             "python -m kdtp publish")
    entry = {"file_id": "1AbCdEfGhIjK", "sha256": "0" * 64, "size": 1, "config_hash": hashes[run]}
    good = tmp_path / "m.json"
    good.write_text(json.dumps({"format": "kdtp-manifest/1", "checkpoints": {
        f"cpu/{run}": entry, f"cpu/{RUNS[0]}": {**entry, "config_hash": "stale"}}}))
    how, _ = doctor.plan(recipe, good, hashes, RUNS)
    assert how[run] == "download" and how[RUNS[0]] == "train"
    assert doctor.plan(recipe, good, None, RUNS)[0][run] == "download?"
    fact = doctor.manifest_fact(good, how, "", _reachable)
    assert f"1 of {len(RUNS)} runs download" in fact.line and RUNS[0] in fact.line.split("train here:")[1]
    _problem(doctor.manifest_fact(good, how, "", _unreachable), WARN, "Google Drive does not answer")
    no_id = tmp_path / "no_id.json"                           # published, but not uploaded yet
    no_id.write_text(json.dumps({"format": "kdtp-manifest/1", "checkpoints": {f"cpu/{run}": {**entry, "file_id": ""}}}))
    how, _ = doctor.plan(recipe, no_id, hashes, RUNS)
    assert how[run] == "train: no Drive id" and doctor.time_fact(recipe, how).line.startswith("expected lab time")
    _problem(doctor.manifest_fact(no_id, how, "", None), WARN, f"without a Drive id yet: {run}", "publish --id")


def test_exit_status_and_cli(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(doctor, "report", lambda *a, **k: [Fact(OK, "fine"), Fact(FAIL, "broken", "mend it")])
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert "FAIL  broken\n      -> mend it" in out and "1 problem(s) stop the lab" in out
    monkeypatch.undo()
    monkeypatch.setenv("KDTP_CKPT_DIR", str(tmp_path / "ck"))
    assert cli_main(["doctor", "--smoke", "--offline", "--manifest", str(tmp_path / "none.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kdtp doctor | local machine") and "the lab can run here." in out
    assert len([ln for ln in out.splitlines() if ln[:4] in ("ok  ", "info", "warn", "FAIL")]) == 7
    assert cli_main(["doctor", "--manifest", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_probes_are_short_and_run_at_once(monkeypatch):
    seen, real = [], doctor.probe
    monkeypatch.setattr(doctor, "probe", lambda url, timeout=doctor.PROBE_TIMEOUT_S: (seen.append(url), (True, ""))[1])
    reach = doctor.prober(["a", "b", "a"])
    assert sorted(seen) == ["a", "b"] and reach("a") == (True, "") and doctor.PROBE_TIMEOUT_S <= 5
    assert real("http://127.0.0.1:9/", timeout=0.5)[0] is False     # nothing listens: fast "no"
