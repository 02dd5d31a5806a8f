"""A frozen teacher's logits computed once per image and reused by every student that shows it that image.

Why: in the CPU recipes a KD student's epoch costs up to twice a labels-only epoch, and the
extra is the frozen teacher's forward pass. Runs with the same seed see the very same
batches (``kdtp.batches.DeviceLoader``: order and augmentation come from the seed and the
epoch alone), so the students of other widths in 11, the ensembles of 10, the fine-tunes
of 12 and, in the ImageNet recipes, 05's scratch KD student all ask the lab's teacher what
03's student asked it. With a recipe's ``shared_augmentation`` (``cpu_air``) the students of
*other seeds* show it the same augmented images too, in another order and other batches: the
extra pairs of 06 and a sweep's seeds. So the answers are kept per image, beside the
checkpoints (``<run folder>/teacher_logits/``), keyed by a digest of the image's bytes, and
a batch is answered from the cache only when every one of its images is there, byte for byte.
A frozen (eval-mode) network answers each image on its own: on a CPU its logits for an image
are bit for bit the same in any batch (checked for the kit's networks in fp32 and bf16, on
AVX2 and AVX-512 kernels), so a student then gets exactly what the live teacher gives
(``tests/test_teacher_cache.py`` trains one both ways and compares the weights); on a GPU,
other batches may round differently in the last bit. Any other batch, or a missing,
unreadable or foreign file, means the teacher runs as before; a cache never fails or
changes a run. ``KDTP_TEACHER_CACHE=0`` turns it off.

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
FORMAT = 2     # 1 (until 2026-12-06) kept whole batches; 2 keeps images
KEY_BYTES = 16


def enabled() -> bool:
    """False when ``KDTP_TEACHER_CACHE`` is 0/false/no/off (to time or debug a live teacher)."""
    return os.environ.get("KDTP_TEACHER_CACHE", "1").strip().lower() not in {"0", "false", "no", "off"}


def row_keys(x: torch.Tensor) -> list[bytes]:
    """One digest per image of the batch (its shape, dtype and bytes): equal keys, identical images.

    About 13 ms for a batch of 1024 CIFAR images on one core: a few seconds a run, against
    the teacher's forward pass it saves."""
    data = x.detach().contiguous().cpu().reshape(len(x), -1).view(torch.uint8).numpy()
    head = hashlib.blake2b(f"{tuple(x.shape[1:])}|{x.dtype}|".encode(), digest_size=KEY_BYTES)
    keys = []
    for row in data:
        h = head.copy()
        h.update(memoryview(row))
        keys.append(h.digest())
    return keys


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
    """``net`` (a frozen teacher) with its answers remembered per image (see the module docstring).

    ``hits`` and ``misses`` count the batches served from the cache and computed live.
    ``save()`` writes what was learnt, merged with what other processes wrote meanwhile.
    """

    def __init__(self, net: nn.Module, path: Path | None = None):
        super().__init__()
        self.net = net
        self.path = Path(path) if path is not None else None
        self.entries: dict[bytes, torch.Tensor] = self._read() if self.path is not None else {}
        self.hits = self.misses = 0
        self._unsaved = 0
        self._save_failed = False

    def _read(self) -> dict[bytes, torch.Tensor]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            keys, values = payload.get("keys"), payload.get("logits")
            if (payload.get("format") != FORMAT or not isinstance(keys, torch.Tensor)
                    or not isinstance(values, torch.Tensor) or keys.dtype != torch.uint8
                    or keys.shape[1:] != (KEY_BYTES,) or len(keys) != len(values)):
                raise ValueError("not a kdtp teacher-logit cache of this version")
            return dict(zip((bytes(k) for k in keys.numpy()), values.unbind(0)))
        except Exception as exc:   # a cache is an optimisation: never fail a run over it
            warn(f"ignored the teacher-logit cache {self.path} ({type(exc).__name__}: {str(exc)[:120]}); "
                 "the teacher computes its logits instead, and the file is rewritten")
            return {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = row_keys(x)
        rows = [self.entries.get(k) for k in keys]
        if all(r is not None for r in rows) and len({(r.shape, r.dtype) for r in rows}) == 1:
            self.hits += 1
            return torch.stack(rows).to(x.device)
        self.misses += 1
        out = self.net(x)
        self.entries.update(zip(keys, out.detach().to("cpu", copy=True).unbind(0)))
        self._unsaved += 1
        return out

    def save(self) -> None:
        """Write the new answers (atomically); a failure is said once and costs only speed."""
        if self.path is None or not self._unsaved:
            return
        merged = {**self._read(), **self.entries} if self.path.is_file() else dict(self.entries)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = torch.frombuffer(bytearray(b"".join(merged)), dtype=torch.uint8).reshape(-1, KEY_BYTES)
            atomic_save({"format": FORMAT, "keys": keys, "logits": torch.stack(list(merged.values()))}, self.path)
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
