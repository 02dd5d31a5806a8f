"""``python -m kdtp lab``: falls back to smoke without data, reports a failing cell, and the
committed notebooks are clean (no outputs, no widget state) and complete."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from kdtp import lab
from kdtp.checkpoint import run_folder
from kdtp.fork import read_config
from kdtp.recipes import get_recipe
from kdtp.results import record

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LAB_NOTEBOOKS = ["00_data", "01_teacher", "02_baseline", "03_kd_logits", "04_kd_features",
                 "05_scratch", "06_comparison"]
# every numbered notebook is checked for clean commits, the course's later ones too
ALL_NOTEBOOKS = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def write_notebook(path: Path, *sources: str) -> Path:
    nb = new_notebook(cells=[new_markdown_cell("# tiny")] + [new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTP_CKPT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("KDTP_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.delenv("KDTP_RECIPE", raising=False)
    return tmp_path


def test_without_real_data_the_lab_says_so_and_runs_in_smoke_mode(folders, monkeypatch, capsys):
    monkeypatch.setenv("KDTP_SMOKE", "0")
    monkeypatch.setattr(lab, "real_data_available", lambda data_dir=None: (False, "no network here"))
    # a finished smoke run, as the notebooks would have recorded it
    record(run_folder(get_recipe("fast", smoke=True)), "teacher_resnet50",
           {"recipe": "fast", "data": "synthetic", "smoke": True},
           {"test_acc": 0.5, "params": 123, "train_seconds": 1.0}, "hash")
    nb = write_notebook(folders / "00_env.ipynb",
                        "import os, pathlib\n"
                        "assert os.environ['KDTP_SMOKE'] == '1', os.environ['KDTP_SMOKE']\n"
                        "assert os.environ['KDTP_RECIPE'] == 'fast'\n"
                        f"assert pathlib.Path.cwd() == pathlib.Path({str(folders)!r})\n"
                        "print('[kdtp] hello from the kernel')")
    out = folders / "out"

    assert lab.run_lab(smoke=None, recipe=None, out_dir=out, notebooks=[nb]) == 0

    text = capsys.readouterr().out
    assert "Real CIFAR-10 is not available" in text and "no network here" in text
    assert "SMOKE" in text and "[kdtp] hello from the kernel" in text  # progress echoed live
    assert "teacher_resnet50" in text and "NOT real results" in text   # the comparison table
    executed = nbformat.read(out / "00_env.ipynb", as_version=4)
    assert executed.cells[1].outputs, "the executed copy keeps its outputs"
    assert os.environ["KDTP_SMOKE"] == "0", "the caller's environment is restored"
    assert "KDTP_RECIPE" not in os.environ


def test_a_failing_cell_is_named_and_the_partial_notebook_kept(folders, capsys):
    nb = write_notebook(folders / "01_broken.ipynb", "print('first cell ran')", "assert 1 == 2, 'boom'",
                        "print('never')")
    out = folders / "out"

    assert lab.run_lab(smoke=True, recipe="cpu", out_dir=out, notebooks=[nb]) == 1

    captured = capsys.readouterr()
    assert "01_broken.ipynb failed in code cell 2 of 3" in captured.out
    assert "AssertionError: boom" in captured.out
    partial = nbformat.read(out / "01_broken.ipynb", as_version=4)
    assert partial.cells[1].outputs[0]["text"].strip() == "first cell ran"
    assert not partial.cells[3].outputs


def test_unknown_recipe_is_refused_before_anything_runs(folders):
    from kdtp.env import ConfigError

    with pytest.raises(ConfigError, match="unknown recipe"):
        lab.run_lab(smoke=True, recipe="nope", notebooks=[])


def test_missing_imagenet_weights_stop_the_lab_and_name_a_recipe_that_needs_none(folders, monkeypatch, capsys):
    # an offline GPU box (or any machine) without ImageNet weights: the fast lab stops before
    # the first notebook, and the recipe it names really needs no weights
    weights_problem = lab._imagenet_weights_problem
    monkeypatch.setattr(lab, "real_data_available", lambda data_dir=None: (True, ""))
    monkeypatch.setattr(lab, "_imagenet_weights_problem", lambda recipe: "resnet50 weights not cached")
    ran = []
    monkeypatch.setattr(lab, "run_notebook", lambda *a, **k: ran.append(a))
    assert lab.run_lab(smoke=False, recipe="fast", notebooks=[folders / "x.ipynb"]) == 1
    err = capsys.readouterr().err
    assert "resnet50 weights not cached" in err and "--recipe cpu_air" in err and not ran
    named = get_recipe("cpu_air", smoke=False)
    assert not named.pretrained and weights_problem(named) is None


def test_a_default_recipe_without_its_imagenet_weights_falls_back_to_the_lab_that_needs_none(
        folders, monkeypatch, capsys):
    # an offline GPU box running the README's lab command: fast is the default there, its weights
    # cannot be had, and the user named no recipe: the real lab runs in cpu_air, said so
    import kdtp.recipes

    monkeypatch.delenv("KDTP_RECIPE", raising=False)
    monkeypatch.setattr(kdtp.recipes, "default_recipe_name", lambda smoke=None: "fast")
    monkeypatch.setattr(lab, "real_data_available", lambda data_dir=None: (True, ""))
    monkeypatch.setattr(lab, "_imagenet_weights_problem",
                        lambda recipe: "resnet50 weights not cached" if recipe.pretrained else None)
    monkeypatch.setattr(lab, "comparison_text", lambda *a: "")
    recipes_seen = []
    monkeypatch.setattr(lab, "run_notebook",
                        lambda *a, **k: (recipes_seen.append(os.environ["KDTP_RECIPE"]), (True, "ran"))[1])
    assert lab.run_lab(smoke=False, notebooks=[folders / "x.ipynb"]) == 0
    out = capsys.readouterr().out
    assert recipes_seen == ["cpu_air"] and "resnet50 weights not cached" in out and "--recipe fast" in out
    assert "recipe cpu_air" in out


def test_lab_runs_the_core_lab_first_and_alone_with_core_only():
    assert [p.stem for p in lab.lab_notebooks(NOTEBOOKS)][:7] == LAB_NOTEBOOKS
    assert [p.stem for p in lab.lab_notebooks(NOTEBOOKS, core_only=True)] == LAB_NOTEBOOKS
    assert [p.stem for p in lab.lab_notebooks(NOTEBOOKS)] == ALL_NOTEBOOKS


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_committed_notebooks_are_clean_and_complete(name):
    raw = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    nb = nbformat.reads(json.dumps(raw), as_version=4)
    nbformat.validate(nb)
    ids = [c.get("id") for c in raw["cells"]]
    # nbformat 4.5 cells carry an id; without one every reader warns (MissingIDFieldWarning)
    assert all(ids) and len(set(ids)) == len(ids), "every cell has its own id"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb.metadata, "no widget state is committed"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "committed without outputs"
    first = nb.cells[0].source
    assert first.startswith("# ") and "Learning goals" in first
    assert read_config().colab_url(f"{name}.ipynb") in first       # the course's address (kdtp/course_repo.json)
    setup = code[0].source
    assert '"google.colab" in sys.modules' in setup and "pip install" in setup and "torch" not in setup.split("pip install")[1]
    text = "\n".join(c.source for c in code)
    assert "env.mount_drive()" in text and "if env.in_colab()" in text
    assert "assert " in text
    teaching = [c for c in nb.cells if c.cell_type == "markdown"]
    assert len(teaching) >= 4, "teaching text between the calls"


def test_executed_copies_keep_the_epoch_lines_not_frozen_progress_bars(folders, monkeypatch):
    """A tqdm widget saved without its kernel shows '0%| | 0/N' forever: the copy drops it."""
    nb = write_notebook(folders / "bars.ipynb",
                        "from tqdm.auto import tqdm\n"
                        "for _ in tqdm(range(40), desc='epoch 1/1', leave=False):\n    pass\n"
                        "print('run epoch 1/1: loss 1.0000 val acc 0.5000')")
    out = folders / "out"
    assert lab.run_lab(smoke=True, recipe="fast", out_dir=out, notebooks=[nb]) == 0
    executed = nbformat.read(out / "bars.ipynb", as_version=4)
    texts = json.dumps(executed.cells[1].outputs)
    assert "val acc 0.5000" in texts, "the epoch line stays"
    assert "0%|" not in texts and "widget-view" not in texts, texts[:300]
    # without the clean-up the kernel's widget, frozen at 0%, is what the copy would hold
    monkeypatch.setattr(lab, "drop_frozen_progress_bars", lambda nb: 0)
    assert lab.run_lab(smoke=True, recipe="fast", out_dir=out, notebooks=[nb]) == 0
    raw = nbformat.read(out / "bars.ipynb", as_version=4)
    assert "0%|" in json.dumps(raw.cells[1].outputs)
