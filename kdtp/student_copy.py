"""``python -m kdtp student-copy DIR``: the students' notebooks, made from the instructor's.

One source of truth: the instructor's notebooks (``notebooks/``) hold the solutions of the
exercises between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` lines. The student copy
replaces each such block by ``raise NotImplementedError(...)`` at the same indentation (the
TODO skeleton: signature, docstring and shape comments stay), clears every output, and
points the Colab badge at the copy. Only notebooks that have exercises are copied; the
others are the same for both audiences.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TODO = 'raise NotImplementedError("your code here: replace this line")'
STUDENT_DIR = "student"
INSTRUCTOR_NOTE = ("*Instructor version: the exercises' solutions are filled in. Students open the "
                   "student version (`notebooks/student/`, its own Colab badge), where they are TODOs.*")
STUDENT_NOTE = ("*Student version: the exercises are yours to write. The checks say what is right or "
                "which mistake they see; a stuck exercise never blocks the notebook.*")
_BADGE = re.compile(r"(colab\.research\.google\.com/github/[^)\s]*/notebooks/)([0-9][^)\s/]*\.ipynb)")


class SolutionMarkerError(ValueError):
    """A BEGIN without END (or the reverse): the copy would leak or lose code."""


def strip_solutions(source: str, where: str = "cell") -> tuple[str, int]:
    """(source with each solution block replaced by the TODO line, number of blocks)."""
    out, inside, blocks, indent = [], False, 0, ""
    for line in source.splitlines(keepends=True):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise SolutionMarkerError(f"{where}: '{BEGIN}' inside another solution block")
            inside, blocks = True, blocks + 1
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}{TODO}\n")
            continue
        if stripped == END:
            if not inside:
                raise SolutionMarkerError(f"{where}: '{END}' without '{BEGIN}'")
            inside = False
            continue
        if not inside:
            out.append(line)
    if inside:
        raise SolutionMarkerError(f"{where}: '{BEGIN}' is never closed by '{END}'")
    return "".join(out), blocks


def has_exercises(nb: dict) -> bool:
    return any(BEGIN in "".join(c.get("source", [])) for c in nb.get("cells", []) if c.get("cell_type") == "code")


def student_version(nb: dict, name: str) -> dict:
    """The student notebook of instructor notebook ``nb`` (a new dict; ``nb`` is untouched)."""
    nb = json.loads(json.dumps(nb))
    for i, cell in enumerate(nb["cells"]):
        text = "".join(cell.get("source", []))
        if cell.get("cell_type") == "code":
            text, _ = strip_solutions(text, f"{name} cell {i}")
            cell["outputs"], cell["execution_count"] = [], None
        elif i == 0:
            text = _BADGE.sub(lambda m: f"{m.group(1)}{STUDENT_DIR}/{m.group(2)}", text)
            text = (text.replace(INSTRUCTOR_NOTE, STUDENT_NOTE) if INSTRUCTOR_NOTE in text
                    else f"{text}\n\n{STUDENT_NOTE}")
        lines = text.split("\n")
        cell["source"] = [ln + "\n" for ln in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def write_student_copies(src: Path | str, dest: Path | str) -> list[Path]:
    """Write the student version of every notebook of ``src`` that has exercises into ``dest``."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder of notebooks")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(src.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        if not has_exercises(nb):
            continue
        out = dest / path.name
        text = json.dumps(student_version(nb, path.name), indent=1, ensure_ascii=False) + "\n"
        out.write_text(text)
        written.append(out)
    return written
