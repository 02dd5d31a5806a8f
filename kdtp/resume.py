"""Training a run to its end, resumable after any interruption.

After every epoch the whole state (weights, optimizer, schedule, scaler, every random
generator, history, best weights so far) goes to ``<run>_last.pt``; a run that finds a
``last`` file of its own configuration continues from it and ends with the same weights
as an uninterrupted one. The finished run is saved as ``<run>_best.pt`` (the weights of
the best validation epoch), with a local fallback when the Drive is full or gone.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import torch
import torchvision

from . import __version__, teacher_cache
from .batches import normalize
from .env import local_checkpoint_root, pick_precision
from .models import needs_data_init
from .recipes import Recipe
from .results import RunResult
from .distillers import get_method
from .runs import Run, build_network, build_strategy, loaders, recipe_of, seed_of
from .store import (FORMAT, atomic_save, describe_difference, log, quarantine, remove_stale_temps,
                    run_folder, set_aside, try_load, warn)
from .train import FitState, evaluate, fit, make_optimizer, make_scheduler, norm_bias_groups


def rng_state() -> dict:
    """Every random generator a training step may draw from (global torch, CUDA, numpy, random)."""
    import random

    import numpy as np

    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": list(internal), "gauss": gauss},
             "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "numpy" in state:
        npy = state["numpy"]
        np.random.set_state(("MT19937", npy["keys"].cpu().numpy().astype(np.uint32), npy["pos"],
                             npy["has_gauss"], npy["cached"]))


def find_last(name: str, folder: Path, stem: str, config: dict, wanted: str, verbose: bool,
               device: torch.device) -> tuple[dict | None, Path | None]:
    """The unfinished run of this configuration, if one was left behind.

    It is looked for at ``<stem>_last.pt`` and ``<name>-<hash8>_last.pt``. An unfinished run
    of *other* settings is never resumed and never thrown away: it is parked at
    ``<name>-<its hash8>_last.pt``, where a run with those settings looks for it.
    """
    candidates = [folder / f"{stem}_last.pt"]
    if stem == name:
        candidates.append(folder / f"{name}-{wanted[:8]}_last.pt")
    for path in candidates:
        payload = try_load(path, wanted, False, verbose, device)
        if payload is None:
            continue
        if not payload.get("_mismatch"):
            return payload, path
        other = str(payload.get("config_hash") or "unknown")
        parked = folder / f"{name}-{other[:8]}_last.pt"
        diff = describe_difference(payload.get("config", {}), config)
        try:
            if parked.exists():
                kept = try_load(parked, other, False, False, device)
                if kept is not None and not kept.get("_mismatch") and kept["epoch"] >= payload["epoch"]:
                    quarantine(path)      # an older copy of the same unfinished run
                    continue
                if parked.exists():
                    quarantine(parked)
            os.replace(path, parked)
            log(f"{path.name} is an unfinished run with other settings ({diff}); it is kept as "
                 f"{parked.name} and resumes when run with those settings. This one starts fresh.", verbose)
        except OSError as exc:
            log(f"{path.name} is an unfinished run with other settings ({diff}) and could not be "
                 f"moved ({exc.strerror or exc}); it is ignored.", verbose)
    return None, None


def whitening_schedule(model: torch.nn.Module, epochs: int):
    """``fit``'s ``before_epoch`` for airbench's whitening bias: trained in the first ``epochs``
    epochs, frozen after (None where there is nothing to freeze: ``epochs`` 0, another network)."""
    if epochs <= 0 or not needs_data_init(model):
        return None
    return lambda epoch: model.train_whitening_bias(epoch < epochs)


def train_run(spec: Run, recipe: Recipe, config: dict, wanted: str, data, folder: Path,
              stem: str, device: torch.device, teachers: list[RunResult], verbose: bool,
              progress: bool, init: RunResult | None = None) -> RunResult:
    """Train ``spec`` (resuming its ``last`` file when there is one) and save the finished run."""
    precision = pick_precision(device)
    run_recipe = recipe_of(spec, recipe)
    train_loader, val_loader, test_loader = loaders(data, run_recipe, device, seed=seed_of(spec, run_recipe))
    epochs = config["epochs"]
    remove_stale_temps(folder, spec.name)
    caches: list[teacher_cache.CachedLogits] = []

    def teacher_nets() -> list:
        """The teachers' networks; for a method that reads only their logits, each behind
        the cache of its answers (``kdtp.teacher_cache``: identical results, fewer forwards)."""
        caches.clear()
        if not teachers or not get_method(spec.method).reads_teacher_logits or not teacher_cache.enabled():
            return [t.model for t in teachers]
        caches.extend(teacher_cache.CachedLogits(t.model, teacher_cache.cache_path(
            folder, t.config_hash, t.model, precision, device)) for t in teachers)
        return list(caches)

    def fresh():
        """Network, strategy, optimizer, schedule and scaler as at step 0 (seeded)."""
        model = build_network(spec, recipe, device, init.model.state_dict() if init else None)
        if init is None and needs_data_init(model):      # airbench's whitening layer, from the data
            model.init_whitening(normalize(data.train_x[:model.WHITENING_IMAGES].to(device),
                                           run_recipe.image_size, run_recipe.normalization))
        strategy = build_strategy(spec, recipe, model, teacher_nets())
        groups = norm_bias_groups(strategy, config["lr"], run_recipe.weight_decay, run_recipe.norm_bias_lr_scale)
        optimizer = make_optimizer(groups, run_recipe.optimizer, config["lr"], run_recipe.weight_decay,
                                   run_recipe.momentum, lookahead_model=model if run_recipe.lookahead else None,
                                   total_steps=epochs * len(train_loader))
        scheduler = make_scheduler(optimizer, run_recipe.schedule, epochs * len(train_loader),
                                   run_recipe.warmup_fraction)
        scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
        return model, strategy, optimizer, scheduler, scaler

    model, strategy, optimizer, scheduler, scaler = fresh()
    state = FitState()
    last_path = folder / f"{stem}_last.pt"
    source = "trained"

    last, found_at = find_last(spec.name, folder, stem, config, wanted, verbose, device)
    if last is not None:
        try:
            model.load_state_dict(last["model"])
            strategy.load_extra_state(last.get("extra", {}))
            optimizer.load_state_dict(last["optimizer"])
            scheduler.load_state_dict(last["scheduler"])
            scaler.load_state_dict(last["scaler"])
            state = FitState(int(last["epoch"]), dict(last["history"]), float(last["best_val_acc"]),
                             int(last["best_epoch"]), last["best_model"])
            if not 0 < state.epoch <= epochs or state.best_model is None:
                raise ValueError(f"epoch {state.epoch} of {epochs}")
            set_rng_state(last["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            set_aside(found_at, verbose, f"{found_at} cannot be resumed ({first[:160]}); "
                                          "training starts from the beginning")
            model, strategy, optimizer, scheduler, scaler = fresh()
            state = FitState()
        else:
            source = "resumed"
            if found_at != last_path:
                try:
                    os.replace(found_at, last_path)
                except OSError:
                    pass
            log(f"resuming {stem} from {found_at.name}: {state.epoch}/{epochs} epochs already done "
                 f"(best val acc so far {state.best_val_acc:.4f}).", verbose)

    save_failed: list[str] = []

    def save_last(s: FitState) -> None:
        for cache in caches:
            cache.save()
        try:
            atomic_save({"format": FORMAT, "kind": "last", "name": spec.name, "config": config,
                         "config_hash": wanted, "epoch": s.epoch, "history": s.history,
                         "best_val_acc": s.best_val_acc, "best_epoch": s.best_epoch,
                         "best_model": s.best_model, "model": model.state_dict(),
                         "extra": strategy.extra_state(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "rng": rng_state()}, last_path)
        except OSError as exc:   # Drive full or gone: keep training, say what is at risk
            if not save_failed:
                warn(f"could not write {last_path} ({exc.strerror or exc}); training goes on, but "
                      "an interruption would lose the epochs since the last saved one. Free some "
                      "space or check the checkpoint folder.")
            save_failed.append(str(exc))
        else:
            if save_failed:
                log(f"{last_path.name} written again (epoch {s.epoch}).", verbose)
                save_failed.clear()

    if state.epoch < epochs:
        start = (f"the weights of {init.name}" if init else
                 "ImageNet weights" if config["pretrained"] else "random weights")
        log(f"training {stem}: {config['arch']} from {start}, {spec.method}; recipe {recipe.name}"
             f"{', SMOKE' if recipe.smoke else ''}; {epochs} epoch{'s' * (epochs != 1)} on {device.type}, "
             f"{precision}.", verbose)
        state = fit(strategy, train_loader, val_loader, optimizer=optimizer, scheduler=scheduler,
                    epochs=epochs, precision=precision, state=state, scaler=scaler,
                    on_epoch_end=save_last, desc=spec.name, tta_flip=run_recipe.tta_flip, progress=progress,
                    before_epoch=whitening_schedule(model, run_recipe.whiten_bias_epochs))
    for cache, t in zip(caches, teachers):
        if cache.hits + cache.misses:
            log(f"{spec.name}: {cache.summary()} ({t.name}).", verbose)
    model.load_state_dict(state.best_model)
    model.eval()
    test_acc = evaluate(model, test_loader, precision, run_recipe.tta_flip)
    from .models import count_parameters

    metrics = {"test_acc": test_acc, "val_acc": state.best_val_acc, "best_epoch": state.best_epoch,
               "params": count_parameters(model), "train_seconds": float(sum(state.history.get("seconds", []))),
               "device": device.type, "precision": precision}
    best = {"format": FORMAT, "kind": "best", "name": spec.name, "model": model.state_dict(),
            "config": config, "config_hash": wanted, "history": state.history, "metrics": metrics,
            "smoke": recipe.smoke, "versions": {"kdtp": __version__, "torch": str(torch.__version__),
                                                 "torchvision": str(torchvision.__version__)},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    best_path, saved_in = save_best(best, folder, f"{stem}_best.pt", recipe)
    if saved_in == folder:
        try:
            last_path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass
    record_result(saved_in, spec.name, config, metrics, wanted, best_path)
    verb = "resumed and finished" if source == "resumed" else "trained"
    log(f"{spec.name} {verb}: test acc {test_acc:.4f}{' (SMOKE, not a real result)' if recipe.smoke else ''}; "
         f"saved {best_path}.", verbose)
    return RunResult(spec.name, model, config, state.history, metrics, best_path, source, recipe,
                     teachers[0] if teachers else None, wanted, list(teachers))


def record_result(saved_in: Path | None, name: str, config: dict, metrics: dict, wanted: str,
                   best_path: Path) -> None:
    """Append the finished run to its folder's results file; a failure only warns (the
    checkpoint holds the same facts)."""
    if saved_in is None:
        return
    from .results import record

    try:
        record(saved_in, name, config, metrics, wanted)
    except OSError as exc:
        warn(f"the result of {name} could not be added to {saved_in / 'results.jsonl'} "
              f"({exc.strerror or exc}); the checkpoint {best_path} holds it.")


def save_best(payload: dict, folder: Path, filename: str, recipe: Recipe) -> tuple[Path, Path | None]:
    """Save the finished run; if its folder fails (Drive full, gone), the local one.

    Returns (path, folder it was saved in or None). A run that cannot be saved anywhere is
    still returned in memory, with a loud warning: the lab goes on.
    """
    target = folder / filename
    try:
        atomic_save(payload, target)
        return target, folder
    except OSError as exc:
        reason = exc.strerror or str(exc)
    local = run_folder(recipe, local_checkpoint_root())
    if local.resolve() != folder.resolve():
        try:
            atomic_save(payload, local / filename)
            warn(f"{target} could not be written ({reason}); the finished run was saved to "
                  f"{local / filename} instead. Copy it to {folder} once there is space.")
            return local / filename, local
        except OSError as exc:
            reason += f"; {local}: {exc.strerror or exc}"
    warn(f"the finished run could not be saved anywhere ({reason}); it is only in memory now. "
          "Free some disk or Drive space and run the cell again (it resumes from the last epoch saved).")
    return target, None
