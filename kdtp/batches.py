"""Batches built on the training device from ``kdtp.data``'s uint8 tensors: augmentation,
normalisation and ``DeviceLoader``.

Why no DataLoader: per-image PIL transforms in worker processes were the bottleneck of the
seed notebooks (26 img/s on 2 cores). Here the whole set is one uint8 tensor on the training
device (150 MB), an epoch is a permutation, and crop/flip/normalise/resize are a few tensor
ops on a whole batch (the airbench recipe).
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from .data import NORMALIZATIONS

CROP_PAD = 4        # "crop": pad 4 and crop back to 32 (torchvision's RandomCrop(32, padding=4))
TRANSLATE_PAD = 2   # "airbench": shifts of -2..2 pixels


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = CROP_PAD) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, on a whole uint8 batch.

    Same distribution as torchvision's ``RandomCrop(32, padding=4)`` +
    ``RandomHorizontalFlip()``, done as one gather instead of B PIL calls.
    """
    b, dev = x.shape[0], x.device
    dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    return crop_at(x, dy, dx, flip, pad)


def crop_at(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
            pad: int = CROP_PAD) -> torch.Tensor:
    """``augment`` with its draws given: image i cropped at (dy[i], dx[i]) of the zero-padded
    image, mirrored where ``flip[i]``."""
    b, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]          # B,H,1
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]          # B,1,W
    # a flipped crop reads column dx + (w-1-j) where the plain one reads dx + j
    cols = torch.where(flip[:, None, None], (2 * dx[:, None, None] + w - 1) - cols, cols)
    idx_b = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_b, rows, cols]                      # B,H,W,C
    return out.permute(0, 3, 1, 2)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices past either edge mirrored back inside (reflect padding: -1 -> 1, size -> size-2)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def translate(x: torch.Tensor, generator: torch.Generator, flip: torch.Tensor,
              pad: int = TRANSLATE_PAD) -> torch.Tensor:
    """airbench's augmentation on a uint8 batch: each image shifted by -pad..pad pixels in
    each direction with reflect padding, and mirrored where ``flip`` is True (the caller
    decides the flips: ``DeviceLoader`` alternates them by epoch). One gather, as ``augment``."""
    b, dev = x.shape[0], x.device
    dy = torch.randint(-pad, pad + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(-pad, pad + 1, (b,), device=dev, generator=generator)
    return translate_by(x, dy, dx, flip)


def translate_by(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``translate`` with its draws given: image i shifted by (dy[i], dx[i]), reflect padding."""
    b, _, h, w = x.shape
    dev = x.device
    rows = _reflect(dy[:, None] + torch.arange(h, device=dev), h)[:, :, None]      # B,H,1
    cols = _reflect(dx[:, None] + torch.arange(w, device=dev), w)[:, None, :]      # B,1,W
    # the crop of the mirrored image reads column w-1-c where the plain one reads c
    cols = torch.where(flip.to(dev)[:, None, None], (w - 1) - cols, cols)
    idx_b = torch.arange(b, device=dev)[:, None, None]
    out = x.permute(0, 2, 3, 1)[idx_b, rows, cols]                                  # B,H,W,C
    return out.permute(0, 3, 1, 2)


AUGMENTATIONS = ("crop", "airbench")


def normalize(x: torch.Tensor, image_size: int = 32, normalization: str = "cifar10") -> torch.Tensor:
    """uint8 batch -> normalised float batch, resized if the recipe asks for more pixels.

    ``normalization`` names the mean/std: ``"cifar10"`` (CIFAR-10's own) or ``"imagenet"``
    (what ImageNet-pretrained weights were trained with; a recipe's ``normalization``).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is unknown; choose one of: "
                         f"{', '.join(NORMALIZATIONS)}")
    mean_values, std_values = NORMALIZATIONS[normalization]
    mean = torch.tensor(mean_values, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std_values, device=x.device).view(1, 3, 1, 1)
    out = (x.float().div_(255) - mean) / std
    if image_size != out.shape[-1]:
        out = F.interpolate(out, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


class DeviceLoader:
    """Batches of (normalised images, labels) cut from uint8 tensors held on ``device``.

    Each epoch's order and augmentation come from ``seed`` and the epoch number alone
    (``set_epoch``), so a run resumed at epoch k sees exactly the batches an
    uninterrupted run would have seen. With ``shared_augmentation`` the augmentation comes
    from the epoch alone: in epoch k image i is shifted and flipped the same way whatever
    the seed, and seeds differ in initialisation and order only. Runs of other seeds then
    show a frozen teacher the very images it has answered before, so its answers are reused
    (``kdtp.teacher_cache``) instead of computed once per seed.
    """

    # the stream every seed draws its augmentation from under ``shared_augmentation``
    SHARED_AUGMENTATION_SEED = 0

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 train: bool, device: torch.device | str = "cpu", image_size: int = 32,
                 seed: int = 0, drop_last: bool | None = None, normalization: str = "cifar10",
                 augmentation: str = "crop", shared_augmentation: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.image_size = image_size
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r} is unknown; choose one of: "
                             f"{', '.join(NORMALIZATIONS)}")
        self.normalization = normalization
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation={augmentation!r} is unknown; choose one of: {', '.join(AUGMENTATIONS)}")
        # "crop": pad 4 and crop, random flip (torchvision's classic pair). "airbench": translate
        # by up to 2 pixels, and alternating flip: each image gets a fixed random flip, mirrored
        # every other epoch, so consecutive epochs see both sides (Jordan, airbench, 2024)
        self.augmentation = augmentation
        self.shared_augmentation = bool(shared_augmentation)
        self._base_flips: torch.Tensor | None = None     # drawn on first use (base_flips)
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        if self.drop_last and len(self.labels) < batch_size:
            self.drop_last = False  # tiny (smoke) sets: one partial batch beats none
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _augmentation_seed(self) -> int:
        return self.SHARED_AUGMENTATION_SEED if self.shared_augmentation else self.seed

    def base_flips(self) -> torch.Tensor:
        """Each image's flip at even epochs (the "airbench" augmentation), from the seed alone
        (the shared stream's under ``shared_augmentation``), so a resumed run flips as an
        uninterrupted one."""
        if self._base_flips is None:
            gen = torch.Generator(device=self.device).manual_seed(self._augmentation_seed() * 100_003 - 1)
            self._base_flips = torch.rand(len(self.labels), device=self.device, generator=gen) < 0.5
        return self._base_flips

    def _epoch_draws(self) -> tuple[torch.Tensor, ...]:
        """Every image's shift (and, for "crop", flip) for this epoch, from the epoch alone:
        the draws of ``shared_augmentation``, indexed by image."""
        n, dev = len(self.labels), self.device
        gen = torch.Generator(device=dev).manual_seed(self.SHARED_AUGMENTATION_SEED * 100_003 + self.epoch
                                                      + 50_000)
        if self.augmentation == "airbench":
            return (torch.randint(-TRANSLATE_PAD, TRANSLATE_PAD + 1, (n,), device=dev, generator=gen),
                    torch.randint(-TRANSLATE_PAD, TRANSLATE_PAD + 1, (n,), device=dev, generator=gen))
        return (torch.randint(0, 2 * CROP_PAD + 1, (n,), device=dev, generator=gen),
                torch.randint(0, 2 * CROP_PAD + 1, (n,), device=dev, generator=gen),
                torch.rand(n, device=dev, generator=gen) < 0.5)

    def _shared_images(self) -> torch.Tensor:
        """Under ``shared_augmentation`` with ``drop_last``: the images this epoch shows, the
        same for every seed (the remainder of the batch size left out is chosen by the epoch,
        not by each seed's order), so another seed's batches hold only images shown before."""
        n, dev = len(self.labels), self.device
        gen = torch.Generator(device=dev).manual_seed(self.SHARED_AUGMENTATION_SEED * 100_003 + self.epoch
                                                      + 70_000)
        return torch.randperm(n, device=dev, generator=gen)[:n - n % self.batch_size]

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + self.epoch)
        order = (torch.randperm(n, device=self.device, generator=gen) if self.train
                 else torch.arange(n, device=self.device))
        draws = self._epoch_draws() if self.train and self.shared_augmentation else None
        if draws is not None and self.drop_last and n % self.batch_size:
            order = self._shared_images()[order[order < n - n % self.batch_size]]
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.train and self.augmentation == "airbench":
                flips = self.base_flips()[idx] ^ bool(self.epoch % 2)
                x = (translate_by(x, draws[0][idx], draws[1][idx], flips) if draws is not None
                     else translate(x, gen, flips))
            elif self.train:
                x = (crop_at(x, draws[0][idx], draws[1][idx], draws[2][idx]) if draws is not None
                     else augment(x, gen))
            yield normalize(x, self.image_size, self.normalization), self.labels[idx]
