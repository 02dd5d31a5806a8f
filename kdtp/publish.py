"""``python -m kdtp publish``: manifest entries for the instructor's finished checkpoints.

The instructor runs the lab once ahead of class, then publishes: this command scans the
recipe's run folder for finished ``*_best.pt`` files, checks that each one loads and is a
real (not smoke) run, and writes ``name -> Drive file id, sha256, size, config hash`` into
the manifest that ``train_or_load`` consults before training. The files themselves are
uploaded by hand (Drive has no anonymous upload); their ids come back with ``--id``.

A run trained with other settings than the recipe's (06's extra seeds, a sweep's grid
point) lives in ``<run>-<hash8>_best.pt``; it is published under ``recipe/<run>-<hash8>``,
so a demo from published checkpoints loads those seeds too instead of leaving them out.

``--smoke`` publishes smoke checkpoints instead, into a manifest of their own (never the
kit's): the set ``python -m kdtp rehearse --smoke`` rehearses a class with, offline.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .published import MANIFEST_FORMAT, default_manifest_path, load_manifest, manifest_key
from .store import (CheckpointError, CorruptCheckpointError, atomic_write, config_hash, load_checkpoint,
                    run_folder, sha256_file)
from .env import ConfigError, checkpoint_root
from .recipes import RECIPES, smoke_version
from .runs import REGISTRY

_DRIVE_ID = re.compile(r"[A-Za-z0-9_-]{10,}")
_VARIANT = re.compile(r"(?P<run>.+)-(?P<hash8>[0-9a-f]{8})")   # <run>-<hash8>: a run with other settings


def drive_file_id(text: str) -> str:
    """A Drive file id from an id or a share link (``.../file/d/<id>/view``, ``...?id=<id>``)."""
    text = text.strip()
    m = re.search(r"/d/([A-Za-z0-9_-]+)", text) or re.search(r"[?&]id=([A-Za-z0-9_-]+)", text)
    candidate = m.group(1) if m else text
    if not _DRIVE_ID.fullmatch(candidate):
        raise ConfigError(f"{text!r} is not a Google Drive file id or share link (an id looks like "
                          "1AbC...xyz: letters, digits, '-' and '_')")
    return candidate


def _parse_ids(ids: list[str] | None, recipes: list[str]) -> dict[tuple[str | None, str], str]:
    """``["run=ID", "recipe/run=ID"]`` -> {(recipe or None, run): id}; every error is a ConfigError."""
    out: dict[tuple[str | None, str], str] = {}
    for item in ids or []:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--id expects RUN=DRIVE_ID, got {item!r} "
                              "(e.g. --id teacher_resnet50=1AbCdEfGhIjKlMnOp)")
        recipe, _, run = key.rpartition("/")
        variant = _VARIANT.fullmatch(run)
        if run not in REGISTRY and not (variant and variant["run"] in REGISTRY):
            raise ConfigError(f"--id {item!r}: unknown run {run!r}; choose one of: {', '.join(REGISTRY)} "
                              "(or RUN-HASH8 for a run with other settings, as its file is named)")
        if recipe and recipe not in RECIPES:
            raise ConfigError(f"--id {item!r}: unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
        if recipe and recipe not in recipes:
            raise ConfigError(f"--id {item!r} names recipe {recipe!r}, but --recipe {recipes[0]} was asked")
        out[(recipe or None, run)] = drive_file_id(value)
    return out


def _problem(payload: dict, recipe: str, run: str, smoke: bool = False, hash8: str = "") -> str | None:
    """Why a loadable checkpoint must not be published (with ``smoke``: as a rehearsal entry), or None.

    ``hash8``: the file is the variant ``<run>-<hash8>_best.pt``, whose name states its configuration.
    """
    cfg = payload.get("config") or {}
    if payload.get("kind", "best") != "best":
        return "it is not a finished run"
    is_smoke = bool(payload.get("smoke") or cfg.get("smoke") or cfg.get("data") != "cifar10")
    if is_smoke and not smoke:
        return ("it is a smoke / synthetic-data run: its numbers are not real, so it is never "
                "published (train it without --smoke on CIFAR-10)")
    if smoke and not is_smoke:
        return "it is a real run: publish it without --smoke"
    if config_hash(cfg) != payload.get("config_hash"):
        return "its stored settings do not match its configuration hash (the file was altered)"
    if cfg.get("recipe") != recipe or cfg.get("run") != run:
        return f"it holds {cfg.get('recipe')}/{cfg.get('run')}, not {recipe}/{run} (a renamed file?)"
    if hash8 and not str(payload.get("config_hash", "")).startswith(hash8):
        return (f"its name says configuration {hash8}, but it holds {str(payload.get('config_hash'))[:8]} "
                "(a renamed file?)")
    if "test_acc" not in (payload.get("metrics") or {}):
        return "it has no test accuracy"
    return None


def publish(recipe: str | None = None, ckpt_dir: Path | str | None = None,
            manifest: Path | str | None = None, ids: list[str] | None = None, smoke: bool = False) -> int:
    """Write manifest entries for the finished, real checkpoints; print what to do next.

    Existing entries and their Drive ids are kept (``--id`` replaces one); the manifest is
    rewritten atomically. Returns 0 when every checkpoint found was published, 1 when
    none could be or some were refused (each with its reason). Bad input raises
    ConfigError before anything is written. ``smoke``: the smoke checkpoints, for a
    rehearsal manifest (refused for the kit's own manifest).
    """
    if recipe is not None and recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    root = Path(ckpt_dir).expanduser() if ckpt_dir is not None else checkpoint_root()
    if ckpt_dir is not None and not root.is_dir():
        raise ConfigError(f"--ckpt-dir {root} is not a folder")
    manifest_path = Path(manifest).expanduser() if manifest is not None else default_manifest_path()
    if manifest_path.is_dir():
        raise ConfigError(f"manifest {manifest_path} is a folder: give the path of a JSON file")
    if not manifest_path.parent.is_dir():
        raise ConfigError(f"the folder of manifest {manifest_path} does not exist")
    if smoke and manifest_path.resolve() == Path(__file__).with_name("manifest.json").resolve():
        raise ConfigError("publish --smoke never writes into the kit's manifest (students would get "
                          "synthetic-data entries): give --manifest FILE, a rehearsal manifest")
    recipes = [recipe] if recipe else list(RECIPES)
    id_map = _parse_ids(ids, recipes)
    try:
        current = load_manifest(manifest_path)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None

    found: list[tuple[str, str, str, Path]] = []          # (recipe, run, file stem, path)
    smoke_files: list[Path] = []
    for r in recipes:
        folder = run_folder(smoke_version(RECIPES[r]) if smoke else RECIPES[r], root)
        for run in REGISTRY:
            if (folder / f"{run}_best.pt").is_file():
                found.append((r, run, run, folder / f"{run}_best.pt"))
            for path in sorted(folder.glob(f"{run}-*_best.pt")):
                stem = path.name[: -len("_best.pt")]
                variant = _VARIANT.fullmatch(stem)
                if variant and variant["run"] == run:
                    found.append((r, run, stem, path))
        if not smoke:
            smoke_files += sorted(run_folder(smoke_version(RECIPES[r]), root).glob("*_best.pt"))

    for (want_recipe, run), _ in id_map.items():
        matches = [f for f in found if f[2] == run and want_recipe in (None, f[0])]
        if not matches:
            raise ConfigError(f"--id for {run}: there is no finished {run} checkpoint under {root}"
                              f"{f' for recipe {want_recipe}' if want_recipe else ''}; nothing written")
        if want_recipe is None and len(matches) > 1:
            raise ConfigError(f"--id for {run} is ambiguous ({', '.join(m[0] for m in matches)}): "
                              f"write RECIPE/{run}=ID or pass --recipe; nothing written")

    if not found:
        where = ", ".join(str(run_folder(smoke_version(RECIPES[r]) if smoke else RECIPES[r], root))
                          for r in recipes)
        msg = f"publish: no finished checkpoints (*_best.pt) in {where}; nothing written."
        if smoke_files:
            msg += (f" {len(smoke_files)} smoke checkpoint(s) under {root / 'smoke'} are never "
                    "published (synthetic data, not real results): run the lab without --smoke "
                    "first, e.g. python -m kdtp lab" + (f" --recipe {recipe}" if recipe else "") + ".")
        print(msg, file=sys.stderr)
        return 1

    entries: dict[str, dict] = {}
    refused: list[str] = []
    notes: list[str] = []
    for r, run, stem, path in found:
        try:
            payload = load_checkpoint(path)
        except CorruptCheckpointError as exc:
            refused.append(f"{exc}: not published")
            continue
        why = _problem(payload, r, run, smoke, hash8="" if stem == run else stem[-8:])
        if why:
            refused.append(f"{path}: {why}")
            continue
        key = manifest_key(r, stem)
        old = current["checkpoints"].get(key, {})
        sha = sha256_file(path)
        given = id_map.get((r, stem)) or id_map.get((None, stem))
        file_id = given or old.get("file_id") or ""
        if old.get("file_id") and not given and old.get("sha256") != sha:
            notes.append(f"{key} changed since it was published: upload the new {path.name} as a new "
                         f"version of Drive file {old['file_id']} (same id), or give the new id with --id.")
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = path.name
        entries[key] = {"file_id": file_id, "sha256": sha, "size": path.stat().st_size,
                        "config_hash": payload["config_hash"], "file": rel,
                        "test_acc": float(payload["metrics"]["test_acc"]),
                        "created": payload.get("created", ""), **({"smoke": True} if smoke else {}),
                        **({"run": run, "seed": payload["config"].get("seed")} if stem != run else {})}

    for line in refused:
        print(f"publish: refused {line}", file=sys.stderr)
    if not entries:
        print("publish: nothing written.", file=sys.stderr)
        return 1

    merged = {"format": MANIFEST_FORMAT, **{k: v for k, v in current.items() if k != "checkpoints"},
              "checkpoints": {**current["checkpoints"], **entries}}
    merged["format"] = MANIFEST_FORMAT
    text = json.dumps(merged, indent=2, sort_keys=True) + "\n"
    atomic_write(manifest_path, lambda fh: fh.write(text.encode()))

    print(f"wrote {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} to {manifest_path}:")
    for key, e in entries.items():
        print(f"  {key:42} {e['file']:48} {e['size'] / 1e6:8.1f} MB  sha256 {e['sha256'][:12]}  "
              f"test acc {e['test_acc']:.4f}  Drive id {e['file_id'] or '(none yet)'}"
              + (f"  (other settings: seed {e['seed']})" if "run" in e else ""))
    for note in notes:
        print(f"note: {note}")
    missing = [k for k, e in entries.items() if not e["file_id"]]
    print("next:")
    if smoke:
        print(f"  rehearse with these smoke checkpoints (Drive stood in by {root}):\n"
              f"     python -m kdtp rehearse --smoke{f' --recipe {recipe}' if recipe else ''} "
              f"--manifest {manifest_path} --mirror {root}")
        return 1 if refused else 0
    if missing:
        print(f"  1. upload these files from {root} to Google Drive: "
              + ", ".join(entries[k]["file"] for k in missing))
        print("  2. share each one: 'Anyone with the link' can view")
        print("  3. run publish again with the ids (the part after /d/ in the share link), e.g.")
        k0 = missing[0]
        where = f" --ckpt-dir {root}" if ckpt_dir is not None else ""
        print(f"     python -m kdtp publish{f' --recipe {recipe}' if recipe else ''}{where} "
              f"--manifest {manifest_path} --id {k0}=<DRIVE_ID>")
        print("  4. commit the manifest (or give students its path as KDTP_MANIFEST)")
    else:
        print("  every entry has a Drive id: commit the manifest (or give students its path as "
              "KDTP_MANIFEST); train_or_load downloads and verifies these files instead of training.")
    return 1 if refused else 0
