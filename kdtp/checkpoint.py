"""The old import path of the checkpoint machinery, kept for code written against it.

The machinery now lives in one file per job: ``store`` (atomic files, safe loading),
``published`` (the manifest and verified downloads), ``resume`` (training that survives
interruptions), ``runner`` (train-or-load) and ``results`` (``RunResult``).
"""
from .published import MANIFEST_FORMAT, default_manifest_path, fetch_published, load_manifest, manifest_key
from .results import RunResult
from .runner import train_or_load
from .store import (FORMAT, CheckpointError, CorruptCheckpointError, atomic_save, atomic_write,
                    config_hash, describe_difference, load_checkpoint, quarantine, remove_stale_temps,
                    run_folder, sha256_file)

__all__ = ["MANIFEST_FORMAT", "default_manifest_path", "fetch_published", "load_manifest", "manifest_key",
           "RunResult", "train_or_load", "FORMAT", "CheckpointError", "CorruptCheckpointError",
           "atomic_save", "atomic_write", "config_hash", "describe_difference", "load_checkpoint",
           "quarantine", "remove_stale_temps", "run_folder", "sha256_file"]
