"""``python -m kdtp course --repo OWNER/NAME [--branch B]``: make a fork the course's home.

Why: the kit is taught from the instructor's own copy of the repository, and every notebook
names a repository by its address: the Colab badge students open it from, and the
``KDTP_REPO`` line its set-up cell pip-installs the kit from. After a fork they still name
the original, so the fork's students would open the original's notebooks and install the
original's package. The address and branch therefore live in one place,
``kdtp/course_repo.json``, and this module rewrites every place that names them from it:
the badges and install lines of every notebook (the student copies included) and the
README's links.

The rewrite is textual and exact: the files are not re-serialised, only the matched
addresses change, byte for byte, and a second run changes nothing. ``check`` lists each
place that disagrees with the one place (the tests run it, so a new notebook with a wrong
badge fails). Install lines name the branch (``.git@B``) only when it is not ``main``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .env import ConfigError, project_root

CONFIG = Path("kdtp") / "course_repo.json"
DEFAULT_BRANCH = "main"

_OWNER = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})"
_NAME = r"[A-Za-z0-9._-]{1,100}"
_BRANCH = r"[A-Za-z0-9._/-]+"
# a Colab badge or link: .../github/OWNER/NAME/blob/BRANCH/notebooks/FILE.ipynb
COLAB = re.compile(r"https://colab\.research\.google\.com/github/(?P<owner>[A-Za-z0-9-]+)/"
                   r"(?P<name>[A-Za-z0-9._-]+)/blob/(?P<branch>[A-Za-z0-9._/-]+?)/notebooks/"
                   r"(?P<file>[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*\.ipynb)")
# an install address: the KDTP_REPO line of a set-up cell (raw, or JSON-escaped in a
# notebook file) or a pip "git+" requirement in the README
INSTALL = re.compile(r'(?:(?<=KDTP_REPO = ")|(?<=KDTP_REPO = \\")|(?<=git\+))'
                     r"https://github\.com/(?P<owner>[A-Za-z0-9-]+)/(?P<name>[A-Za-z0-9._-]+?)\.git"
                     r"(?:@(?P<branch>[A-Za-z0-9._/-]+))?")


@dataclass(frozen=True)
class CourseRepo:
    """The course's GitHub repository (``OWNER/NAME``) and the branch students use."""
    repo: str
    branch: str = DEFAULT_BRANCH

    def colab_url(self, notebook: str) -> str:
        """The badge address of ``notebook``, a path under ``notebooks/`` ("student/03_kd_logits.ipynb")."""
        return f"https://colab.research.google.com/github/{self.repo}/blob/{self.branch}/notebooks/{notebook}"

    @property
    def install_url(self) -> str:
        """What ``KDTP_REPO`` holds: pip installs ``git+`` this."""
        at = "" if self.branch == DEFAULT_BRANCH else f"@{self.branch}"
        return f"https://github.com/{self.repo}.git{at}"


def parse_repo(text: str) -> str:
    """``OWNER/NAME`` from itself or a GitHub address (``https://github.com/OWNER/NAME(.git)``)."""
    raw = text.strip()
    repo = re.sub(r"^(?:https?://)?(?:www\.)?github\.com/", "", raw)
    repo = re.sub(r"(?:\.git)?/?$", "", repo)
    if not re.fullmatch(f"{_OWNER}/{_NAME}", repo) or repo.split("/")[1] in {".", ".."}:
        raise ConfigError(f"--repo {text!r} is not a GitHub repository: give OWNER/NAME as GitHub "
                          "spells it (e.g. --repo alice/kd-course)")
    return repo


def check_branch(branch: str) -> str:
    """``branch`` if git and Colab can use it as a branch name, else a ConfigError."""
    b = branch.strip()
    if (not re.fullmatch(_BRANCH, b) or b.startswith(("-", "/")) or b.endswith(("/", ".", ".lock"))
            or ".." in b or "//" in b):
        raise ConfigError(f"--branch {branch!r} is not a usable branch name: use letters, digits, "
                          "'.', '_', '-' and '/' (e.g. --branch main or --branch fall-2027)")
    return b


def read_config(root: Path | None = None) -> CourseRepo:
    """The course's repository and branch, from ``kdtp/course_repo.json`` of ``root``."""
    path = (root or project_root()) / CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CourseRepo(parse_repo(data["repo"]), check_branch(data.get("branch", DEFAULT_BRANCH)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} cannot be read ({' '.join(str(exc).split())[:120]}): restore it "
                          "(git checkout kdtp/course_repo.json), then run python -m kdtp course "
                          "--repo OWNER/NAME") from None


def course_files(root: Path) -> list[Path]:
    """Every file that names the course's address: the README and every notebook."""
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    notebooks = sorted((root / "notebooks").rglob("*.ipynb")) if (root / "notebooks").is_dir() else []
    return files + [p for p in notebooks if ".ipynb_checkpoints" not in p.parts]


