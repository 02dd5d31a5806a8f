"""The README opens with the two commands, and CI runs the README's test command verbatim."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]
    return [b.split("\n```")[0].strip() for b in blocks]


def test_readme_opens_with_the_lab_and_the_test_command():
    lab, tests = _readme_commands()
    assert lab.endswith("python -m kdtp lab")
    assert tests.endswith("python -m pytest")
    head = (ROOT / "README.md").read_text().split("```bash")[0]
    assert "```" not in head                                  # nothing before them


def test_ci_runs_the_readme_test_command():
    _, tests = _readme_commands()
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines
