"""``python -m kdtp rehearse``: the class, the day before, from the published manifest only.

Why: in class every notebook should download its runs (verified) instead of training them.
Whether it will depends on the manifest, the Drive files and the exact settings each
notebook asks for, and the only honest test is to run the student notebooks as a
student's fresh runtime would. This runs them headless in a fresh checkpoint folder with
``KDTP_LOAD_ONLY=1``, so ``train_or_load`` downloads, verifies and loads, and refuses to
train: a notebook that would train in class fails here, naming the run. Each notebook's
time is printed; the instructor runs it the day before class.

The student notebooks are the numbered ones, the student version (``notebooks/student/``)
where there is one. ``--mirror DIR`` stands in for Drive: each published file is copied
from DIR (the folder ``publish`` read) instead of downloaded, everything after it (size and
sha256 check, loading) as in class. That is how a smoke rehearsal runs offline
(``publish --smoke``) and how the tests run; a real rehearsal leaves it out. The data
folder is this machine's: a student's first download of CIFAR-10 is not rehearsed.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from .env import ConfigError

STARTUP = "00-kdtp-rehearse-mirror.py"   # IPython start-up file: installs the mirror in each kernel
_RUN_IN_ERROR = re.compile(r"no checkpoint for (\S+)|the published (\S+)|(?:of|instead of|downloaded) "
                           r"([A-Za-z0-9_-]+?)(?:-[0-9a-f]{8})?_best\.pt|(\S+) is being trained")
_DOWNLOADED = re.compile(r"downloaded and verified ([A-Za-z0-9_-]+?)(?:-[0-9a-f]{8})?_best\.pt")
_REUSED = re.compile(r"\[kdtp\] (\S+) trains exactly what (\S+) trained")     # twins: no download needed


def student_notebooks(folder: Path | None = None, core_only: bool = False) -> list[Path]:
    """The notebooks a student runs, in order: each numbered one, its student version if any."""
    from .lab import lab_notebooks, notebooks_dir
    from .student_copy import STUDENT_DIR

    folder = folder or notebooks_dir()
    return [folder / STUDENT_DIR / p.name if (folder / STUDENT_DIR / p.name).is_file() else p
            for p in lab_notebooks(folder, core_only=core_only)]


def use_mirror(mirror: str | Path, manifest: str | Path) -> None:
    """In this process, "download" a published file by copying it from ``mirror``.

    The file is the one the manifest entry of that Drive id names (``file``, relative to the
    checkpoint folder ``publish`` read); what ``fetch_published`` does next is unchanged.
    """
    from . import published

    by_id = {e.get("file_id"): e for e in published.load_manifest(Path(manifest))["checkpoints"].values()}

    def copy(file_id: str, output: str) -> None:
        entry = by_id.get(file_id)
        if entry is None or not entry.get("file"):
            raise published.CheckpointError(f"the mirror has no file for Drive id {file_id}")
        shutil.copyfile(Path(mirror) / entry["file"], output)

    published._gdown_download = copy


def _mirror_manifest(entries: dict, mirror: Path, work: Path) -> tuple[Path, list[str]]:
    """A copy of the manifest for the rehearsal: entries without a Drive id get a stand-in id
    (the mirror serves them); returns its path and the runs that have no real id yet."""
    no_id = []
    for key, entry in entries["checkpoints"].items():
        if not entry.get("file_id"):
            entry["file_id"] = f"mirror-{str(entry.get('sha256', ''))[:16]}-{key.replace('/', '-')}"
            no_id.append(key)
    path = work / "manifest.json"
    path.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    startup = work / "ipython" / "profile_default" / "startup" / STARTUP
    startup.parent.mkdir(parents=True, exist_ok=True)
    startup.write_text(f"import kdtp.rehearse\nkdtp.rehearse.use_mirror({str(mirror)!r}, {str(path)!r})\n")
    return path, no_id


def _failed_run(message: str) -> str | None:
    m = _RUN_IN_ERROR.search(message)
    return next((g for g in m.groups() if g), None) if m else None


def rehearse(notebooks: list[Path] | None = None, *, smoke: bool | None = None, recipe: str | None = None,
             manifest: Path | None = None, mirror: Path | None = None, out: Path | None = None,
             keep: bool = False, core_only: bool = False, timeout: int | None = None) -> int:
    """Run the student notebooks from the published manifest only; 0 when none would train.

    ``out``: the rehearsal's folder (default: a new temporary one), holding the executed
    notebooks, the figures and, with ``keep``, the downloaded checkpoints.
    """
    from .env import smoke_mode
    from .lab import SMOKE_CELL_TIMEOUT, _environ, run_notebook
    from .published import default_manifest_path, load_manifest
    from .recipes import default_recipe_name, get_recipe

    smoke = smoke_mode() if smoke is None else bool(smoke)
    recipe_name = recipe or default_recipe_name(smoke)
    get_recipe(recipe_name, smoke=smoke)
    manifest = Path(manifest).expanduser() if manifest is not None else default_manifest_path()
    if manifest.is_dir() or not manifest.is_file():
        raise ConfigError(f"manifest {manifest} is not a file: give --manifest FILE (written by "
                          "python -m kdtp publish)")
    entries = load_manifest(manifest)              # a broken one: CheckpointError, one line, exit 1
    mine = [k for k in entries["checkpoints"] if k.startswith(f"{recipe_name}/")]
    if not mine:
        print(f"rehearse: {manifest} publishes nothing for the {recipe_name} recipe"
              f"{' (smoke)' * smoke}: in class every run would train. Publish first "
              f"(python -m kdtp publish{' --smoke' * smoke} ...).")
        return 1
    if mirror is not None and not Path(mirror).is_dir():
        raise ConfigError(f"--mirror {mirror} is not a folder: give the checkpoint folder publish read")
    paths = [Path(p) for p in notebooks] if notebooks else student_notebooks(core_only=core_only)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise ConfigError(f"no such notebook: {', '.join(missing) or 'none found in notebooks/'}")
    work = Path(out).expanduser() if out is not None else Path(tempfile.mkdtemp(prefix="kdtp-rehearse-"))
    ckpt = work / "checkpoints"
    if ckpt.exists() and any(ckpt.iterdir()):
        raise ConfigError(f"--out {work} already holds checkpoints: a rehearsal starts from a fresh "
                          "folder, give a new one")
    work.mkdir(parents=True, exist_ok=True)
    env_vars = {"KDTP_CKPT_DIR": str(ckpt), "KDTP_FIGURES_DIR": str(work / "figures"),
                "KDTP_MANIFEST": str(manifest), "KDTP_LOAD_ONLY": "1",
                "KDTP_SMOKE": "1" if smoke else "0", "KDTP_RECIPE": recipe_name}
    no_id: list[str] = []
    if mirror is not None:
        rehearsal_manifest, no_id = _mirror_manifest(entries, Path(mirror).resolve(), work)
        env_vars.update(KDTP_MANIFEST=str(rehearsal_manifest), IPYTHONDIR=str(work / "ipython"))
    print(f"kdtp rehearse | recipe {recipe_name}{' (SMOKE)' * smoke} | {len(paths)} notebooks | "
          f"manifest {manifest} ({len(mine)} runs published)\n"
          f"              | fresh checkpoint folder {ckpt}; nothing may train (KDTP_LOAD_ONLY=1)"
          + (f"\n              | Drive stood in by {mirror} (files copied, then verified)" if mirror else ""),
          flush=True)
    failures: list[str] = []
    started = time.perf_counter()
    with _environ(**env_vars):
        for i, path in enumerate(paths, 1):
            t0 = time.perf_counter()
            executed = work / "notebooks" / path.name
            ok, message = run_notebook(path, executed, timeout=timeout or SMOKE_CELL_TIMEOUT,
                                       index=i, total=len(paths))
            took = time.perf_counter() - t0
            label = path.relative_to(path.parents[1]) if path.parent.name == "student" else path.name
            if ok:
                text = executed.read_text() if executed.is_file() else ""
                got = sorted(set(_DOWNLOADED.findall(text)))
                twins = "".join(sorted({f"; {a} = {b}'s result" for a, b in _REUSED.findall(text)}))
                print(f"  ok      {str(label):34} {took:7.1f} s  downloaded: {', '.join(got) or 'nothing'}{twins}",
                      flush=True)
                continue
            run = _failed_run(message)
            why = f"would train {run} in class" if run and "no checkpoint for" in message else (
                f"cannot get {run}" if run else "failed")
            failures.append(f"{label}: {why}")
            print(f"  FAILED  {str(label):34} {took:7.1f} s  {why}: {message}", flush=True)
    if not keep:
        shutil.rmtree(ckpt, ignore_errors=True)
    total = time.perf_counter() - started
    print(f"\n{len(paths) - len(failures)} of {len(paths)} notebooks ran from the manifest in {total:.0f} s; "
          f"executed copies in {work / 'notebooks'}")
    if no_id:
        print(f"note: {len(no_id)} entr{'y has' if len(no_id) == 1 else 'ies have'} no Drive id yet "
              f"({', '.join(no_id)}): the mirror served them; in class they would train. Upload them "
              "and run python -m kdtp publish --id RUN=DRIVE_ID.")
    for line in failures:
        print(f"FAILED: {line}")
    if failures:
        print("Publish every run these notebooks ask for (python -m kdtp publish, then upload and --id), "
              "with the settings the notebooks use, and rehearse again.")
    return 1 if failures else 0
