"""Published checkpoints: the instructor's manifest and the verified gdown download.

``python -m kdtp publish`` writes the manifest (run -> Drive file id, size, sha256,
configuration hash); ``train_or_load`` reads it here, downloads with gdown into a temp
file, and keeps the file only when its size and sha256 match.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .store import CheckpointError, fsync_dir, temp_beside, sha256_file

MANIFEST_FORMAT = "kdtp-manifest/1"


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
    fd, tmp_path = temp_beside(dest, ".download")
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
        fsync_dir(dest.parent)
        return dest
    finally:
        try:
            tmp_path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass
