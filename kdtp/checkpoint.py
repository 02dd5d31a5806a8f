"""Train-or-load: never train twice, never lose a finished run, never load the wrong one.

``train_or_load(name)`` looks, in order, for: a finished ``<name>_best.pt`` made with the
same configuration; a published copy listed in the manifest (downloaded with gdown,
size and sha256 verified); an unfinished ``<name>_last.pt`` to resume; and only then
trains. Files are written atomically (temp file, fsync, ``os.replace``) and always read
with ``torch.load(weights_only=True)``, so a kill, a full disk or a hostile file cannot
leave a broken checkpoint or run code.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from . import __version__
from .env import checkpoint_root, pick_device, pick_precision
from .recipes import Recipe, get_recipe
from .runs import (RunSpec, build_network, build_strategy, get_data, get_run, loaders,
                   run_config, TEACHER)
from .train import FitState, evaluate, fit, make_optimizer, make_scheduler

FORMAT = "kdtp-checkpoint/1"
MANIFEST_FORMAT = "kdtp-manifest/1"


class CheckpointError(RuntimeError):
    """A checkpoint could not be used; the message names the file and the next step."""


class CorruptCheckpointError(CheckpointError):
    pass


# ----------------------------------------------------------------------------- files
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path | str) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace``.

    The old file stays intact until the new one is complete: a kill or a full disk at
    any moment leaves either the old or the new checkpoint, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Read a kdtp checkpoint safely (``weights_only=True``: tensors and primitives only).

    Raises CorruptCheckpointError for truncated, corrupt, foreign or code-carrying files.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError,
            AttributeError, ImportError, KeyError, IndexError, TypeError, OSError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        # torch's weights_only refusal is long; its useful line names the refused global
        reason = next((ln for ln in lines if ln.startswith("WeightsUnpickler error")), lines[0])
        raise CorruptCheckpointError(f"{path} cannot be loaded safely ({reason[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path} is not a kdtp checkpoint (no '{FORMAT}' marker)")
    return payload


def quarantine(path: Path) -> Path:
    """Move a bad file aside (kept for inspection, out of the way of the next run)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, target)
    return target


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe_difference(stored: dict, wanted: dict) -> str:
    """'alpha: 0.5 in the file, 0.9 asked; epochs: ...' for the keys that differ."""
    keys = sorted(set(stored) | set(wanted))
    parts = [f"{k}: {stored.get(k, '(absent)')!r} in the file, {wanted.get(k, '(absent)')!r} asked"
             for k in keys if stored.get(k) != wanted.get(k)]
    return "; ".join(parts) or "the configuration hash differs"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- published
def default_manifest_path() -> Path:
    """``KDTP_MANIFEST`` or the manifest shipped with the kit (the instructor fills it)."""
    raw = os.environ.get("KDTP_MANIFEST")
    return Path(raw).expanduser() if raw else Path(__file__).with_name("manifest.json")


def load_manifest(path: Path | str | None = None) -> dict:
    path = Path(path) if path is not None else default_manifest_path()
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "checkpoints": {}}
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest.get("checkpoints"), dict)
    except (ValueError, AssertionError, AttributeError):
        raise CheckpointError(f"manifest {path} is not valid JSON with a 'checkpoints' object: "
                              "fix it or regenerate it with 'python -m kdtp publish'") from None
    return manifest


def manifest_key(recipe_name: str, run: str) -> str:
    return f"{recipe_name}/{run}"


def _gdown_download(file_id: str, output: str) -> None:
    """Drive download by file id (gdown handles the confirm page for large files)."""
    import gdown

    result = gdown.download(id=file_id, output=output, quiet=False)
    if result is None:
        raise CheckpointError("gdown returned nothing (file not shared, or quota exceeded)")


