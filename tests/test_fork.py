"""``python -m kdtp course``: a fork retargeted changes every badge and install line and nothing
else; the checkout agrees with ``kdtp/course_repo.json``; and Colab's set-up cell, run with a
stand-in ``google.colab``, installs from the fork's address (keeping torch) and mounts Drive
or says it could not.
"""
import json
import shutil
import sys
import types
import warnings
from pathlib import Path

import pytest

import kdtp.env as env
import kdtp.fork as fork
from kdtp.cli import main as cli_main
from kdtp.fork import COLAB, INSTALL, CourseRepo
from kdtp.student_copy import write_student_copies

ROOT = Path(__file__).resolve().parent.parent
FORK = CourseRepo("alice/kd-course", "fall-2027")


def _course_copy(dest: Path) -> Path:
    """The parts of the checkout that name the course's address (and the one place)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "notebooks", dest / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(ROOT / "README.md", dest / "README.md")
    (dest / "kdtp").mkdir()
    shutil.copy(ROOT / fork.CONFIG, dest / fork.CONFIG)
    return dest


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_checkout_agrees_with_the_one_place():
    assert fork.check(ROOT) == []
    course = fork.read_config(ROOT)
    assert course == fork.read_config() and (ROOT / "README.md").read_text().count(course.colab_url("00_data.ipynb"))


def test_a_notebook_with_another_badge_or_no_install_line_fails(tmp_path):
    root = _course_copy(tmp_path)
    nb = json.loads((root / "notebooks" / "00_data.ipynb").read_text())
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    (root / "notebooks" / "10_new.ipynb").write_text(
        text.replace("github/kdtp-course/kdtp/blob/main/notebooks/00_data", "github/someone/else/blob/dev/notebooks/10_new"))
    (root / "notebooks" / "11_bare.ipynb").write_text(
        text.replace("00_data.ipynb", "11_bare.ipynb").replace("KDTP_REPO = ", "REPO = "))
    problems = fork.check(root)
    assert any(p.startswith("notebooks/10_new.ipynb:10: Colab link") and "someone/else" in p for p in problems)
    assert "notebooks/11_bare.ipynb: no KDTP_REPO install line in its set-up cell" in problems
    assert len(problems) == 2, problems
    fork.retarget(root, "kdtp-course/kdtp")             # the rewrite is also the repair
    assert fork.check(root) == ["notebooks/11_bare.ipynb: no KDTP_REPO install line in its set-up cell"]


def test_a_fork_changes_every_place_and_nothing_else(tmp_path):
    root = _course_copy(tmp_path / "kit")
    before = _files(root)
    old = fork.read_config(root)
    places = {rel: len(COLAB.findall(b.decode())) + len(INSTALL.findall(b.decode()))
              for rel, b in before.items() if rel != fork.CONFIG.as_posix()}

    written = fork.retarget(root, FORK.repo, FORK.branch)

    assert fork.read_config(root) == FORK and fork.check(root) == []
    assert {p.relative_to(root).as_posix(): n for p, n in written} == {r: n for r, n in places.items() if n}
    assert all(n >= 2 for r, n in places.items() if r.endswith(".ipynb"))   # badge + install line each
    after = _files(root)
    assert set(after) == set(before)
    for rel, data in after.items():
        text = data.decode()
        if rel == fork.CONFIG.as_posix():
            cfg = json.loads(text)
            assert (cfg["repo"], cfg["branch"]) == (FORK.repo, FORK.branch)
            assert set(cfg) == set(json.loads(before[rel]))
            continue
        assert "kdtp-course" not in text, rel                          # every occurrence changed
        assert text.count(FORK.install_url) == len(INSTALL.findall(before[rel].decode()))
        back = (text.replace(f"github/{FORK.repo}/blob/{FORK.branch}/notebooks/",
                             f"github/{old.repo}/blob/{old.branch}/notebooks/")
                .replace(FORK.install_url, old.install_url))
        assert back.encode() == before[rel], f"{rel}: something besides the addresses changed"
    assert 'KDTP_REPO = \\"https://github.com/alice/kd-course.git@fall-2027\\"' in after["notebooks/00_data.ipynb"].decode()

    # again: nothing to do; the student copies made from the fork's notebooks are its copies
    assert fork.retarget(root, FORK.repo, FORK.branch) == [] and _files(root) == after
    made = write_student_copies(root / "notebooks", tmp_path / "made")
    assert made and all(p.read_bytes() == after[f"notebooks/student/{p.name}"] for p in made)

    # and back: byte for byte the checkout (a round trip of the unchanged kit is no change)
    fork.retarget(root, old.repo, old.branch)
    assert _files(root) == before


def test_course_command_retargets_checks_and_refuses_bad_names(tmp_path, monkeypatch, capsys):
    root = _course_copy(tmp_path)
    monkeypatch.setattr(fork, "project_root", lambda: root)
    assert cli_main(["course", "--repo", "https://github.com/alice/kd-course.git", "--branch", "fall-2027"]) == 0
    out = capsys.readouterr().out
    assert "kdtp-course/kdtp (main) -> alice/kd-course (fall-2027)" in out and FORK.colab_url("00_data.ipynb") in out
    assert cli_main(["course"]) == 0 and "agrees" in capsys.readouterr().out
    nb = root / "notebooks" / "01_teacher.ipynb"
    nb.write_text(nb.read_text().replace("alice/kd-course/blob", "bob/x/blob"))
    assert cli_main(["course"]) == 1
    out = capsys.readouterr().out
    assert "disagrees: notebooks/01_teacher.ipynb:10" in out and "--repo alice/kd-course --branch fall-2027" in out
    for argv, said in ((["course", "--repo", "alice"], "is not a GitHub repository"),
                       (["course", "--branch", "a..b"], "is not a usable branch name")):
        before = _files(root)
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1 and _files(root) == before
    monkeypatch.setattr(fork, "project_root", lambda: tmp_path / "nowhere")
    assert cli_main(["course"]) == 2 and "not a checkout of the kit" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Colab's set-up cell
@pytest.fixture
def colab(tmp_path, monkeypatch):
    """A stand-in Colab: ``google.colab`` importable, Drive's mount point and the kit in tmp."""
    mount = tmp_path / "content" / "drive"
    state = {"fail": None}
    google, colab_mod, drive_mod = (types.ModuleType(n) for n in ("google", "google.colab", "google.colab.drive"))

    def mount_fn(path, *args, **kwargs):
        if state["fail"]:
            raise state["fail"]
        (Path(path) / "MyDrive").mkdir(parents=True, exist_ok=True)

    drive_mod.mount, colab_mod.drive, google.colab = mount_fn, drive_mod, colab_mod
    for name, mod in (("google", google), ("google.colab", colab_mod), ("google.colab.drive", drive_mod)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(env, "COLAB_DRIVE_MOUNT", mount)
    monkeypatch.setattr(env, "COLAB_CKPT_DIR", mount / "MyDrive" / "KD_checkpoints")
    monkeypatch.setattr(env, "project_root", lambda: tmp_path / "content" / "kit")
    monkeypatch.delenv("KDTP_CKPT_DIR", raising=False)
    return types.SimpleNamespace(mount=mount, state=state, local=tmp_path / "content" / "kit" / "checkpoints")


def _run_cell(source: str, ns: dict, shell_calls: list) -> None:
    """Run a notebook cell as IPython would (``!cmd`` -> ``get_ipython().system``), here."""
    from IPython.core.inputtransformer2 import TransformerManager

    shell = types.SimpleNamespace(system=lambda cmd: shell_calls.append(cmd.format(**ns)))
    ns.setdefault("get_ipython", lambda: shell)
    exec(compile(TransformerManager().transform_cell(source), "<cell>", "exec"), ns)


def _setup_cells(root: Path) -> list[str]:
    nb = json.loads((root / "notebooks" / "00_data.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"][:2]


def test_setup_cell_installs_the_forks_address_and_keeps_torch(tmp_path, monkeypatch, colab):
    import torch

    root = _course_copy(tmp_path / "kit")
    fork.retarget(root, FORK.repo, FORK.branch)
    install, _ = _setup_cells(root)
    calls: list = []
    _run_cell(install, {}, calls)
    assert calls == [f'pip install -q "git+{FORK.install_url}"']
    assert calls[0] == 'pip install -q "git+https://github.com/alice/kd-course.git@fall-2027"'
    assert not {"-U", "--upgrade", "--force-reinstall", "--no-deps"} & set(calls[0].split())
    assert "torch" not in calls[0]
    # pip keeps Colab's torch when it satisfies the kit's requirement: no upper bound, no pin
    deps = [ln for ln in (ROOT / "pyproject.toml").read_text().splitlines() if ln.strip().startswith(('"torch', '"torchvision'))]
    assert len(deps) == 2 and not any(s in d for d in deps for s in ("<", "==", "~="))
    assert sys.modules["torch"] is torch
    monkeypatch.delitem(sys.modules, "google.colab")            # elsewhere: nothing installed
    calls.clear()
    _run_cell(install, {}, calls)
    assert calls == []


@pytest.mark.parametrize("drive_ok", [True, False], ids=["drive-mounted", "drive-unavailable"])
def test_setup_cell_mounts_drive_and_prints_the_room_check(colab, capsys, drive_ok):
    if not drive_ok:
        colab.state["fail"] = RuntimeError("mount refused by the user")
    _, setup = _setup_cells(ROOT)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _run_cell(setup, {}, [])
    out = capsys.readouterr().out
    assert out.startswith("kdtp doctor | Google Colab |") and "recipe: fast" in out
    if drive_ok:
        assert f"checkpoints: {colab.mount}/MyDrive/KD_checkpoints/smoke/fast (Google Drive, writable" in out
        assert "warn" not in out.split("checkpoints:")[1].split("\n")[0]
    else:
        assert any("could not be mounted" in str(w.message) for w in said)
        line = next(ln for ln in out.splitlines() if "checkpoints:" in ln)
        assert line.startswith("warn") and str(colab.local) in line and "lost when the runtime is recycled" in line
        assert "-> run kdtp.env.mount_drive()" in out
