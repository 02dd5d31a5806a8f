"""Publishing a sweep: its results (a few kB) go into the manifest beside the checkpoints,
so a student's notebook draws its own run among the instructor's seeds without a download."""
from __future__ import annotations

import json
from pathlib import Path

from .env import ConfigError
from .sweep_rows import read_rows

PUBLISHED_FIELDS = ("run", "seed", "recipe", "test_acc", "val_acc", "n_test", "config_hash", "device",
                    "precision", "time")


def publish_sweep(path: Path | str, manifest: Path | str | None = None) -> int:
    """Put a sweep's results (a few kB) into the manifest, beside the published checkpoints.

    Students' notebooks then draw their own run among the instructor's seeds without any
    download. Smoke rows are refused: they are never presented as results.
    """
    from .published import MANIFEST_FORMAT, CheckpointError, default_manifest_path, load_manifest
    from .store import atomic_write

    rows = read_rows(path)
    if not rows:
        raise ConfigError(f"sweep results file {path} holds no results: run python -m kdtp sweep first")
    smoke = [r for r in rows if r.get("smoke")]
    if smoke:
        raise ConfigError(f"{path} holds {len(smoke)} smoke result(s) (synthetic data, not real results): "
                          "only a real sweep is published; nothing written")
    manifest_path = Path(manifest).expanduser() if manifest is not None else default_manifest_path()
    try:
        current = load_manifest(manifest_path)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    sweeps = dict(current.get("sweeps") or {})
    by_recipe: dict[str, list] = {}
    for row in rows:
        keep = {k: row.get(k) for k in PUBLISHED_FIELDS}
        keep.update({k: v for k, v in row.items() if k.startswith("set_")})
        by_recipe.setdefault(row.get("recipe") or "?", []).append(keep)
    sweeps.update(by_recipe)
    merged = {**current, "format": MANIFEST_FORMAT, "sweeps": sweeps}
    text = json.dumps(merged, indent=2, sort_keys=True) + "\n"
    atomic_write(manifest_path, lambda fh: fh.write(text.encode()))
    for recipe, published in by_recipe.items():
        print(f"published {len(published)} sweep results of recipe {recipe} into {manifest_path}")
    print("next: commit the manifest (or give students its path as KDTP_MANIFEST); 06_comparison "
          "then draws each student's run among these seeds.")
    return 0


def published_rows(recipe: str, manifest: Path | str | dict | None = None) -> list[dict]:
    """The instructor's published sweep of ``recipe`` (empty when none was published).

    A broken manifest never stops a notebook: it is reported by train_or_load already.
    """
    from .published import CheckpointError, load_manifest

    try:
        data = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    except CheckpointError:
        return []
    rows = (data.get("sweeps") or {}).get(recipe) or []
    return [dict(r, smoke=False) for r in rows if isinstance(r, dict) and "run" in r and "test_acc" in r]
