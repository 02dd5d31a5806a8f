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
import re
import socket
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
import torchvision
from torch import nn

from . import __version__
from .env import checkpoint_root, local_checkpoint_root, pick_device, pick_precision
from .lock import describe_holder, live_holder
from .lock import hold as hold_run_lock
from .recipes import Recipe, get_recipe
from .runs import (RUNS, RunSpec, build_network, build_strategy, get_data, get_run, loaders,
                   run_config, seed_of, trains_the_same, TEACHER)
from .train import FitState, evaluate, fit, make_optimizer, make_scheduler

FORMAT = "kdtp-checkpoint/1"
MANIFEST_FORMAT = "kdtp-manifest/1"


class CheckpointError(RuntimeError):
    """A checkpoint could not be used; the message names the file and the next step."""


class CorruptCheckpointError(CheckpointError):
    pass


# ----------------------------------------------------------------------------- files
_HOST = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:24] or "host"
_TMP_SUFFIXES = (".tmp", ".download")
STALE_TEMP_SECONDS = 600   # no checkpoint write takes this long; older temp files are debris


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path, suffix: str) -> tuple[int, Path]:
    """A new temp file in ``path``'s folder (same file system, so ``os.replace`` is atomic).

    Its name starts with a dot and ends with ``.tmp``/``.download``, never ``.pt``: a
    leftover from a kill cannot be mistaken for a checkpoint. Host and pid in the name let
    a later run remove the leftovers of dead processes.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=suffix,
                               dir=path.parent)
    try:  # mkstemp makes 0600 files; a checkpoint is an ordinary file (umask applies)
        os.fchmod(fd, 0o666 & ~_umask())
    except (OSError, AttributeError):
        pass
    return fd, Path(tmp)


def atomic_write(path: Path | str, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` all-or-nothing: temp file beside it, flush, fsync, ``os.replace``.

    The previous file stays intact until the new one is complete: a kill or a full disk
    at any moment leaves either the old or the new version, never half of one (the temp
    file is removed on an error; after a SIGKILL it is left behind, named ``.*.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path, ".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
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


def atomic_save(obj: Any, path: Path | str) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def remove_stale_temps(folder: Path, stem: str | None = None) -> list[Path]:
    """Delete temp files that killed writers left in ``folder`` (for ``stem`` or all).

    Only files of a dead process on this host, or older than STALE_TEMP_SECONDS, go: a
    write still in progress (another notebook) is never pulled from under its writer.
    """
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.glob(f".{stem or ''}*"):
        if not p.name.endswith(_TMP_SUFFIXES) or not p.is_file():
            continue
        m = re.match(r"\..+?\.pt\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.", p.name)
        dead = False
        if m and m["host"] == _HOST:
            try:
                os.kill(int(m["pid"]), 0)
            except ProcessLookupError:
                dead = True
            except (PermissionError, OverflowError, OSError):
                pass
        try:
            old = now - p.stat().st_mtime > STALE_TEMP_SECONDS
        except OSError:
            continue
        if dead or old:
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


# what each kind of checkpoint must hold to be usable (checked on load, not at use)
REQUIRED_KEYS = {
    "best": ("model", "config", "config_hash", "metrics"),
    "last": ("model", "config", "config_hash", "epoch", "history", "best_val_acc", "best_epoch",
             "best_model", "optimizer", "scheduler", "scaler", "rng"),
}


def _why_unloadable(path: Path, exc: BaseException) -> str:
    """A short, plain reason for a failed ``torch.load`` (torch's own text is long and
    suggests ``weights_only=False``, exactly what must not be done with such a file)."""
    text = str(exc)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
    except OSError:
        size, head = -1, b""
    if size == 0:
        return "the file is empty (an interrupted copy or download)"
    if head.startswith((b"<!doctype html", b"<html")):
        return "it is a web page (HTML), not a checkpoint"
    glob = re.search(r"unsupported GLOBAL (\S+)", text, re.I)
    if glob or "global" in text.lower() and "weights only" in text.lower():
        what = glob.group(1) if glob else "a Python object"
        return (f"it contains pickled code or objects ({what}), which are refused; nothing in "
                "it was run. Never load it with weights_only=False")
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"it cannot be read ({exc.strerror or exc})"
    incomplete_zip = head.startswith(b"pk\x03\x04") and not zipfile.is_zipfile(path)
    if (incomplete_zip or "central directory" in text or "zip archive" in text
            or isinstance(exc, (EOFError, zipfile.BadZipFile))):
        return "it is truncated or damaged (incomplete archive)"
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return "it is damaged or not a PyTorch checkpoint (unreadable data)"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"it is damaged ({first[:160]})"


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Read a kdtp checkpoint safely (``weights_only=True``: tensors and primitives only).

    Raises CorruptCheckpointError, naming the file and the reason, for truncated, corrupt,
    foreign, incomplete or code-carrying files. No code inside a file is ever run.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files
        raise CorruptCheckpointError(f"{path} cannot be loaded: {_why_unloadable(path, exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path} is not a kdtp checkpoint (no '{FORMAT}' marker)")
    missing = [k for k in REQUIRED_KEYS.get(payload.get("kind", "best"), ()) if k not in payload]
    if payload.get("kind", "best") not in REQUIRED_KEYS:
        missing = [f"kind={payload.get('kind')!r}"]
    if missing:
        raise CorruptCheckpointError(f"{path} is an incomplete kdtp checkpoint (missing: {', '.join(missing)})")
    return payload


def quarantine(path: Path) -> Path:
    """Move a bad file aside (kept for inspection, out of the way of the next run).

    The new name ends in ``.corrupt-<time>``, not ``.pt``, so nothing loads it by accident.
    """
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
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
    raw = os.environ.get("KDTP_MANIFEST", "").strip()
    return Path(raw).expanduser() if raw else Path(__file__).with_name("manifest.json")


def load_manifest(path: Path | str | None = None) -> dict:
    """The manifest as a dict (an empty one when the file does not exist)."""
    path = Path(path) if path is not None else default_manifest_path()
    if path.is_dir():
        raise CheckpointError(f"manifest {path} is a folder; point KDTP_MANIFEST (or --manifest) at a JSON file")
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "checkpoints": {}}
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest, dict) and isinstance(manifest.get("checkpoints"), dict)
        assert all(isinstance(v, dict) for v in manifest["checkpoints"].values())
    except (ValueError, AssertionError, OSError, UnicodeDecodeError):
        raise CheckpointError(f"manifest {path} is not valid JSON with a 'checkpoints' object: "
                              "fix it or regenerate it with 'python -m kdtp publish'") from None
    return manifest


def manifest_key(recipe_name: str, run: str) -> str:
    return f"{recipe_name}/{run}"


def _gdown_download(file_id: str, output: str) -> None:
    """Drive download by file id into the file ``output`` (gdown handles Drive's confirm page).

    gdown writes into our open file (no ``.part`` file of its own left behind on failure).
    """
    import inspect

    import gdown

    kwargs: dict[str, Any] = {"id": file_id, "quiet": False}
    if "timeout" in inspect.signature(gdown.download).parameters:
        kwargs["timeout"] = 60
    with open(output, "wb") as fh:
        result = gdown.download(output=fh, **kwargs)
    if result is None:
        raise CheckpointError("gdown returned nothing (file not shared, or quota exceeded)")


def fetch_published(entry: dict, dest: Path) -> Path:
    """Download a published checkpoint into ``dest``, verified, or raise with the reason.

    The bytes land in a temp file; an HTML page (Drive's quota or permission page), a
    wrong size or a wrong sha256 removes it and raises. Only a verified file is moved
    into place.
    """
    file_id = entry.get("file_id")
    sha = str(entry.get("sha256") or "")
    if not isinstance(file_id, str) or not file_id.strip():
        raise CheckpointError(f"the manifest entry for {dest.name} has no Drive file id")
    try:
        want_size = None if entry.get("size") is None else int(entry["size"])
    except (TypeError, ValueError):
        raise CheckpointError(f"the manifest entry for {dest.name} has a size that is not a number "
                              f"({entry.get('size')!r}); regenerate it with 'python -m kdtp publish'") from None
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise CheckpointError(f"the manifest entry for {dest.name} has no valid sha256, so a "
                              "download could not be verified; regenerate it with 'python -m kdtp publish'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = _temp_beside(dest, ".download")
    os.close(fd)
    try:
        try:
            _gdown_download(file_id, str(tmp_path))
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, quota, permission
            said = " ".join(str(exc).split()) or type(exc).__name__
            raise CheckpointError(f"download of {dest.name} (Drive file {file_id}) failed: {said[:300]}"
                                  " (no network, the file is not shared publicly, or Drive's "
                                  "download quota is exceeded)") from None
        with open(tmp_path, "rb") as fh:
            head = fh.read(1024).lstrip().lower()
        if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head[:200]:
            raise CheckpointError(f"Drive returned a web page instead of {dest.name} (download quota "
                                  "exceeded, or the file is not shared with 'anyone with the link')")
        size = tmp_path.stat().st_size
        if want_size is not None and size != want_size:
            raise CheckpointError(f"downloaded {dest.name} has {size} bytes, the manifest says "
                                  f"{want_size} (incomplete download or a different file)")
        digest = sha256_file(tmp_path)
        if digest != sha:
            raise CheckpointError(f"downloaded {dest.name} has sha256 {digest[:12]}..., the manifest "
                                  f"says {sha[:12]}... (a different or damaged file)")
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
        return dest
    finally:
        try:
            tmp_path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass


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


def _warn(msg: str) -> None:
    """Something the user must see even with ``verbose=False`` (a save that failed)."""
    warnings.warn(f"[kdtp] {msg}", RuntimeWarning, stacklevel=3)


def _set_aside(path: Path, verbose: bool, why: str) -> None:
    """Quarantine ``path``; if even that fails (read-only folder), say so and go on."""
    try:
        moved = quarantine(path)
        _log(f"{why}; moved aside to {moved.name}.", verbose)
    except OSError as exc:
        _log(f"{why}; it could not be moved aside ({exc.strerror or exc}), so it is ignored.", verbose)


def _try_load(path: Path, wanted_hash: str, load_only: bool, verbose: bool,
              device: torch.device) -> dict | None:
    """The payload at ``path`` when it exists and is sound; else None.

    A payload made with another configuration is returned with ``_mismatch`` set (the
    caller decides and says what differs). A corrupt file is moved aside (training
    replaces it) unless the user asked to load only, which then fails with the reason.
    """
    if not path.is_file():
        return None
    try:
        payload = load_checkpoint(path, map_location=device)
    except CorruptCheckpointError as exc:
        if load_only:
            raise CheckpointError(f"{exc}. Delete it or rerun without load_only to retrain.") from None
        _set_aside(path, verbose, f"{exc}; it will be trained again")
        return None
    if payload.get("config_hash") != wanted_hash:
        return payload | {"_mismatch": True}
    return payload


def _build_result(spec: RunSpec, recipe: Recipe, payload: dict, path: Path, source: str,
                  device: torch.device, teacher: "RunResult | None", wanted: str) -> RunResult:
    model = build_network_for_load(spec, recipe, device)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise CorruptCheckpointError(f"{path} does not fit the {spec.name} network of this "
                                     f"configuration ({first[:160]})") from None
    model.eval()
    return RunResult(spec.name, model, payload["config"], payload.get("history", {}),
                     payload.get("metrics", {}), path, source, recipe, teacher, wanted)


def build_network_for_load(spec: RunSpec, recipe: Recipe, device: torch.device) -> nn.Module:
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
    payload = _try_load(canonical, wanted, load_only, verbose, device)
    if payload is not None and not payload.get("_mismatch"):
        return name, payload, notes
    stem = name
    if payload is not None:
        diff = describe_difference(payload.get("config", {}), config)
        notes.append(f"{canonical.name} was made with other settings ({diff})")
        stem = variant
        _log(f"{canonical.name} was made with other settings ({diff}); it is not loaded and is "
             f"kept as it is; this configuration uses {stem}_best.pt.", verbose)
    other = _try_load(folder / f"{variant}_best.pt", wanted, load_only, verbose, device)
    if other is not None and not other.get("_mismatch"):
        return variant, other, notes
    return stem, None, notes


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
    with its hash. An interrupted run resumes from ``<name>_last.pt`` (written after
    every epoch). ``load_only=True`` (the instructor's demo) raises instead of training.
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
    stem, payload, notes = _find_best(name, folder, config, wanted, load_only, verbose, device)
    best_path = folder / f"{stem}_best.pt"
    if payload is not None:
        try:
            result = _build_result(spec, recipe, payload, best_path, "loaded", device, teacher, wanted)
        except CorruptCheckpointError as exc:
            if load_only:
                raise CheckpointError(f"{exc}. Delete it or rerun without load_only to retrain.") from None
            _set_aside(best_path, verbose, f"{exc}; it will be trained again")
        else:
            _log(f"loaded {best_path} (test acc {payload['metrics'].get('test_acc', float('nan')):.4f}); "
                 "no training needed.", verbose)
            return result

    # 2. the very same training, already finished under another run's name
    twin = _from_twin(spec, recipe, config, wanted, folder, best_path, device, teacher, verbose)
    if twin is not None:
        return twin

    # 3. a published copy (instructor's manifest)
    published = _from_manifest(spec, recipe, wanted, best_path, manifest, load_only, verbose, device,
                               teacher, notes)
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
    with hold_run_lock(folder, stem, log=lambda msg: _log(msg, verbose)) as waited:
        if waited:
            stem, payload, _ = _find_best(name, folder, config, wanted, False, verbose, device)
            if payload is not None:
                best_path = folder / f"{stem}_best.pt"
                _log(f"loaded {best_path}, which the other process finished (test acc "
                     f"{payload['metrics'].get('test_acc', float('nan')):.4f}); no training needed.", verbose)
                return _build_result(spec, recipe, payload, best_path, "loaded", device, teacher, wanted)
        return _train(spec, recipe, config, wanted, data, folder, stem, device, teacher, verbose, progress)


def _twin_checkpoint(spec: RunSpec, recipe: Recipe, config: dict, folder: Path,
                     device: torch.device) -> tuple[str, dict] | None:
    """(name, payload) of a finished run whose configuration is ``config`` but for its name
    (see ``runs.trains_the_same``). Only sound files whose stored hash matches are taken;
    anything else is left for its own run to deal with.
    """
    for other in RUNS.values():
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


def _from_twin(spec, recipe, config, wanted, folder, best_path, device, teacher, verbose):
    """This run's result taken from its identical twin (see ``_twin_checkpoint``), or None."""
    found = _twin_checkpoint(spec, recipe, config, folder, device)
    if found is None:
        return None
    twin_name, twin = found
    payload = {**twin, "name": spec.name, "config": config, "config_hash": wanted,
               "same_training_as": twin_name}
    try:
        result = _build_result(spec, recipe, payload, best_path, "loaded", device, teacher, wanted)
    except CorruptCheckpointError:
        return None
    _log(f"{spec.name} trains exactly what {twin_name} trained (same network, seed, data and "
         f"settings: no ImageNet weights in this recipe), so its finished result is reused "
         f"(test acc {result.test_acc:.4f}) instead of training the same weights again.", verbose)
    result.path, saved_in = _save_best(payload, folder, best_path.name, recipe)
    _record_result(saved_in, spec.name, config, payload["metrics"], wanted, result.path)
    return result


def _from_manifest(spec, recipe, wanted, best_path, manifest, load_only, verbose, device, teacher,
                   notes: list[str] | None = None):
    """The published checkpoint for this run, downloaded and verified; None to train instead."""
    notes = notes if notes is not None else []
    try:
        entries = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    except CheckpointError as exc:
        if load_only:
            raise
        _log(f"{exc}; published checkpoints are ignored.", verbose)
        return None
    entry = entries.get("checkpoints", {}).get(manifest_key(recipe.name, spec.name))
    if not isinstance(entry, dict) or not entry.get("file_id"):
        return None
    if entry.get("config_hash") != wanted:
        notes.append(f"the published {spec.name} was made with other settings")
        _log(f"the published {spec.name} was made with other settings; not used.", verbose)
        return None
    _log(f"downloading the published {spec.name} (Drive id {entry['file_id']})...", verbose)
    try:
        fetch_published(entry, best_path)
        try:
            payload = load_checkpoint(best_path, map_location=device)
            if payload.get("config_hash") != wanted:
                raise CorruptCheckpointError(f"{best_path} does not hold the configuration the manifest names")
            result = _build_result(spec, recipe, payload, best_path, "downloaded", device, teacher, wanted)
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
        _log(f"{exc}; the download was removed and {spec.name} will be trained instead.", verbose)
        return None
    except OSError as exc:  # the folder is not writable, the disk is full
        if load_only:
            raise CheckpointError(f"the published {spec.name} could not be stored in {best_path.parent} "
                                  f"({exc.strerror or exc}); free space or pick another --ckpt-dir") from None
        _log(f"the published {spec.name} could not be stored ({exc.strerror or exc}); training instead.",
             verbose)
        return None
    _log(f"downloaded and verified {best_path.name} (test acc "
         f"{payload['metrics'].get('test_acc', float('nan')):.4f}).", verbose)
    return result


# ----------------------------------------------------------------------------- resume
def _rng_state() -> dict:
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


def _set_rng_state(state: dict) -> None:
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


def _find_last(name: str, folder: Path, stem: str, config: dict, wanted: str, verbose: bool,
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
        payload = _try_load(path, wanted, False, verbose, device)
        if payload is None:
            continue
        if not payload.get("_mismatch"):
            return payload, path
        other = str(payload.get("config_hash") or "unknown")
        parked = folder / f"{name}-{other[:8]}_last.pt"
        diff = describe_difference(payload.get("config", {}), config)
        try:
            if parked.exists():
                kept = _try_load(parked, other, False, False, device)
                if kept is not None and not kept.get("_mismatch") and kept["epoch"] >= payload["epoch"]:
                    quarantine(path)      # an older copy of the same unfinished run
                    continue
                if parked.exists():
                    quarantine(parked)
            os.replace(path, parked)
            _log(f"{path.name} is an unfinished run with other settings ({diff}); it is kept as "
                 f"{parked.name} and resumes when run with those settings. This one starts fresh.", verbose)
        except OSError as exc:
            _log(f"{path.name} is an unfinished run with other settings ({diff}) and could not be "
                 f"moved ({exc.strerror or exc}); it is ignored.", verbose)
    return None, None


def _train(spec: RunSpec, recipe: Recipe, config: dict, wanted: str, data, folder: Path,
           stem: str, device: torch.device, teacher: RunResult | None, verbose: bool,
           progress: bool) -> RunResult:
    precision = pick_precision(device)
    train_loader, val_loader, test_loader = loaders(data, recipe, device, seed=seed_of(spec, recipe))
    epochs = config["epochs"]
    remove_stale_temps(folder, spec.name)

    def fresh():
        """Network, strategy, optimizer, schedule and scaler as at step 0 (seeded)."""
        model = build_network(spec, recipe, device)
        strategy = build_strategy(spec, recipe, model, teacher.model if teacher else None)
        params = [p for p in strategy.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, recipe.optimizer, config["lr"], recipe.weight_decay, recipe.momentum)
        scheduler = make_scheduler(optimizer, recipe.schedule, epochs * len(train_loader), recipe.warmup_fraction)
        scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
        return model, strategy, optimizer, scheduler, scaler

    model, strategy, optimizer, scheduler, scaler = fresh()
    state = FitState()
    last_path = folder / f"{stem}_last.pt"
    source = "trained"

    last, found_at = _find_last(spec.name, folder, stem, config, wanted, verbose, device)
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
            _set_rng_state(last["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            _set_aside(found_at, verbose, f"{found_at} cannot be resumed ({first[:160]}); "
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
            _log(f"resuming {stem} from {found_at.name}: {state.epoch}/{epochs} epochs already done "
                 f"(best val acc so far {state.best_val_acc:.4f}).", verbose)

    save_failed: list[str] = []

    def save_last(s: FitState) -> None:
        try:
            atomic_save({"format": FORMAT, "kind": "last", "name": spec.name, "config": config,
                         "config_hash": wanted, "epoch": s.epoch, "history": s.history,
                         "best_val_acc": s.best_val_acc, "best_epoch": s.best_epoch,
                         "best_model": s.best_model, "model": model.state_dict(),
                         "extra": strategy.extra_state(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "rng": _rng_state()}, last_path)
        except OSError as exc:   # Drive full or gone: keep training, say what is at risk
            if not save_failed:
                _warn(f"could not write {last_path} ({exc.strerror or exc}); training goes on, but "
                      "an interruption would lose the epochs since the last saved one. Free some "
                      "space or check the checkpoint folder.")
            save_failed.append(str(exc))
        else:
            if save_failed:
                _log(f"{last_path.name} written again (epoch {s.epoch}).", verbose)
                save_failed.clear()

    if state.epoch < epochs:
        start = "ImageNet weights" if config["pretrained"] else "random weights"
        _log(f"training {stem}: {config['arch']} from {start}, {spec.method}; recipe {recipe.name}"
             f"{', SMOKE' if recipe.smoke else ''}; {epochs} epoch{'s' * (epochs != 1)} on {device.type}, "
             f"{precision}.", verbose)
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
    best = {"format": FORMAT, "kind": "best", "name": spec.name, "model": model.state_dict(),
            "config": config, "config_hash": wanted, "history": state.history, "metrics": metrics,
            "smoke": recipe.smoke, "versions": {"kdtp": __version__, "torch": str(torch.__version__),
                                                 "torchvision": str(torchvision.__version__)},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    best_path, saved_in = _save_best(best, folder, f"{stem}_best.pt", recipe)
    if saved_in == folder:
        try:
            last_path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass
    _record_result(saved_in, spec.name, config, metrics, wanted, best_path)
    verb = "resumed and finished" if source == "resumed" else "trained"
    _log(f"{spec.name} {verb}: test acc {test_acc:.4f}{' (SMOKE, not a real result)' if recipe.smoke else ''}; "
         f"saved {best_path}.", verbose)
    return RunResult(spec.name, model, config, state.history, metrics, best_path, source, recipe,
                     teacher, wanted)


def _record_result(saved_in: Path | None, name: str, config: dict, metrics: dict, wanted: str,
                   best_path: Path) -> None:
    """Append the finished run to its folder's results file; a failure only warns (the
    checkpoint holds the same facts)."""
    if saved_in is None:
        return
    from .results import record

    try:
        record(saved_in, name, config, metrics, wanted)
    except OSError as exc:
        _warn(f"the result of {name} could not be added to {saved_in / 'results.jsonl'} "
              f"({exc.strerror or exc}); the checkpoint {best_path} holds it.")


def _save_best(payload: dict, folder: Path, filename: str, recipe: Recipe) -> tuple[Path, Path | None]:
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
            _warn(f"{target} could not be written ({reason}); the finished run was saved to "
                  f"{local / filename} instead. Copy it to {folder} once there is space.")
            return local / filename, local
        except OSError as exc:
            reason += f"; {local}: {exc.strerror or exc}"
    _warn(f"the finished run could not be saved anywhere ({reason}); it is only in memory now. "
          "Free some disk or Drive space and run the cell again (it resumes from the last epoch saved).")
    return target, None
