"""Published checkpoints: the manifest, verified Drive downloads, and ``python -m kdtp publish``.

Faults tried here (a fake gdown, no network): an HTML quota page, wrong bytes of the right
size, a short download, a download that dies half-way, a gdown exception (quota), gdown
returning None, a manifest entry made with other settings, manifest entries that cannot be verified
(no or bad sha256, a non-numeric size, a non-text id), a manifest that is not JSON; for publish: smoke checkpoints, a corrupt checkpoint,
malformed and unknown ``--id`` values.
"""
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

import kdtp.checkpoint as ck
import kdtp.published as kpublished
import kdtp.resume as kresume
from kdtp.checkpoint import CheckpointError, load_checkpoint, sha256_file, train_or_load
from kdtp.cli import main as cli_main
from kdtp.data import SYNTHETIC_MARKER, write_synthetic_cifar10
from kdtp.env import ConfigError
from kdtp.publish import publish

RUN = "student_scratch_baseline"
TINY = dict(recipe="cpu", progress=False, train_subset=128, val_subset=64, test_subset=64,
            teacher_arch="cnn_tiny", student_arch="cnn_tiny", epochs=1, teacher_epochs=1)
DRIVE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"


def _no_training(*args, **kwargs):
    raise AssertionError("trained although a verified published checkpoint exists")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A finished smoke run (what a student's kit makes) and its manifest entry."""
    root = tmp_path_factory.mktemp("published")
    result = train_or_load(RUN, ckpt_dir=root, smoke=True, verbose=False, **TINY)
    entry = {"file_id": DRIVE_ID, "sha256": sha256_file(result.path), "size": result.path.stat().st_size,
             "config_hash": result.config_hash, "file": result.path.name}
    return result, {"format": "kdtp-manifest/1", "checkpoints": {f"cpu/{RUN}": entry}}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A non-smoke run on CIFAR-10-format data (generated, marker removed: 'real' to the kit)."""
    base = tmp_path_factory.mktemp("real")
    folder = write_synthetic_cifar10(base / "data", n_train=500, n_test=100)
    (folder / SYNTHETIC_MARKER).unlink()
    result = train_or_load(RUN, ckpt_dir=base / "ck", data_dir=base / "data", smoke=False,
                           verbose=False, **TINY)
    assert not result.smoke and result.config["data"] == "cifar10"
    return result, base


def _fake_downloader(payload_for_id):
    calls = []

    def download(file_id, output):
        calls.append(file_id)
        payload_for_id(file_id, Path(output))
    return download, calls


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*")) if folder.exists() else []


# ----------------------------------------------------------------------------- downloads
def test_happy_path_downloads_verifies_and_does_not_train(smoke_run, tmp_path, monkeypatch):
    result, manifest = smoke_run
    fake, calls = _fake_downloader(lambda fid, out: shutil.copy(result.path, out))
    monkeypatch.setattr(kpublished, "_gdown_download", fake)
    monkeypatch.setattr(kresume, "fit", _no_training)
    got = train_or_load(RUN, ckpt_dir=tmp_path, smoke=True, manifest=manifest, load_only=True, **TINY)
    assert got.source == "downloaded" and calls == [DRIVE_ID]
    assert sha256_file(got.path) == manifest["checkpoints"][f"cpu/{RUN}"]["sha256"]
    assert got.test_acc == result.test_acc
    again = train_or_load(RUN, ckpt_dir=tmp_path, smoke=True, manifest=manifest, **TINY)
    assert again.source == "loaded" and calls == [DRIVE_ID]            # downloaded once
    assert _leftovers(got.path.parent) == []


HTML = b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>"


@pytest.mark.parametrize("fault,message", [
    ("html", "web page instead of"),
    ("wrong_bytes", "sha256"),
    ("short", "bytes, the manifest says"),
    ("dies_half_way", "failed: connection reset"),
    ("quota_exception", "Too many users have viewed"),
])
def test_bad_download_is_removed_then_load_only_errors_or_training_happens(
        smoke_run, tmp_path, monkeypatch, capsys, fault, message):
    result, manifest = smoke_run
    good = result.path.read_bytes()

    def bad(fid, out: Path):
        if fault == "html":
            out.write_bytes(HTML)
        elif fault == "wrong_bytes":
            out.write_bytes(bytes(len(good)))
        elif fault == "short":
            out.write_bytes(good[: len(good) // 3])
        elif fault == "dies_half_way":
            out.write_bytes(good[: len(good) // 2])
            raise ConnectionError("connection reset by peer")
        else:
            raise RuntimeError("Failed to retrieve file url:\n\n\tToo many users have viewed or "
                               "downloaded this file recently.\n\nYou may still be able to access...")

    fake, calls = _fake_downloader(bad)
    monkeypatch.setattr(kpublished, "_gdown_download", fake)
    folder = tmp_path / "smoke" / "cpu"
    with pytest.raises(CheckpointError, match=message) as info:
        train_or_load(RUN, ckpt_dir=tmp_path, smoke=True, manifest=manifest, load_only=True, **TINY)
    assert "without load_only" in str(info.value) and "\n" not in str(info.value)
    assert not (folder / f"{RUN}_best.pt").exists() and _leftovers(folder) == []
    capsys.readouterr()
    trained = train_or_load(RUN, ckpt_dir=tmp_path, smoke=True, manifest=manifest, **TINY)
    out = capsys.readouterr().out
    assert trained.source == "trained" and len(calls) == 2
    assert message.split()[0] in out and "will be trained instead" in out
    assert load_checkpoint(trained.path)["config_hash"] == trained.config_hash
    assert _leftovers(folder) == []


def test_entry_of_other_settings_is_not_downloaded(smoke_run, tmp_path, monkeypatch):
    result, manifest = smoke_run
    stale = json.loads(json.dumps(manifest))
    stale["checkpoints"][f"cpu/{RUN}"]["config_hash"] = "0" * 16
    fake, calls = _fake_downloader(lambda fid, out: shutil.copy(result.path, out))
    monkeypatch.setattr(kpublished, "_gdown_download", fake)
    with pytest.raises(CheckpointError, match="published .* other settings"):
        train_or_load(RUN, ckpt_dir=tmp_path, smoke=True, manifest=stale, load_only=True, **TINY)
    assert calls == []


@pytest.mark.parametrize("field,value,message", [
    ("sha256", None, "no valid sha256"),
    ("sha256", "abc", "no valid sha256"),
    ("size", "big", "size that is not a number"),
    ("file_id", 12345, "no Drive file id"),
])
def test_unverifiable_entry_is_refused_before_downloading(smoke_run, tmp_path, monkeypatch,
                                                          field, value, message):
    result, manifest = smoke_run
    broken = json.loads(json.dumps(manifest))
    broken["checkpoints"][f"cpu/{RUN}"][field] = value
    fake, calls = _fake_downloader(lambda fid, out: shutil.copy(result.path, out))
    monkeypatch.setattr(kpublished, "_gdown_download", fake)
    with pytest.raises(CheckpointError, match=message):
        train_or_load(RUN, ckpt_dir=tmp_path, smoke=True, manifest=broken, load_only=True, **TINY)
    assert calls == []


def test_broken_manifest_does_not_stop_the_lab(tmp_path, capsys):
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        train_or_load(RUN, ckpt_dir=tmp_path, smoke=True, manifest=bad, load_only=True, **TINY)
    got = train_or_load(RUN, ckpt_dir=tmp_path, smoke=True, manifest=bad, **TINY)
    assert got.source == "trained" and "published checkpoints are ignored" in capsys.readouterr().out


def test_gdown_wrapper_writes_into_our_file_and_reports_none(tmp_path, monkeypatch):
    """The real ``_gdown_download`` against a stand-in gdown module (no network)."""
    seen = {}

    def download(id=None, output=None, quiet=False, timeout=None):   # gdown 5+/6 signature
        seen.update(id=id, timeout=timeout, stream=not isinstance(output, str))
        if id == "missing":
            return None
        output.write(b"bytes")
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    out = tmp_path / "x.download"
    kpublished._gdown_download("abc", str(out))
    assert out.read_bytes() == b"bytes" and seen == {"id": "abc", "timeout": 60, "stream": True}
    assert list(tmp_path.iterdir()) == [out]                    # no gdown .part file of its own
    with pytest.raises(CheckpointError, match="not shared, or quota"):
        kpublished._gdown_download("missing", str(out))


# ----------------------------------------------------------------------------- publish
def test_publish_writes_entries_keeps_ids_and_round_trips(real_run, tmp_path, monkeypatch, capsys):
    result, base = real_run
    manifest = tmp_path / "manifest.json"
    other = {"file_id": "1OtherRunIdxxxxxxxxx", "sha256": "a" * 64, "size": 1, "config_hash": "x"}
    manifest.write_text(json.dumps({"format": "kdtp-manifest/1", "checkpoints": {"paper/teacher_resnet50": other}}))

    assert publish("cpu", base / "ck", manifest, []) == 0
    out = capsys.readouterr().out
    entry = json.loads(manifest.read_text())["checkpoints"][f"cpu/{RUN}"]
    assert entry["sha256"] == sha256_file(result.path) and entry["size"] == result.path.stat().st_size
    assert entry["config_hash"] == result.config_hash and entry["file_id"] == ""
    assert entry["file"] == f"cpu/{RUN}_best.pt"
    assert json.loads(manifest.read_text())["checkpoints"]["paper/teacher_resnet50"] == other  # merged
    assert "upload" in out and "--id" in out and "Anyone with the link" in out

    link = f"https://drive.google.com/file/d/{DRIVE_ID}/view?usp=sharing"
    assert publish("cpu", base / "ck", manifest, [f"{RUN}={link}"]) == 0
    assert json.loads(manifest.read_text())["checkpoints"][f"cpu/{RUN}"]["file_id"] == DRIVE_ID
    assert publish("cpu", base / "ck", manifest, []) == 0                   # the id is kept
    assert json.loads(manifest.read_text())["checkpoints"][f"cpu/{RUN}"]["file_id"] == DRIVE_ID
    assert "every entry has a Drive id" in capsys.readouterr().out
    assert _leftovers(tmp_path) == []

    # a student's kit: the instructor's file arrives through the (fake) Drive, verified
    by_id = {DRIVE_ID: result.path}
    fake, calls = _fake_downloader(lambda fid, out: shutil.copy(by_id[fid], out))
    monkeypatch.setattr(kpublished, "_gdown_download", fake)
    monkeypatch.setattr(kresume, "fit", _no_training)
    got = train_or_load(RUN, ckpt_dir=tmp_path / "student", data_dir=base / "data", smoke=False,
                        manifest=manifest, load_only=True, **TINY)
    assert got.source == "downloaded" and got.test_acc == result.test_acc


def test_publish_cli_prints_next_steps(real_run, tmp_path, capsys):
    _, base = real_run
    manifest = tmp_path / "m.json"
    rc = cli_main(["publish", "--recipe", "cpu", "--ckpt-dir", str(base / "ck"), "--manifest", str(manifest)])
    out = capsys.readouterr().out
    assert rc == 0 and f"cpu/{RUN}" in out and "next:" in out and manifest.is_file()


def test_publish_refuses_smoke_checkpoints(smoke_run, tmp_path, capsys):
    result, _ = smoke_run
    manifest = tmp_path / "manifest.json"
    root = result.path.parents[2]                 # <root>/smoke/cpu/<file>
    assert publish("cpu", root, manifest, []) == 1
    err = capsys.readouterr().err
    assert "smoke" in err and "never published" in err and "without --smoke" in err
    assert not manifest.exists()
    # a smoke file copied into the real folder is recognised by its settings
    real_folder = tmp_path / "ck" / "cpu"
    real_folder.mkdir(parents=True)
    shutil.copy(result.path, real_folder / result.path.name)
    assert publish("cpu", tmp_path / "ck", manifest, []) == 1
    assert "smoke / synthetic-data run" in capsys.readouterr().err and not manifest.exists()


def test_publish_refuses_a_corrupt_checkpoint_and_publishes_the_rest(real_run, tmp_path, capsys):
    result, base = real_run
    root = tmp_path / "ck"
    shutil.copytree(base / "ck", root)
    (root / "cpu" / "teacher_resnet50_best.pt").write_bytes(result.path.read_bytes()[:999])
    manifest = tmp_path / "manifest.json"
    assert publish("cpu", root, manifest, []) == 1
    err = capsys.readouterr().err
    assert "teacher_resnet50_best.pt cannot be loaded: it is truncated" in err
    assert list(json.loads(manifest.read_text())["checkpoints"]) == [f"cpu/{RUN}"]


@pytest.mark.parametrize("ids,message", [
    (["nonsense"], "RUN=DRIVE_ID"),
    ([f"{RUN}="], "RUN=DRIVE_ID"),
    (["no_such_run=1AbCdEfGhIjK"], "unknown run"),
    ([f"{RUN}=bad id!"], "not a Google Drive file id"),
    ([f"teacher_resnet50={DRIVE_ID}"], "no finished teacher_resnet50 checkpoint"),
    ([f"fast/{RUN}={DRIVE_ID}"], "names recipe 'fast'"),
])
def test_publish_bad_ids_write_nothing(real_run, tmp_path, ids, message):
    _, base = real_run
    manifest = tmp_path / "manifest.json"
    with pytest.raises(ConfigError, match=message):
        publish("cpu", base / "ck", manifest, ids)
    assert not manifest.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- runs with other settings
def test_a_seed_variant_is_published_and_a_load_only_demo_downloads_it(real_run, tmp_path, monkeypatch, capsys):
    """06's seeds 1 and 2 live in <run>-<hash8>_best.pt: published too, under recipe/<run>-<hash8>."""
    result, base = real_run
    root = tmp_path / "ck"
    shutil.copytree(base / "ck", root)
    seed1 = train_or_load(RUN, ckpt_dir=root, data_dir=base / "data", smoke=False, verbose=False,
                          seed=1, **TINY)
    stem = f"{RUN}-{seed1.config_hash[:8]}"
    assert seed1.path.name == f"{stem}_best.pt" and seed1.config_hash != result.config_hash
    manifest = tmp_path / "manifest.json"
    seed1_id = "1SeedOneIdxxxxxxxxxxxx"
    assert publish("cpu", root, manifest, [f"{RUN}={DRIVE_ID}", f"cpu/{stem}={seed1_id}"]) == 0
    out = capsys.readouterr().out
    entries = json.loads(manifest.read_text())["checkpoints"]
    assert set(entries) == {f"cpu/{RUN}", f"cpu/{stem}"}
    assert entries[f"cpu/{stem}"]["config_hash"] == seed1.config_hash and entries[f"cpu/{stem}"]["seed"] == 1
    assert entries[f"cpu/{stem}"]["file_id"] == seed1_id and entries[f"cpu/{RUN}"]["file_id"] == DRIVE_ID
    assert entries[f"cpu/{stem}"]["sha256"] == sha256_file(seed1.path) and "seed 1" in out

    by_id = {DRIVE_ID: result.path, seed1_id: seed1.path}
    fake, calls = _fake_downloader(lambda fid, out: shutil.copy(by_id[fid], out))
    monkeypatch.setattr(kpublished, "_gdown_download", fake)
    monkeypatch.setattr(kresume, "fit", _no_training)
    student = tmp_path / "student"
    got1 = train_or_load(RUN, ckpt_dir=student, data_dir=base / "data", smoke=False, manifest=manifest,
                         load_only=True, verbose=False, seed=1, **TINY)
    assert got1.source == "downloaded" and calls == [seed1_id] and got1.path.name == f"{stem}_best.pt"
    assert got1.test_acc == seed1.test_acc and got1.config["seed"] == 1
    got0 = train_or_load(RUN, ckpt_dir=student, data_dir=base / "data", smoke=False, manifest=manifest,
                         load_only=True, verbose=False, **TINY)
    assert got0.source == "downloaded" and calls == [seed1_id, DRIVE_ID] and got0.path.name == f"{RUN}_best.pt"
    again = train_or_load(RUN, ckpt_dir=student, data_dir=base / "data", smoke=False, manifest=manifest,
                          load_only=True, verbose=False, seed=1, **TINY)
    assert again.source == "loaded" and len(calls) == 2                 # each file downloaded once
    with pytest.raises(CheckpointError, match="none published"):     # a seed nobody published
        train_or_load(RUN, ckpt_dir=student, data_dir=base / "data", smoke=False, manifest=manifest,
                      load_only=True, verbose=False, seed=2, **TINY)


def test_publish_refuses_a_renamed_variant(real_run, tmp_path, capsys):
    result, base = real_run
    root = tmp_path / "ck"
    shutil.copytree(base / "ck", root)
    shutil.copy(result.path, root / "cpu" / f"{RUN}-0123abcd_best.pt")   # its name claims another configuration
    manifest = tmp_path / "manifest.json"
    assert publish("cpu", root, manifest, []) == 1
    assert "its name says configuration 0123abcd" in capsys.readouterr().err
    assert f"cpu/{RUN}-0123abcd" not in json.loads(manifest.read_text())["checkpoints"]


def test_publish_id_for_an_unknown_variant_is_refused(real_run, tmp_path):
    _, base = real_run
    with pytest.raises(ConfigError, match="no finished"):
        publish("cpu", base / "ck", tmp_path / "m.json", [f"{RUN}-0123abcd={DRIVE_ID}"])
    with pytest.raises(ConfigError, match="RUN-HASH8"):
        publish("cpu", base / "ck", tmp_path / "m.json", [f"{RUN}-nothex={DRIVE_ID}"])
    assert not (tmp_path / "m.json").exists()
