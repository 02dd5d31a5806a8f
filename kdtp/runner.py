"""Train-or-load: never train twice, never lose a finished run, never load the wrong one.

``train_or_load(name)`` first train-or-loads every run this one learns from (its
teachers, the run it starts from), each with its own configuration hash feeding this
one's. Then it looks, in order, for: a finished ``<name>_best.pt`` made with the same
configuration; the same training finished under another run's name (a twin); a
published copy listed in the manifest (downloaded with gdown, size and sha256 verified);
and only then trains, resuming an unfinished ``<name>_last.pt`` (``resume.py``). One
process trains a run at a time (``lock.py``); another waits and loads the result.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .env import ConfigError, load_only_mode, pick_device
from .lock import describe_holder, live_holder
from .lock import hold as hold_run_lock
from .published import fetch_published, load_manifest, manifest_key
from .recipes import Recipe, get_recipe
from .resume import record_result, save_best, train_run
from .results import RunResult
from .runs import REGISTRY, Run, build_network, get_data, get_run, run_config, trains_the_same
from .store import (CheckpointError, CorruptCheckpointError, config_hash, describe_difference,
                    load_checkpoint, log, quarantine, run_folder, set_aside, try_load)


def _build_result(spec: Run, recipe: Recipe, payload: dict, path: Path, source: str,
                  device: torch.device, teachers: list[RunResult], wanted: str) -> RunResult:
    model = build_network_for_load(spec, recipe, device)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise CorruptCheckpointError(f"{path} does not fit the {spec.name} network of this "
                                     f"configuration ({first[:160]})") from None
    model.eval()
    return RunResult(spec.name, model, payload["config"], payload.get("history", {}),
                     payload.get("metrics", {}), path, source, recipe,
                     teachers[0] if teachers else None, wanted, list(teachers))


def build_network_for_load(spec: Run, recipe: Recipe, device: torch.device) -> nn.Module:
    """Same architecture as training but without fetching ImageNet weights (overwritten anyway)."""
    from dataclasses import replace
    return build_network(spec, replace(recipe, pretrained=False), device)


def _find_best(name: str, folder: Path, config: dict, wanted: str, load_only: bool,
               verbose: bool, device: torch.device) -> tuple[str, dict | None, list[str]]:
    """(stem, payload or None, notes): the finished run with this configuration, if any.

    ``<name>_best.pt`` is this configuration's file unless it holds another one; then
    this configuration lives in ``<name>-<hash8>_best.pt`` and the other stays untouched.
    ``notes`` say why a file was not used (for the load-only error).
    """
    variant = f"{name}-{wanted[:8]}"
    canonical = folder / f"{name}_best.pt"
    notes: list[str] = []
    payload = try_load(canonical, wanted, load_only, verbose, device)
    if payload is not None and not payload.get("_mismatch"):
        return name, payload, notes
    stem = name
    if payload is not None:
        diff = describe_difference(payload.get("config", {}), config)
        notes.append(f"{canonical.name} was made with other settings ({diff})")
        stem = variant
        log(f"{canonical.name} was made with other settings ({diff}); it is not loaded and is "
             f"kept as it is; this configuration uses {stem}_best.pt.", verbose)
    other = try_load(folder / f"{variant}_best.pt", wanted, load_only, verbose, device)
    if other is not None and not other.get("_mismatch"):
        return variant, other, notes
    return stem, None, notes


def train_or_load(name: str | Run, recipe: str | Recipe | None = None, *, smoke: bool | None = None,
                  ckpt_dir: Path | str | None = None, data_dir: Path | str | None = None,
                  device: torch.device | str | None = None, load_only: bool = False,
                  manifest: Path | str | dict | None = None, verbose: bool = True,
                  progress: bool = True, _chain: tuple[str, ...] = (), **overrides) -> RunResult:
    """Load run ``name`` if a matching checkpoint exists or is published, else train it.

    ``name``: one of the lab's runs, a run declared with ``kdtp.Run(...)``, or the ``Run``
    itself. ``recipe``: ``"paper"``, ``"fast"``, ``"cpu"`` (default: fast on a GPU, cpu
    otherwise); ``overrides``: any recipe setting (``epochs=3``, ``alpha=0.9``), for this run
    and the runs it learns from. Those are train-or-loaded first. A checkpoint made with
    other settings is never loaded: it is kept, the difference is printed, and this
    configuration trains under a name with its hash. An interrupted run resumes from
    ``<name>_last.pt`` (written after every epoch). ``load_only=True`` (the instructor's
    demo) raises instead of training.
    """
    spec = get_run(name)
    name = spec.name
    load_only = load_only or load_only_mode()   # KDTP_LOAD_ONLY=1: what `kdtp rehearse` runs with
    if name in _chain:
        raise ConfigError(f"runs learn from each other in a circle ({' -> '.join(_chain + (name,))}); "
                          "a run can only learn from runs that do not depend on it")
    recipe = get_recipe(recipe, smoke=smoke, **overrides)
    device = torch.device(device) if device is not None else pick_device()
    folder = run_folder(recipe, ckpt_dir)
    data = get_data(recipe, data_dir)

    def dependency(other: str) -> RunResult:
        return train_or_load(other, recipe, ckpt_dir=ckpt_dir, data_dir=data_dir, device=device,
                             load_only=load_only, manifest=manifest, verbose=verbose, progress=progress,
                             _chain=_chain + (name,))

    teachers = [dependency(t) for t in spec.teachers]
    init = dependency(spec.init_from) if spec.init_from else None
    config = run_config(spec, recipe, data, [t.config_hash for t in teachers] or None,
                        init_hash=init.config_hash if init else None)
    wanted = config_hash(config)

    # 1. a finished run with this configuration
    stem, payload, notes = _find_best(name, folder, config, wanted, load_only, verbose, device)
    best_path = folder / f"{stem}_best.pt"
    if payload is not None:
        try:
            result = _build_result(spec, recipe, payload, best_path, "loaded", device, teachers, wanted)
        except CorruptCheckpointError as exc:
            if load_only:
                raise CheckpointError(f"{exc}. Delete it or rerun without load_only to retrain.") from None
            set_aside(best_path, verbose, f"{exc}; it will be trained again")
        else:
            log(f"loaded {best_path} (test acc {payload['metrics'].get('test_acc', float('nan')):.4f}); "
                 "no training needed.", verbose)
            return result

    # 2. the very same training, already finished under another run's name
    twin = _from_twin(spec, recipe, config, wanted, folder, best_path, device, teachers, verbose)
    if twin is not None:
        return twin

    # 3. a published copy (instructor's manifest)
    published = _from_manifest(spec, recipe, wanted, best_path, manifest, load_only, verbose, device,
                               teachers, notes)
    if published is not None:
        return published

    if load_only:
        holder = live_holder(folder, stem)
        if holder is not None:
            raise CheckpointError(f"{name} is being trained right now by {describe_holder(holder)} in "
                                  f"{folder}: run this again when it has finished, and it will load.")
        why = f" ({'; '.join(notes)})" if notes else ""
        raise CheckpointError(f"no checkpoint for {name} with these settings in {folder}{why} and none "
                              "published: run without load_only to train it, or ask for the "
                              "instructor's checkpoints (manifest).")

    # 4. train, resuming an unfinished run if there is one. One process per run: another one
    # training it (a second notebook, a second Colab runtime on the same Drive) is waited for.
    with hold_run_lock(folder, stem, log=lambda msg: log(msg, verbose)) as waited:
        if waited:
            stem, payload, _ = _find_best(name, folder, config, wanted, False, verbose, device)
            if payload is not None:
                best_path = folder / f"{stem}_best.pt"
                log(f"loaded {best_path}, which the other process finished (test acc "
                     f"{payload['metrics'].get('test_acc', float('nan')):.4f}); no training needed.", verbose)
                return _build_result(spec, recipe, payload, best_path, "loaded", device, teachers, wanted)
        return train_run(spec, recipe, config, wanted, data, folder, stem, device, teachers, verbose,
                         progress, init)


def _twin_checkpoint(spec: Run, recipe: Recipe, config: dict, folder: Path,
                     device: torch.device) -> tuple[str, dict] | None:
    """(name, payload) of a finished run whose configuration is ``config`` but for its name
    (see ``runs.trains_the_same``). Only sound files whose stored hash matches are taken;
    anything else is left for its own run to deal with.
    """
    for other in list(REGISTRY.values()):
        if other.name == spec.name or not trains_the_same(other, spec, recipe):
            continue   # not the same training: no file needs opening
        twin_hash = config_hash({**config, "run": other.name})
        for path in (folder / f"{other.name}_best.pt", folder / f"{other.name}-{twin_hash[:8]}_best.pt"):
            if not path.is_file():
                continue
            try:
                payload = load_checkpoint(path, map_location=device)
            except CorruptCheckpointError:
                continue
            if payload.get("config_hash") == twin_hash:
                return other.name, payload
    return None


def _from_twin(spec, recipe, config, wanted, folder, best_path, device, teachers, verbose):
    """This run's result taken from its identical twin (see ``_twin_checkpoint``), or None."""
    found = _twin_checkpoint(spec, recipe, config, folder, device)
    if found is None:
        return None
    twin_name, twin = found
    payload = {**twin, "name": spec.name, "config": config, "config_hash": wanted,
               "same_training_as": twin_name}
    try:
        result = _build_result(spec, recipe, payload, best_path, "loaded", device, teachers, wanted)
    except CorruptCheckpointError:
        return None
    log(f"{spec.name} trains exactly what {twin_name} trained (same network, seed, data and "
         f"settings: no ImageNet weights in this recipe), so its finished result is reused "
         f"(test acc {result.test_acc:.4f}) instead of training the same weights again.", verbose)
    result.path, saved_in = save_best(payload, folder, best_path.name, recipe)
    record_result(saved_in, spec.name, config, payload["metrics"], wanted, result.path)
    return result