def rewrite(text: str, course: CourseRepo) -> tuple[str, int]:
    """(``text`` with every badge and install address made ``course``'s, how many changed)."""
    changed = 0

    def sub(new: str, old: str) -> str:
        nonlocal changed
        changed += new != old
        return new

    text = COLAB.sub(lambda m: sub(course.colab_url(m["file"]), m[0]), text)
    text = INSTALL.sub(lambda m: sub(course.install_url, m[0]), text)
    return text, changed


def _write_config(root: Path, course: CourseRepo) -> bool:
    path = root / CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    new = {**data, "repo": course.repo, "branch": course.branch}
    if new == data:
        return False
    path.write_text(json.dumps(new, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def retarget(root: Path | None, repo: str, branch: str | None = None) -> list[tuple[Path, int]]:
    """Point every badge, install line and README link of ``root`` at ``repo``/``branch``.

    ``branch`` None keeps the current one. Returns (file, places changed) for each file
    written; the config file is written last, so an interrupted run is finished by
    running it again.
    """
    root = root or project_root()
    old = read_config(root)
    course = CourseRepo(parse_repo(repo), check_branch(branch) if branch is not None else old.branch)
    written = []
    for path in course_files(root):
        text = path.read_bytes().decode("utf-8")
        new, changed = rewrite(text, course)
        if changed:
            path.write_bytes(new.encode("utf-8"))
            written.append((path, changed))
    _write_config(root, course)
    return written


def check(root: Path | None = None) -> list[str]:
    """Each place that disagrees with ``kdtp/course_repo.json``, one line each (empty: all agree).

    Every numbered notebook needs a badge for itself and a ``KDTP_REPO`` line; the README
    needs a Colab link; every badge and install address anywhere must be the course's.
    """
    root = root or project_root()
    course = read_config(root)
    problems = []
    for path in course_files(root):
        text = path.read_bytes().decode("utf-8")
        rel = path.relative_to(root).as_posix()

        def where(m: re.Match) -> str:
            return f"{rel}:{text.count(chr(10), 0, m.start()) + 1}"

        badges = list(COLAB.finditer(text))
        installs = list(INSTALL.finditer(text))
        for m in badges:
            if m[0] != course.colab_url(m["file"]):
                problems.append(f"{where(m)}: Colab link {m[0]} is not the course's ({course.colab_url(m['file'])})")
        for m in installs:
            if m[0] != course.install_url:
                problems.append(f"{where(m)}: install address {m[0]} is not the course's ({course.install_url})")
        if path.suffix == ".ipynb" and re.match(r"[0-9][0-9]_", path.name):
            own = path.relative_to(root / "notebooks").as_posix()
            if not any(m["file"] == own for m in badges):
                problems.append(f"{rel}: no Colab badge for itself ({course.colab_url(own)})")
            if not installs:
                problems.append(f"{rel}: no KDTP_REPO install line in its set-up cell")
        if rel == "README.md" and not badges:
            problems.append("README.md: no Colab link to the course's notebooks")
    return problems


def main(repo: str | None, branch: str | None, root: Path | None = None) -> int:
    """The ``course`` command: retarget (with ``--repo``/``--branch``), then check; 0 when all agree."""
    root = root or project_root()
    if not (root / "notebooks").is_dir() or not (root / CONFIG).is_file():
        raise ConfigError(f"{root} is not a checkout of the kit (no notebooks/ or {CONFIG}): run "
                          "python -m kdtp course inside your clone of the course repository")
    old = read_config(root)
    if repo is not None or branch is not None:
        written = retarget(root, repo or old.repo, branch)
        new = read_config(root)
        for path, n in written:
            print(f"  {path.relative_to(root)}: {n} address{'es' * (n != 1)} rewritten")
        if written or new != old:
            print(f"course repository: {old.repo} ({old.branch}) -> {new.repo} ({new.branch}); "
                  f"{sum(n for _, n in written)} places in {len(written)} files rewritten, {CONFIG} updated.")
            print(f"next: commit, push to https://github.com/{new.repo} (branch {new.branch}), and give "
                  f"students {new.colab_url('00_data.ipynb')}")
        else:
            print(f"every badge and install line already points at {new.repo} ({new.branch}): nothing to change.")
    course = read_config(root)
    problems = check(root)
    for line in problems:
        print(f"disagrees: {line}")
    if problems:
        print(f"{len(problems)} place(s) disagree with {CONFIG}: run python -m kdtp course --repo "
              f"{course.repo} --branch {course.branch} to rewrite them.")
        return 1
    if repo is None and branch is None:
        print(f"course repository {course.repo}, branch {course.branch}: every badge, install line "
              f"and README link agrees ({len(course_files(root))} files).")
    return 0
