"""A frozen teacher's logits computed once per batch and reused by every student that sees that batch.

Why: in the CPU recipes a KD student's epoch costs up to twice a labels-only epoch, and the
extra is the frozen teacher's forward pass. Runs with the same seed see the very same
batches (``kdtp.data.DeviceLoader``: order and augmentation come from the seed and the
epoch alone), so the students of other widths in 11, the ensembles of 10, the fine-tunes
of 12 and, in the ImageNet recipes, 05's scratch KD student all ask the lab's teacher what
03's student asked it. The answers are kept beside the checkpoints
(``<run folder>/teacher_logits/``), keyed by a hash of the batch's bytes, and handed back
only for a byte-identical batch: a student then gets bit for bit the logits the live teacher
gives (``tests/test_teacher_cache.py`` trains one both ways and compares the weights); it is
only faster. Any other batch, or a missing, unreadable or foreign file, means the teacher
runs as before; a cache never fails or changes a run. ``KDTP_TEACHER_CACHE=0`` turns it off.

The file is named by the teacher run's configuration hash, a digest of its weights (a
retrained teacher never serves its predecessor's answers), the precision and the device
type. Only methods that read nothing but the teacher's logits use it
(``Strategy.reads_teacher_logits``): feature, attention and relation methods tap the
teacher's inner maps and keep calling it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from .store import atomic_save, warn

FOLDER = "teacher_logits"
FORMAT = 1


def enabled() -> bool:
    """False when ``KDTP_TEACHER_CACHE`` is 0/false/no/off (to time or debug a live teacher)."""
    return os.environ.get("KDTP_TEACHER_CACHE", "1").strip().lower() not in {"0", "false", "no", "off"}


def batch_key(x: torch.Tensor) -> str:
    """A digest of the batch's shape, dtype and bytes: equal keys mean an identical batch."""
    data = x.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(x.shape)}|{x.dtype}|".encode())
    h.update(memoryview(data))
    return h.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """A digest of every tensor of ``model``'s state (names, shapes, bytes)."""
    h = hashlib.blake2b(digest_size=8)
    for name, t in model.state_dict().items():
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def cache_path(folder: Path, teacher_config_hash: str, model: nn.Module, precision: str,
               device: torch.device) -> Path:
    """Where the answers of this teacher (this configuration, these weights) are kept."""
    return (Path(folder) / FOLDER /
            f"{teacher_config_hash[:16]}-{weights_digest(model)}-{precision}-{torch.device(device).type}.pt")


class CachedLogits(nn.Module):
    """``net`` (a frozen teacher) with its answers remembered per batch (see the module docstring).

    ``hits`` and ``misses`` count the batches served from the cache and computed live.
    ``save()`` writes what was learnt, merged with what other processes wrote meanwhile.
    """

    def __init__(self, net: nn.Module, path: Path | None = None):
        super().__init__()
        self.net = net
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, torch.Tensor] = self._read() if self.path is not None else {}
        self.hits = self.misses = 0
        self._unsaved = 0
        self._save_failed = False

    def _read(self) -> dict[str, torch.Tensor]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            if payload.get("format") != FORMAT or not isinstance(payload.get("entries"), dict):
                raise ValueError("not a kdtp teacher-logit cache of this version")
            return {str(k): v for k, v in payload["entries"].items() if isinstance(v, torch.Tensor)}
        except Exception as exc:   # a cache is an optimisation: never fail a run over it
            warn(f"ignored the teacher-logit cache {self.path} ({type(exc).__name__}: {str(exc)[:120]}); "
                 "the teacher computes its logits instead, and the file is rewritten")
            return {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = batch_key(x)
        cached = self.entries.get(key)
        if cached is not None and cached.shape[0] == x.shape[0]:
            self.hits += 1
            return cached.to(x.device)
        self.misses += 1
        out = self.net(x)
        self.entries[key] = out.detach().to("cpu", copy=True)
        self._unsaved += 1
        return out

    def save(self) -> None:
        """Write the new answers (atomically); a failure is said once and costs only speed."""
        if self.path is None or not self._unsaved:
            return
        merged = {**self._read(), **self.entries} if self.path.is_file() else dict(self.entries)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save({"format": FORMAT, "entries": merged}, self.path)
        except OSError as exc:
            if not self._save_failed:
                warn(f"could not write the teacher-logit cache {self.path} ({exc.strerror or exc}); "
                     "training is unaffected, later students recompute the teacher's logits")
            self._save_failed = True
        else:
            self.entries = merged
            self._unsaved = 0

    def summary(self) -> str:
        total = self.hits + self.misses
        return f"{self.hits} of {total} batches' teacher logits from the cache"