def _from_manifest(spec, recipe, wanted, best_path, manifest, load_only, verbose, device, teachers,
                   notes: list[str] | None = None):
    """The published checkpoint for this run, downloaded and verified; None to train instead."""
    notes = notes if notes is not None else []
    try:
        entries = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    except CheckpointError as exc:
        if load_only:
            raise
        log(f"{exc}; published checkpoints are ignored.", verbose)
        return None
    checkpoints = entries.get("checkpoints", {})
    entry = checkpoints.get(manifest_key(recipe.name, spec.name))
    variant = checkpoints.get(manifest_key(recipe.name, f"{spec.name}-{wanted[:8]}"))
    if (isinstance(variant, dict) and variant.get("file_id") and variant.get("config_hash") == wanted
            and not (isinstance(entry, dict) and entry.get("config_hash") == wanted)):
        # published with other settings than the recipe's (a seed of 06, a sweep cell): it is
        # kept as <run>-<hash8>_best.pt, where _find_best looks for this configuration
        entry, best_path = variant, best_path.with_name(f"{spec.name}-{wanted[:8]}_best.pt")
    if not isinstance(entry, dict) or not entry.get("file_id"):
        return None
    if entry.get("config_hash") != wanted:
        notes.append(f"the published {spec.name} was made with other settings")
        log(f"the published {spec.name} was made with other settings; not used.", verbose)
        return None
    log(f"downloading the published {spec.name} (Drive id {entry['file_id']})...", verbose)
    try:
        fetch_published(entry, best_path)
        try:
            payload = load_checkpoint(best_path, map_location=device)
            if payload.get("config_hash") != wanted:
                raise CorruptCheckpointError(f"{best_path} does not hold the configuration the manifest names")
            result = _build_result(spec, recipe, payload, best_path, "downloaded", device, teachers, wanted)
        except CorruptCheckpointError:
            try:
                quarantine(best_path)
            except OSError:
                pass
            raise
    except CheckpointError as exc:
        if load_only:
            raise CheckpointError(f"{exc}. The published checkpoint is unusable; rerun without "
                                  "load_only to train it here.") from None
        log(f"{exc}; the download was removed and {spec.name} will be trained instead.", verbose)
        return None
    except OSError as exc:  # the folder is not writable, the disk is full
        if load_only:
            raise CheckpointError(f"the published {spec.name} could not be stored in {best_path.parent} "
                                  f"({exc.strerror or exc}); free space or pick another --ckpt-dir") from None
        log(f"the published {spec.name} could not be stored ({exc.strerror or exc}); training instead.",
             verbose)
        return None
    log(f"downloaded and verified {best_path.name} (test acc "
         f"{payload['metrics'].get('test_acc', float('nan')):.4f}).", verbose)
    return result

