"""Publishing a sweep: its results (a few kB) go into the manifest beside the checkpoints,
so a student's notebook draws its own run among the instructor's seeds without a download."""
from __future__ import annotations

import json
from pathlib import Path

from .env import ConfigError
from .sweep_rows import experiment_id, read_rows

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
        # which seeds belong together: a student's run is drawn among the rows of its own experiment
        keep["experiment"] = experiment_id(str(row.get("run")), row.get("config"))
        by_recipe.setdefault(row.get("recipe") or "?", []).append(keep)
    for recipe, published in by_recipe.items():
        variants: dict[str, set] = {}
        for keep in published:
            variants.setdefault(keep["run"], set()).add(keep["experiment"])
        several = sorted(run for run, ids in variants.items() if len(ids) > 1)
        if several:
            print(f"recipe {recipe}: {', '.join(several)} published in several configurations (a grid or "
                  "--set sweeps in one file); each student's run is compared with its own configuration's seeds")
    sweeps.update(by_recipe)
    merged = {**current, "format": MANIFEST_FORMAT, "sweeps": sweeps}
    text = json.dumps(merged, indent=2, sort_keys=True) + "\n"
    atomic_write(manifest_path, lambda fh: fh.write(text.encode()))
    for recipe, published in by_recipe.items():
        print(f"published {len(published)} sweep results of recipe {recipe} into {manifest_path}")
    print("next: commit the manifest (or give students its path as KDTP_MANIFEST); 06_comparison "
          "then draws each student's run among these seeds.")
    return 0


def published_rows(recipe: str, manifest: Path | str | dict | None = None, like=None) -> list[dict]:
    """The instructor's published sweep of ``recipe`` (empty when none was published).

    ``like``: the student's own results (``RunResult``s): only the published seeds of the
    same experiment as the student's run of that name are kept (same settings, data and
    teacher; ``kdtp.sweep_rows.experiment_id``), so a grid the instructor swept into the
    same file never joins the recipe's seeds. Rows published before experiments were
    recorded are kept when they come from no grid.
    A broken manifest never stops a notebook: it is reported by train_or_load already.
    """
    from .published import CheckpointError, load_manifest

    try:
        data = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    except CheckpointError:
        return []
    rows = (data.get("sweeps") or {}).get(recipe) or []
    rows = [dict(r, smoke=False) for r in rows if isinstance(r, dict) and "run" in r and "test_acc" in r]
    if like is None:
        return rows
    mine = {r.name: experiment_id(r.name, r.config) for r in like}
    return [r for r in rows if r["run"] in mine and (
        r.get("experiment") == mine[r["run"]] if r.get("experiment")
        else not any(k.startswith("set_") for k in r))]
