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


def test_suite_runs_without_pytest_xdist_and_says_what_to_install():
    """pyproject's addopts carry xdist's ``-n 2``: without the plugin the suite must still run (one
    process) and say how to get the two workers, not stop at 'unrecognized arguments: -n'."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "-W", "default",
         "tests/test_stats.py::test_binomial_se_by_hand"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 passed" in out
    assert "pytest-xdist is not installed" in out and "pip install -r requirements.txt" in out