def fetch_published(entry: dict, dest: Path) -> Path:
    """Download a published checkpoint into ``dest``, verified, or raise with the reason.

    The bytes land in a temp file; an HTML page (Drive's quota or permission page), a
    wrong size or a wrong sha256 removes it and raises. Only a verified file is moved
    into place.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".download", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            _gdown_download(entry["file_id"], tmp)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, quota, permission
            raise CheckpointError(f"download of Drive file {entry['file_id']} failed ({exc})") from None
        with open(tmp_path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
        if head.startswith((b"<!doctype html", b"<html")):
            raise CheckpointError(f"Drive returned a web page instead of {dest.name} (download quota "
                                  "exceeded or the file is not shared publicly)")
        size = tmp_path.stat().st_size
        if entry.get("size") is not None and size != int(entry["size"]):
            raise CheckpointError(f"downloaded {dest.name} has {size} bytes, the manifest says {entry['size']}")
        digest = sha256_file(tmp_path)
        if digest != entry.get("sha256"):
            raise CheckpointError(f"downloaded {dest.name} has sha256 {digest[:12]}..., the manifest "
                                  f"says {str(entry.get('sha256'))[:12]}...")
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
        return dest
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# ----------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    """A finished run: the model (eval mode, on the device) and what is known about it."""
    name: str
    model: nn.Module
    config: dict
    history: dict
    metrics: dict
    path: Path
    source: str            # "loaded", "downloaded", "trained" or "resumed"
    recipe: Recipe
    teacher: "RunResult | None" = field(default=None, repr=False)
    config_hash: str = ""

    @property
    def test_acc(self) -> float:
        return float(self.metrics["test_acc"])

    @property
    def val_acc(self) -> float:
        return float(self.metrics["val_acc"])

    @property
    def smoke(self) -> bool:
        return bool(self.config.get("smoke")) or self.config.get("data") != "cifar10"

    @property
    def label(self) -> str:
        return f"{self.name}{' (smoke)' if self.smoke else ''}"


def run_folder(recipe: Recipe, ckpt_dir: Path | str | None = None) -> Path:
    """Where a recipe's checkpoints live.

    ``paper`` uses the checkpoint folder itself (the reference lab's layout); other
    recipes a sub-folder of their name; smoke runs ``smoke/<recipe>``, so smoke files can
    never stand in for real ones.
    """
    root = Path(ckpt_dir) if ckpt_dir is not None else checkpoint_root()
    if recipe.smoke:
        return root / "smoke" / recipe.name
    return root if recipe.name == "paper" else root / recipe.name


def _log(msg: str, verbose: bool) -> None:
    if verbose:
        print(f"[kdtp] {msg}", flush=True)


def _try_load(path: Path, wanted_hash: str, load_only: bool, verbose: bool,
              device: torch.device) -> dict | None:
    """The payload at ``path`` when it exists, is sound and matches; else None.

    A corrupt file is moved aside (training replaces it) unless the user asked to
    load only, which then fails with the reason.
    """
    if not path.is_file():
        return None
    try:
        payload = load_checkpoint(path, map_location=device)
    except CorruptCheckpointError as exc:
        if load_only:
            raise CheckpointError(f"{exc}. Delete it or rerun without load_only to retrain.") from None
        moved = quarantine(path)
        _log(f"{exc}; moved aside to {moved.name}, training again.", verbose)
        return None
    if payload.get("config_hash") != wanted_hash:
        return payload | {"_mismatch": True}
    return payload


def _build_result(spec: RunSpec, recipe: Recipe, payload: dict, path: Path, source: str,
                  device: torch.device, teacher: "RunResult | None", wanted: str) -> RunResult:
    model = build_network_for_load(spec, recipe, device)
    model.load_state_dict(payload["model"])
    model.eval()
    return RunResult(spec.name, model, payload["config"], payload.get("history", {}),
                     payload.get("metrics", {}), path, source, recipe, teacher, wanted)


def build_network_for_load(spec: RunSpec, recipe: Recipe, device: torch.device) -> nn.Module:
    """Same architecture as training but without fetching ImageNet weights (overwritten anyway)."""
    from dataclasses import replace
    return build_network(spec, replace(recipe, pretrained=False), device)


def train_or_load(name: str, recipe: str | Recipe | None = None, *, smoke: bool | None = None,
                  ckpt_dir: Path | str | None = None, data_dir: Path | str | None = None,
                  device: torch.device | str | None = None, load_only: bool = False,
                  manifest: Path | str | dict | None = None, verbose: bool = True,
                  progress: bool = True, **overrides) -> RunResult:
    """Load run ``name`` if a matching checkpoint exists or is published, else train it.

    ``recipe``: ``"paper"``, ``"fast"``, ``"cpu"`` (default: fast on a GPU, cpu otherwise);
    ``overrides``: any recipe setting (``epochs=3``, ``alpha=0.9``). Students that distil
    train-or-load the teacher first. A checkpoint made with other settings is never loaded:
    it is kept, the difference is printed, and this configuration trains under a name
    with its hash. ``load_only=True`` (the instructor's demo) raises instead of training.
    """
    spec = get_run(name)
    recipe = get_recipe(recipe, smoke=smoke, **overrides)
    device = torch.device(device) if device is not None else pick_device()
    folder = run_folder(recipe, ckpt_dir)
    data = get_data(recipe, data_dir)

    teacher = None
    if spec.needs_teacher:
        teacher = train_or_load(TEACHER, recipe, ckpt_dir=ckpt_dir, data_dir=data_dir, device=device,
                                load_only=load_only, manifest=manifest, verbose=verbose, progress=progress)
    config = run_config(spec, recipe, data, teacher.config_hash if teacher else None)
    wanted = config_hash(config)

    # 1. a finished run with this configuration
    stem = name
    canonical = folder / f"{name}_best.pt"
    payload = _try_load(canonical, wanted, load_only, verbose, device)
    if payload is not None and payload.get("_mismatch"):
        diff = describe_difference(payload.get("config", {}), config)
        stem = f"{name}-{wanted[:8]}"
        _log(f"{canonical.name} was made with other settings ({diff}); it is kept as it is, and "
             f"this configuration uses {stem}_best.pt.", verbose)
        payload = _try_load(folder / f"{stem}_best.pt", wanted, load_only, verbose, device)
        if payload is not None and payload.get("_mismatch"):
            payload = None
    best_path = folder / f"{stem}_best.pt"
    if payload is not None:
        _log(f"loaded {best_path} (test acc {payload['metrics'].get('test_acc', float('nan')):.4f}); "
             "no training needed.", verbose)
        return _build_result(spec, recipe, payload, best_path, "loaded", device, teacher, wanted)

    # 2. a published copy (instructor's manifest)
    published = _from_manifest(spec, recipe, wanted, best_path, manifest, load_only, verbose, device, teacher)
    if published is not None:
        return published

    if load_only:
        raise CheckpointError(f"no checkpoint for {name} with these settings in {folder} and none "
                              "published: run without load_only to train it, or ask for the "
                              "instructor's checkpoints (manifest).")

    # 3. train, resuming an unfinished run if there is one
    return _train(spec, recipe, config, wanted, data, folder, stem, device, teacher, verbose, progress)


def _from_manifest(spec, recipe, wanted, best_path, manifest, load_only, verbose, device, teacher):
    entries = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    entry = entries.get("checkpoints", {}).get(manifest_key(recipe.name, spec.name))
    if not entry or not entry.get("file_id"):
        return None
    if entry.get("config_hash") != wanted:
        _log(f"the published {spec.name} was made with other settings; not used.", verbose)
        return None
    _log(f"downloading the published {spec.name} (Drive id {entry['file_id']})...", verbose)
    try:
        fetch_published(entry, best_path)
        try:
            payload = load_checkpoint(best_path, map_location=device)
            if payload.get("config_hash") != wanted:
                raise CorruptCheckpointError(f"{best_path} does not hold the configuration the manifest names")
        except CorruptCheckpointError:
            quarantine(best_path)
            raise
    except CheckpointError as exc:
        if load_only:
            raise CheckpointError(f"{exc}. The published checkpoint is unusable; rerun without "
                                  "load_only to train it here.") from None
        _log(f"{exc}; the download was removed and {spec.name} will be trained instead.", verbose)
        return None
    return _build_result(spec, recipe, payload, best_path, "downloaded", device, teacher, wanted)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _train(spec: RunSpec, recipe: Recipe, config: dict, wanted: str, data, folder: Path,
           stem: str, device: torch.device, teacher: RunResult | None, verbose: bool,
           progress: bool) -> RunResult:
    precision = pick_precision(device)
    model = build_network(spec, recipe, device)
    strategy = build_strategy(spec, recipe, model, teacher.model if teacher else None)
    train_loader, val_loader, test_loader = loaders(data, recipe, device)
    epochs = config["epochs"]
    params = [p for p in strategy.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, recipe.optimizer, config["lr"], recipe.weight_decay, recipe.momentum)
    scheduler = make_scheduler(optimizer, recipe.schedule, epochs * len(train_loader), recipe.warmup_fraction)
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    state = FitState()
    last_path = folder / f"{stem}_last.pt"
    source = "trained"

    last = _try_load(last_path, wanted, False, verbose, device)
    if last is not None and last.get("_mismatch"):
        stale = last_path.with_name(f"{stem}_last.stale-{last.get('config_hash', 'unknown')[:8]}.pt")
        os.replace(last_path, stale)
        _log(f"an unfinished {stem} run with other settings "
             f"({describe_difference(last.get('config', {}), config)}) was moved to {stale.name}; "
             "starting fresh.", verbose)
        last = None
    if last is not None:
        model.load_state_dict(last["model"])
        strategy.load_extra_state(last.get("extra", {}))
        optimizer.load_state_dict(last["optimizer"])
        scheduler.load_state_dict(last["scheduler"])
        scaler.load_state_dict(last["scaler"])
        torch.set_rng_state(last["rng"]["torch"].cpu())
        if "cuda" in last["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in last["rng"]["cuda"]])
        state = FitState(last["epoch"], last["history"], last["best_val_acc"], last["best_epoch"],
                         last["best_model"])
        source = "resumed"
        _log(f"resuming {stem} from {last_path.name}: {state.epoch}/{epochs} epochs already done.", verbose)

    def save_last(s: FitState) -> None:
        atomic_save({"format": FORMAT, "kind": "last", "name": spec.name, "config": config,
                     "config_hash": wanted, "epoch": s.epoch, "history": s.history,
                     "best_val_acc": s.best_val_acc, "best_epoch": s.best_epoch,
                     "best_model": s.best_model, "model": model.state_dict(),
                     "extra": strategy.extra_state(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "rng": _rng_state()}, last_path)

    if state.epoch < epochs:
        _log(f"training {stem} ({spec.title}; recipe {recipe.name}{', SMOKE' if recipe.smoke else ''}; "
             f"{epochs} epochs on {device.type}, {precision}).", verbose)
        state = fit(strategy, train_loader, val_loader, optimizer=optimizer, scheduler=scheduler,
                    epochs=epochs, precision=precision, state=state, scaler=scaler,
                    on_epoch_end=save_last, desc=spec.name, tta_flip=recipe.tta_flip, progress=progress)
    model.load_state_dict(state.best_model)
    model.eval()
    test_acc = evaluate(model, test_loader, precision, recipe.tta_flip)
    from .models import count_parameters

    metrics = {"test_acc": test_acc, "val_acc": state.best_val_acc, "best_epoch": state.best_epoch,
               "params": count_parameters(model), "train_seconds": float(sum(state.history.get("seconds", []))),
               "device": device.type, "precision": precision}
    best_path = folder / f"{stem}_best.pt"
    atomic_save({"format": FORMAT, "kind": "best", "name": spec.name, "model": model.state_dict(),
                 "config": config, "config_hash": wanted, "history": state.history, "metrics": metrics,
                 "smoke": recipe.smoke, "versions": {"kdtp": __version__, "torch": str(torch.__version__),
                                                      "torchvision": str(torchvision.__version__)},
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}, best_path)
    if last_path.exists():
        last_path.unlink()
    from .results import record

    record(folder, spec.name, config, metrics, wanted)
    _log(f"{spec.name}: test acc {test_acc:.4f}{' (SMOKE, not a real result)' if recipe.smoke else ''}; "
         f"saved {best_path}.", verbose)
    return RunResult(spec.name, model, config, state.history, metrics, best_path, source, recipe,
                     teacher, wanted)
