"""``python -m kdtp doctor``: check the room. Will this runtime train for an hour or load in seconds?

Why: the course runs on runtimes the instructor does not control (a Colab T4 or none, Drive
mounted or not, ImageNet weights and published checkpoints reachable or not), and the
answer decides whether a class spends its hour training. Each check is a plain function
that returns a ``Fact(status, line, todo)`` (``todo``: what to do next, on every problem),
so a test can put each one in any environment; ``report`` runs them all and 00's set-up
cell prints the same lines (``summary``). The exit status is non-zero when the lab cannot
run here. Network probes are short (3 s, all at once) and skipped in smoke mode and with
``--offline``, so the notebook never hangs on them; nothing is downloaded.
"""
from __future__ import annotations

import os
import re
import shutil
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from . import env
from .recipes import NO_IMAGENET_RECIPE, Recipe, default_recipe_name, get_recipe, no_imagenet_advice

OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"
PROBE_TIMEOUT_S = 3.0
DRIVE_URL = "https://drive.google.com/"
RESULTS_MD = Path("benchmarks") / "RESULTS.md"
TIME_TABLE = "## Lab time per device class"
Reach = Callable[[str], "tuple[bool, str]"]   # url -> (reachable, why not); None: not probed


class Fact(NamedTuple):
    status: str        # ok, info, warn or FAIL (the lab cannot run)
    line: str
    todo: str = ""     # what to do next; set on every warn and FAIL


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """(True, "") when ``url``'s host answers within ``timeout`` s (any HTTP status below 500)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True, ""
    except urllib.error.HTTPError as exc:
        return exc.code < 500, f"HTTP {exc.code}"
    except Exception as exc:  # noqa: BLE001 - DNS, refused, timeout, TLS: all mean "not now"
        return False, " ".join(str(getattr(exc, "reason", exc)).split())[:80] or type(exc).__name__


def prober(urls: list[str]) -> Reach:
    """Probe every url at once (one timeout in all, not one each); returns the lookup."""
    urls = list(dict.fromkeys(urls))
    with ThreadPoolExecutor(max(1, len(urls))) as pool:
        found = dict(zip(urls, pool.map(probe, urls)))
    return lambda url: found[url] if url in found else probe(url)


# ----------------------------------------------------------------------------- the facts
def device_class(device: torch.device) -> str:
    """The row key of RESULTS.md's time table: ``gpu-t4``, ``gpu-a100-sxm4-40gb``, ``cpu-avx2``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", re.sub(r"\b(nvidia|tesla|geforce)\b", "", name)).strip("-")
    return env.cpu_class() if device.type == "cpu" else device.type


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def device_fact(recipe: Recipe) -> Fact:
    device = env.pick_device()
    precision = env.pick_precision(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        half = "bf16 and fp16" if props.major >= 8 else "fp16 (no fast bf16)"
        return Fact(OK, f"device: GPU {props.name}, {_gib(props.total_memory)}, CUDA {torch.version.cuda}, "
                        f"compute {props.major}.{props.minor}: {half}; trains in {precision}")
    line = f"device: {device.type} ({device_class(device)}, {_cores()} cores), no CUDA GPU; trains in {precision}"
    if recipe.name in ("fast", "paper") and not recipe.smoke:
        return Fact(WARN, line + f"; the {recipe.name} recipe's ResNets take hours here",
                    "on Colab: Runtime > Change runtime type > T4 GPU; elsewhere use "
                    f"--recipe {NO_IMAGENET_RECIPE}")
    if env.in_colab():
        return Fact(WARN, line, "pick a GPU runtime (Runtime > Change runtime type > T4 GPU) for the fast recipe")
    return Fact(OK, line)


def recipe_fact(recipe: Recipe, asked: str | None) -> Fact:
    why = ("asked for" if asked else "KDTP_RECIPE" if os.environ.get("KDTP_RECIPE", "").strip()
           else "smoke mode shrinks 'fast'" if recipe.smoke
           else "a CUDA GPU is visible" if torch.cuda.is_available() else "no CUDA GPU: small CNNs")
    mode = "; SMOKE: synthetic data, tiny runs, not real results" if recipe.smoke else ""
    return Fact(OK, f"recipe: {recipe.name} ({why}){mode}")


def _weights_bytes(arch: str, recipe: Recipe) -> int:
    from .models import build_model

    with torch.device("meta"):   # shapes only: nothing allocated, nothing downloaded
        model = build_model(arch, num_classes=10, pretrained=False, cifar_stem=recipe.cifar_stem)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def lab_bytes(recipe: Recipe, runs: list[str]) -> int:
    """What the lab writes: every run's finished file, plus one run's resume file while it trains
    (its weights, its best weights so far and the optimizer's state), with a tenth to spare."""
    from .runs import arch_of, get_run, recipe_of

    sizes = [_weights_bytes(arch_of(get_run(r), recipe_of(get_run(r), recipe)), recipe) for r in runs]
    states = 2 if recipe.optimizer == "adamw" else 1
    return int(1.1 * (sum(sizes) + (2 + states) * max(sizes, default=0)))


def checkpoint_fact(recipe: Recipe, need: int) -> Fact:
    from .store import run_folder

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        root = env.checkpoint_root()
    folder = run_folder(recipe, root)
    drive = env._under(folder, env.COLAB_DRIVE_MOUNT)
    where = ("KDTP_CKPT_DIR" if os.environ.get("KDTP_CKPT_DIR", "").strip()
             else "Google Drive" if drive else "local folder")
    existing = next(p for p in (folder, *folder.parents) if p.exists())   # the check creates nothing
    if not existing.is_dir() or not env._writable(existing):
        return Fact(FAIL, f"checkpoints: {folder} ({where}) is not writable",
                    "free Drive space or fix its permissions, or set KDTP_CKPT_DIR to a writable folder")
    free = shutil.disk_usage(existing).free
    line = f"checkpoints: {folder} ({where}, writable, {_gib(free)} free; the lab writes about {_gib(need)})"
    if free < need:
        return Fact(FAIL, line, "free some space, or set KDTP_CKPT_DIR to a folder on a larger disk")
    if env.in_colab() and not drive:
        why = str(said[0].message).split(";")[0] if said else "Google Drive is not mounted"
        return Fact(WARN, line + f"; {why}: lost when the runtime is recycled",
                    "run kdtp.env.mount_drive() (00's set-up cell does) and allow access to Drive")
    return Fact(OK, line)


def data_fact(recipe: Recipe, reach: Reach | None) -> Fact:
    from .data import FOLDER, has_cifar_files, is_synthetic

    if recipe.synthetic:
        return Fact(OK, "data: generated synthetic CIFAR-10 (smoke mode: not real images)")
    folder = env.data_root() / FOLDER
    if has_cifar_files(folder) and not is_synthetic(folder):
        return Fact(OK, f"data: CIFAR-10 present in {folder}")
    line = f"data: CIFAR-10 not in {folder}; downloaded on first use (170 MB)"
    if reach is None:
        return Fact(WARN, line + " (not checked: offline)", "run the doctor without --offline to check the download")
    from torchvision.datasets import CIFAR10
    ok, why = reach(CIFAR10.url)
    if ok:
        return Fact(OK, line + ", its host answers")
    return Fact(FAIL, f"data: CIFAR-10 is not in {folder} and cannot be downloaded ({why})",
                f"copy the extracted '{FOLDER}' folder into {folder.parent} (or set KDTP_DATA_DIR), "
                "or run in smoke mode (KDTP_SMOKE=1)")


def expected_hashes(recipe: Recipe, data, runs: list[str]) -> dict[str, str]:
    """Each run's configuration hash, as ``train_or_load`` computes it (dependencies first)."""
    from .runs import get_run, run_config
    from .store import config_hash

    memo: dict[str, str] = {}

    def one(name: str) -> str:
        if name not in memo:
            spec = get_run(name)
            teachers = [one(t) for t in spec.teachers]
            init = one(spec.init_from) if spec.init_from else None
            memo[name] = config_hash(run_config(spec, recipe, data, teachers or None, init_hash=init))
        return memo[name]
    return {name: one(name) for name in runs}


def plan(recipe: Recipe, manifest: Path | None, hashes: dict[str, str] | None,
         runs: list[str]) -> tuple[dict[str, str], str]:
    """({run: "download" | "download?" | "train" | "train: no Drive id"}, problem with the manifest or "").

    "download?": published, but whether its settings match is not known (no data yet);
    "train: no Drive id": its entry has no Drive id yet (``publish --id``), so it trains.
    """
    from .published import default_manifest_path, load_manifest, manifest_key
    from .store import CheckpointError

    try:
        entries = load_manifest(manifest or default_manifest_path())["checkpoints"]
    except CheckpointError as exc:
        return {r: "train" for r in runs}, str(exc)
    out = {}
    for run in runs:
        entry = entries.get(manifest_key(recipe.name, run))
        out[run] = ("train" if not isinstance(entry, dict) else "train: no Drive id" if not entry.get("file_id")
                    else "download?" if hashes is None
                    else "download" if entry.get("config_hash") == hashes[run] else "train")
    return out, ""


def manifest_fact(where: Path, runs: dict[str, str], problem: str, reach: Reach | None) -> Fact:
    if problem:
        return Fact(WARN, f"published: {problem[:160]}; every run trains",
                    "fix the manifest or regenerate it with python -m kdtp publish")
    down = [r for r, how in runs.items() if how.startswith("download")]
    train = [r for r, how in runs.items() if how.startswith("train")]
    no_id = [r for r, how in runs.items() if how == "train: no Drive id"]
    unsure = " (if their settings match: data not on disk yet)" if any(h == "download?" for h in runs.values()) else ""
    line = (f"published ({where}): nothing downloads, all {len(runs)} runs train here" if not down else
            f"published ({where}): {len(down)} of {len(runs)} runs download{unsure}"
            + (f"; train here: {', '.join(train)}" if train else ""))
    if no_id:
        return Fact(WARN, line + f"; published without a Drive id yet: {', '.join(no_id)}",
                    "upload those files, share them, and run python -m kdtp publish --id RUN=DRIVE_ID")
    if down and reach is not None:
        ok, why = reach(DRIVE_URL)
        if not ok:
            return Fact(WARN, line + f"; Google Drive does not answer ({why})",
                        "check the network; without Drive the published runs train here instead")
    return Fact(OK if down and not train else INFO, line)


def weights_fact(recipe: Recipe, runs: dict[str, str], reach: Reach | None) -> Fact:
    from .models import _RESNETS
    from .runs import arch_of, get_run, recipe_of, uses_pretrained

    users = [r for r in runs if uses_pretrained(get_run(r), recipe_of(get_run(r), recipe))]
    if not users:
        return Fact(OK, f"ImageNet weights: not used by the {recipe.name} recipe{' in smoke mode' * recipe.smoke}")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    urls = {a: _RESNETS[a][1].url for a in {arch_of(get_run(r), recipe_of(get_run(r), recipe)) for r in users}}
    missing = {a: u for a, u in urls.items() if not (hub / u.rsplit("/", 1)[-1]).is_file()}
    if not missing:
        return Fact(OK, f"ImageNet weights: cached in {hub} ({', '.join(sorted(urls))})")
    line = f"ImageNet weights: {', '.join(sorted(missing))} not cached in {hub}"
    if not any(runs[r].startswith("train") for r in users):
        return Fact(OK, line + "; not needed, every run that uses them downloads")
    if reach is None:
        return Fact(WARN, line + "; downloaded on first use (not checked: offline)",
                    "run the doctor without --offline to check the download")
    bad = [(a, why) for a, u in missing.items() for ok, why in [reach(u)] if not ok]
    if not bad:
        return Fact(OK, line + "; download.pytorch.org answers")
    files = ", ".join(missing[a].rsplit("/", 1)[-1] for a, _ in bad)
    return Fact(FAIL, line + f" and cannot be downloaded ({bad[0][1]})",
                f"copy {files} into {hub}/, or use {no_imagenet_advice()}, or smoke mode")


def measured_times(text: str) -> list[dict]:
    """The rows of RESULTS.md's "Lab time per device class" table."""
    section = text.partition(TIME_TABLE)[2].split("\n## ")[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"\d+", cells[1]):
            rows.append({"class": cells[0], "cores": int(cells[1]), "recipe": cells[2], "time": cells[3]})
    return rows


def time_fact(recipe: Recipe, runs: dict[str, str], results_md: Path | None = None) -> Fact:
    device = env.pick_device()
    klass, trains = device_class(device), sum(how.startswith("train") for how in runs.values())
    if recipe.smoke or not trains:
        return Fact(INFO, f"expected lab time: minutes (smoke mode; {trains} of {len(runs)} runs train, tiny)"
                    if recipe.smoke else "expected lab time: minutes (every run downloads; nothing trains)")
    path = results_md or env.project_root() / RESULTS_MD
    rows = measured_times(path.read_text()) if path.is_file() else []
    row = next((r for r in rows if r["recipe"] == recipe.name and
                (klass == r["class"] or klass.startswith(r["class"] + "-"))), None)
    if row is None:
        return Fact(INFO, f"expected lab time: unknown (nothing measured for this device class, {klass}, "
                          f"with the {recipe.name} recipe); {trains} of {len(runs)} runs train")
    cores = "" if device.type != "cpu" or row["cores"] == _cores() else f"; this machine has {_cores()}"
    return Fact(INFO, f"expected lab time: {row['time']} for the core lab, an estimate (measured on "
                      f"{row['cores']} cores of {row['class']}{cores}, {RESULTS_MD}); {trains} of {len(runs)} runs train")


# ----------------------------------------------------------------------------- the report
def report(recipe: str | None = None, smoke: bool | None = None, offline: bool = False,
           manifest: Path | None = None) -> list[Fact]:
    """Every fact about this runtime, in the order a class meets them."""
    from torchvision.datasets import CIFAR10

    from .data import FOLDER, has_cifar_files, is_synthetic
    from .models import _RESNETS
    from .published import default_manifest_path
    from .runs import REGISTRY, get_data

    smoke = env.smoke_mode() if smoke is None else smoke
    chosen, runs = get_recipe(recipe or default_recipe_name(smoke), smoke=smoke), list(REGISTRY)
    reach = None if offline or smoke else prober([CIFAR10.url, DRIVE_URL, *(w[1].url for w in _RESNETS.values())])
    folder = env.data_root() / FOLDER
    have_data = chosen.synthetic or (has_cifar_files(folder) and not is_synthetic(folder))
    hashes = expected_hashes(chosen, get_data(chosen), runs) if have_data else None
    how, problem = plan(chosen, manifest, hashes, runs)
    return [device_fact(chosen), recipe_fact(chosen, recipe),
            checkpoint_fact(chosen, lab_bytes(chosen, runs)), data_fact(chosen, reach),
            weights_fact(chosen, how, reach),
            manifest_fact(manifest or default_manifest_path(), how, problem, reach),
            time_fact(chosen, how)]


def format_facts(facts: list[Fact]) -> str:
    where = "Google Colab" if env.in_colab() else "local machine"
    return "\n".join([f"kdtp doctor | {where} | torch {torch.__version__}"] + [
        f"{f.status:4}  {f.line}" + (f"\n      -> {f.todo}" if f.todo else "") for f in facts])


def summary(**kwargs) -> str:
    """What 00's set-up cell prints: the report's lines under one heading."""
    return format_facts(report(**kwargs))


def main(recipe: str | None = None, smoke: bool | None = None, offline: bool = False,
         manifest: Path | None = None) -> int:
    """The ``doctor`` command: print the report; 1 when the lab cannot run here."""
    facts = report(recipe, smoke, offline, manifest)
    print(format_facts(facts))
    failed = [f for f in facts if f.status == FAIL]
    print(f"\n{len(failed)} problem(s) stop the lab here: fix each as its arrow says." if failed
          else "\nthe lab can run here.")
    return 1 if failed else 0
