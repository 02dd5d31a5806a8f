"""``python -m kdtp rehearse``: notebooks run from the published manifest only, in a fresh folder;
every run downloads and verifies, one that would train fails by name; ``publish --smoke``
makes the set it rehearses with. Drive is stood in by the local mirror (files copied, then
verified as in class), never the network; the notebooks are tiny ones written here."""
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import kdtp.published as kpublished
import kdtp.rehearse as rehearse
from kdtp.checkpoint import CheckpointError, train_or_load
from kdtp.cli import main as cli_main
from kdtp.env import ConfigError
from kdtp.publish import publish

RUN = "student_scratch_baseline"
TINY = dict(progress=False, train_subset=128, val_subset=64, test_subset=64, teacher_arch="cnn_tiny",
            student_arch="cnn_tiny", epochs=1, teacher_epochs=1)
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _notebook(path: Path, **settings) -> Path:
    kw = ", ".join(f"{k}={v!r}" for k, v in {**TINY, **settings}.items())
    nb = new_notebook(cells=[new_markdown_cell("# tiny class"), new_code_cell(
        f"import kdtp\nr = kdtp.train_or_load({RUN!r}, 'cpu', {kw})\nprint('source', r.source)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """One cheap smoke run, published with ``publish --smoke`` into a rehearsal manifest."""
    base = tmp_path_factory.mktemp("published")
    train_or_load(RUN, "cpu", smoke=True, ckpt_dir=base / "ck", verbose=False, **TINY)
    manifest = base / "rehearsal.json"
    assert publish("cpu", base / "ck", manifest, [], smoke=True) == 0
    entry = json.loads(manifest.read_text())["checkpoints"][f"cpu/{RUN}"]
    assert entry["smoke"] is True and entry["file"] == f"smoke/cpu/{RUN}_best.pt" and entry["file_id"] == ""
    return base, manifest


def test_rehearsal_downloads_everything_and_fails_a_notebook_that_would_train(published, tmp_path, capsys):
    base, manifest = published
    good = _notebook(tmp_path / "01_good.ipynb")
    other = _notebook(tmp_path / "02_other_settings.ipynb", epochs=2)    # not what was published
    before = sorted(p.name for p in (base / "ck").rglob("*"))

    rc = rehearse.rehearse([good, other], smoke=True, recipe="cpu", manifest=manifest, mirror=base / "ck",
                           out=tmp_path / "rehearsal")

    out = capsys.readouterr().out
    assert rc == 1
    assert "ok      01_good.ipynb" in out and f"downloaded: {RUN}" in out
    assert "FAILED  02_other_settings.ipynb" in out and f"would train {RUN} in class" in out
    assert f"FAILED: 02_other_settings.ipynb: would train {RUN} in class" in out
    assert "1 of 2 notebooks ran from the manifest" in out and "no Drive id yet" in out
    assert "KDTP_LOAD_ONLY" not in os.environ, "the caller's environment is restored"
    executed = (tmp_path / "rehearsal" / "notebooks" / "01_good.ipynb").read_text()
    assert "source downloaded" in executed and "downloaded and verified" in executed
    assert not (tmp_path / "rehearsal" / "checkpoints").exists(), "downloads are not kept unless --keep"
    assert sorted(p.name for p in (base / "ck").rglob("*")) == before, "the instructor's folder is untouched"

    with pytest.raises(ConfigError, match="fresh folder"):          # a rehearsal never reuses downloads
        (tmp_path / "used" / "checkpoints").mkdir(parents=True)
        (tmp_path / "used" / "checkpoints" / "x_best.pt").write_bytes(b"x")
        rehearse.rehearse([good], smoke=True, recipe="cpu", manifest=manifest, out=tmp_path / "used")


def test_load_only_switch_refuses_to_train_in_process(published, tmp_path, monkeypatch):
    base, manifest = published
    monkeypatch.setenv("KDTP_LOAD_ONLY", "1")
    with pytest.raises(CheckpointError, match=f"no checkpoint for {RUN}"):
        train_or_load(RUN, "cpu", smoke=True, ckpt_dir=tmp_path / "fresh", manifest=tmp_path / "none.json", **TINY)
    # use_mirror replaces the downloader (as in each rehearsal kernel); this puts it back after the test
    monkeypatch.setattr(kpublished, "_gdown_download", kpublished._gdown_download)
    entries = json.loads(manifest.read_text())
    entries["checkpoints"][f"cpu/{RUN}"]["file_id"] = "1MirrorIdxxxxxxxxxx"
    with_id = tmp_path / "with_id.json"
    with_id.write_text(json.dumps(entries))
    rehearse.use_mirror(base / "ck", with_id)
    got = train_or_load(RUN, "cpu", smoke=True, ckpt_dir=tmp_path / "fresh", manifest=with_id, **TINY)
    assert got.source == "downloaded"


def test_publish_smoke_never_writes_the_kits_manifest(published, capsys):
    base, _ = published
    shipped = Path(kpublished.__file__).with_name("manifest.json")
    text = shipped.read_text() if shipped.exists() else None
    with pytest.raises(ConfigError, match="never writes into the kit's manifest"):
        publish("cpu", base / "ck", shipped, [], smoke=True)
    assert (shipped.read_text() if shipped.exists() else None) == text
    assert cli_main(["publish", "--smoke", "--ckpt-dir", str(base / "ck")]) == 2
    assert "needs --manifest FILE" in capsys.readouterr().err


def test_rehearse_refuses_an_empty_manifest_and_bad_folders(tmp_path, capsys):
    empty = tmp_path / "m.json"
    empty.write_text(json.dumps({"format": "kdtp-manifest/1", "checkpoints": {}}))
    assert cli_main(["rehearse", "--smoke", "--manifest", str(empty)]) == 1
    assert "publishes nothing for the fast recipe (smoke)" in capsys.readouterr().out
    assert cli_main(["rehearse", "--manifest", str(empty), "--mirror", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["rehearse", "--manifest", str(tmp_path / "missing.json")]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_the_student_notebooks_are_the_numbered_ones_student_versions_first():
    paths = rehearse.student_notebooks(NOTEBOOKS)
    names = [p.name for p in paths]
    assert names == sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert all((p.parent.name == "student") == (NOTEBOOKS / "student" / p.name).is_file() for p in paths)
    assert NOTEBOOKS / "student" / "03_kd_logits.ipynb" in paths
    assert [p.name for p in rehearse.student_notebooks(NOTEBOOKS, core_only=True)][-1] == "06_comparison.ipynb"


def test_a_bad_load_only_switch_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("KDTP_LOAD_ONLY", "perhaps")
    assert cli_main(["doctor", "--offline"]) == 2
    err = capsys.readouterr().err
    assert "KDTP_LOAD_ONLY='perhaps' is not understood" in err and err.count("\n") == 1
