"""One source of truth: the student notebooks are the instructor's with the solutions removed."""
import json
from pathlib import Path

import pytest

from kdtp.cli import main
from kdtp.student_copy import (BEGIN, END, STUDENT_NOTE, SolutionMarkerError, has_exercises,
                               strip_solutions, write_student_copies)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_a_solution_block_becomes_a_todo_at_its_indentation():
    src = f"def f(x):\n    \"\"\"doc\"\"\"\n    {BEGIN}\n    return x * 2\n    {END}\n\nprint(f)\n"
    out, n = strip_solutions(src)
    assert n == 1 and "return x * 2" not in out
    assert "    raise NotImplementedError(" in out and '"""doc"""' in out and out.endswith("print(f)\n")


@pytest.mark.parametrize("bad", [f"{BEGIN}\nx = 1\n", f"x = 1\n{END}\n", f"{BEGIN}\n{BEGIN}\n{END}\n"])
def test_broken_markers_are_refused_rather_than_leaking_a_solution(bad):
    with pytest.raises(SolutionMarkerError):
        strip_solutions(bad)


def test_the_committed_student_copies_are_what_student_copy_writes(tmp_path):
    written = write_student_copies(NOTEBOOKS, tmp_path)
    assert {p.name for p in written} == {"03_kd_logits.ipynb", "04_kd_features.ipynb"}
    for path in written:
        committed = NOTEBOOKS / "student" / path.name
        assert committed.is_file(), f"run python -m kdtp student-copy: {committed} is missing"
        assert json.loads(committed.read_text()) == json.loads(path.read_text()), (
            f"{committed} is out of date with notebooks/{path.name}: run python -m kdtp student-copy")


def test_student_copies_hold_no_solution_and_point_their_badge_at_themselves():
    for path in sorted((NOTEBOOKS / "student").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        assert not has_exercises(nb)
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "NotImplementedError" in code and END not in code
        assert "reduction=\"batchmean\"" not in code and "kernel_size=1" not in code
        first = "".join(nb["cells"][0]["source"])
        assert f"notebooks/student/{path.name}" in first and STUDENT_NOTE in first
        assert all(c.get("outputs", []) == [] for c in nb["cells"] if c["cell_type"] == "code")


def test_student_copy_command_writes_into_a_chosen_folder(tmp_path, capsys):
    assert main(["student-copy", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.ipynb")) == ["03_kd_logits.ipynb", "04_kd_features.ipynb"]
    assert "2 notebook(s)" in capsys.readouterr().out
