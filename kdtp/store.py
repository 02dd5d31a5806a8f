"""Checkpoint files: written atomically, read safely, identified by their configuration.

Files are written atomically (temp file beside the target, fsync, ``os.replace``) and
always read with ``torch.load(weights_only=True)``, so a kill, a full disk or a hostile
file cannot leave a broken checkpoint or run code. A file that cannot be used is moved
aside (``quarantine``), never deleted: a student's finished run is never lost.
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
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .env import checkpoint_root
from .recipes import Recipe

FORMAT = "kdtp-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint could not be used; the message names the file and the next step."""


class CorruptCheckpointError(CheckpointError):
    pass


# ----------------------------------------------------------------------------- files
_HOST = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:24] or "host"
_TMP_SUFFIXES = (".tmp", ".download")
STALE_TEMP_SECONDS = 600   # no checkpoint write takes this long; older temp files are debris


def fsync_dir(folder: Path) -> None:
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


def temp_beside(path: Path, suffix: str) -> tuple[int, Path]:
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
    fd, tmp = temp_beside(path, ".tmp")
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
    fsync_dir(path.parent)
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


def log(msg: str, verbose: bool) -> None:
    if verbose:
        print(f"[kdtp] {msg}", flush=True)


def warn(msg: str) -> None:
    """Something the user must see even with ``verbose=False`` (a save that failed)."""
    warnings.warn(f"[kdtp] {msg}", RuntimeWarning, stacklevel=3)


def set_aside(path: Path, verbose: bool, why: str) -> None:
    """Quarantine ``path``; if even that fails (read-only folder), say so and go on."""
    try:
        moved = quarantine(path)
        log(f"{why}; moved aside to {moved.name}.", verbose)
    except OSError as exc:
        log(f"{why}; it could not be moved aside ({exc.strerror or exc}), so it is ignored.", verbose)


def try_load(path: Path, wanted_hash: str, load_only: bool, verbose: bool,
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
        set_aside(path, verbose, f"{exc}; it will be trained again")
        return None
    if payload.get("config_hash") != wanted_hash:
        return payload | {"_mismatch": True}
    return payload
