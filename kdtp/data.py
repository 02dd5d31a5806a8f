"""CIFAR-10 as uint8 tensors: the files on disk (real, downloaded or generated) and the
45k/5k/10k split. The batches cut from them on the training device are ``kdtp.batches``."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .env import data_root

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
SYNTHETIC_MARKER = "KDTP_SYNTHETIC"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# A network pretrained on ImageNet learnt its first filters on inputs normalised with
# ImageNet's statistics; feeding it the same scale keeps those filters meaningful (the
# reference lab, torchvision's weights' own transforms). CIFAR-10's own statistics suit a
# network trained from scratch on CIFAR-10.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {"cifar10": (MEAN, STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
SPLIT_SEED = 42


class DataNotFoundError(FileNotFoundError):
    """Real CIFAR-10 is neither on disk nor downloadable; the message names the ways out."""


# ----------------------------------------------------------------------------- on disk
def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch -> (N, 3, 32, 32) uint8, (N,) int64.

    The official files are Python-2 pickles; ``latin1`` gives str keys for them and the
    bytes keys of other writers are normalised, so both kinds read the same.
    """
    with open(path, "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    return data, labels


def has_cifar_files(folder: Path) -> bool:
    """True when ``folder`` (a ``cifar-10-batches-py``) holds every batch file."""
    return all((folder / f).is_file() for f in (*TRAIN_FILES, TEST_FILE))


def is_synthetic(folder: Path) -> bool:
    return (folder / SYNTHETIC_MARKER).is_file()


def read_cifar_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read a ``cifar-10-batches-py`` folder: train images/labels, test images/labels."""
    parts = [_read_batch(folder / f) for f in TRAIN_FILES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / TEST_FILE)
    return (torch.from_numpy(train_x), torch.from_numpy(train_y),
            torch.from_numpy(test_x), torch.from_numpy(test_y))


def download_cifar10(root: Path) -> Path:
    """Fetch CIFAR-10 with torchvision (md5-checked archive) into ``root``.

    Raises DataNotFoundError with both ways out when the network is not there.
    """
    from torchvision.datasets import CIFAR10

    root.mkdir(parents=True, exist_ok=True)
    try:
        CIFAR10(str(root), train=True, download=True)
        CIFAR10(str(root), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - URLError, socket errors, md5 failure
        raise DataNotFoundError(
            f"CIFAR-10 is not in {root / FOLDER} and could not be downloaded ({exc}). "
            f"Either put the extracted '{FOLDER}' folder inside {root} (or point KDTP_DATA_DIR "
            "at its parent), or run in smoke mode on generated data (KDTP_SMOKE=1 / --smoke)."
        ) from None
    return root / FOLDER


def write_synthetic_cifar10(root: Path | str, n_train: int = 10_000, n_test: int = 2_000,
                            seed: int = 0) -> Path:
    """Write a learnable synthetic CIFAR-10 in the real on-disk format under ``root``.

    Each class has a smooth, left-right symmetric colour prototype (so flips keep the
    label); an image is a blend of its class prototype with a weaker one of another class,
    shifted, rescaled and noised. A small CNN beats chance within seconds, and the blend
    gives the teacher "dark knowledge" (which other class an image resembles) to pass on.
    Returns the ``cifar-10-batches-py`` folder. The marker file tells loaders it is fake.
    """
    if n_train < 5 * 10 or n_test < 10:
        raise ValueError(f"synthetic set too small (n_train={n_train}, n_test={n_test}): "
                         "use at least 50 train and 10 test images")
    final = Path(root) / FOLDER
    final.parent.mkdir(parents=True, exist_ok=True)
    # written in a temp folder, then renamed into place: two notebooks generating the set at
    # once never read each other's half-written files
    folder = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.", suffix=".tmp", dir=final.parent))
    rng = np.random.default_rng(seed)
    half = rng.uniform(0.0, 1.0, size=(10, 3, 8, 4))
    protos = np.concatenate([half, half[..., ::-1]], axis=-1)          # symmetric 8x8
    protos = protos.repeat(4, axis=2).repeat(4, axis=3)                # 32x32 blocks

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, size=n)
        others = (labels + rng.integers(1, 10, size=n)) % 10
        lam = rng.uniform(0.55, 0.85, size=(n, 1, 1, 1))
        imgs = lam * protos[labels] + (1 - lam) * protos[others]
        imgs = imgs * rng.uniform(0.7, 1.3, size=(n, 1, 1, 1)) + rng.uniform(-0.15, 0.15, size=(n, 1, 1, 1))
        imgs += rng.normal(0.0, 0.2, size=imgs.shape)
        shifts = rng.integers(-3, 4, size=(n, 2))
        for i, (dy, dx) in enumerate(shifts):
            imgs[i] = np.roll(imgs[i], (int(dy), int(dx)), axis=(1, 2))
        return (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8).reshape(n, -1), labels

    def dump(name: str, data: np.ndarray, labels: np.ndarray, label: str) -> None:
        entry = {"batch_label": label, "labels": [int(v) for v in labels], "data": data,
                 "filenames": [f"synthetic_{i:05d}.png" for i in range(len(labels))]}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)

    per_batch = n_train // 5
    for i, name in enumerate(TRAIN_FILES):
        data, labels = make(per_batch)
        dump(name, data, labels, f"synthetic training batch {i + 1} of 5")
    data, labels = make(n_test)
    dump(TEST_FILE, data, labels, "synthetic testing batch 1 of 1")
    with open(folder / META_FILE, "wb") as fh:
        pickle.dump({"label_names": list(CLASSES), "num_cases_per_batch": per_batch,
                     "num_vis": 3072, "kdtp_synthetic": True}, fh, protocol=2)
    (folder / SYNTHETIC_MARKER).write_text(
        f"generated by kdtp (seed={seed}); not CIFAR-10 - results on it are not real\n")
    try:
        os.rename(folder, final)
    except OSError:                       # the folder exists: complete (another writer won) or not
        if not has_cifar_files(final):
            shutil.rmtree(final, ignore_errors=True)
            os.replace(folder, final)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- in memory
@dataclass
class CifarData:
    """The three splits as uint8 (N, 3, 32, 32) tensors and int64 labels.

    ``source`` is ``"cifar10"`` or ``"synthetic"``; every checkpoint and result records it,
    so a number measured on generated data can never pass for a real one.
    """
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    @property
    def synthetic(self) -> bool:
        return self.source != "cifar10"

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}

    def fingerprint(self) -> str:
        """A short hash of every split's images *and* labels, in order.

        It enters each run's configuration, so a checkpoint trained on other images (or the
        same images with other labels, or another split) is never loaded as if it were this
        data's. Hashed once per data set (about a second for all 60,000 images).
        """
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            h = hashlib.sha256()
            for t in (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y):
                h.update(str(tuple(t.shape)).encode())
                h.update(t.contiguous().numpy().tobytes())
            cached = self.__dict__["_fingerprint"] = h.hexdigest()[:16]
        return cached


def split_indices(n: int, val_fraction: float = 0.1, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/val indices of an ``n``-image training set: 45,000 / 5,000 for CIFAR-10.

    Same permutation as ``torch.utils.data.random_split(range(n), [n - v, v],
    generator=torch.Generator().manual_seed(42))``, the reference lab's split.
    """
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n - n_val], perm[n - n_val:]


def load_cifar10(data_dir: Path | str | None = None, *, synthetic: bool = False,
                 download: bool = True, train_subset: int | None = None,
                 val_subset: int | None = None, test_subset: int | None = None) -> CifarData:
    """Load CIFAR-10 (or the generated stand-in) and split it 45k/5k/10k with seed 42.

    ``synthetic=True`` uses ``<data_dir>/synthetic``, generating it on first use and never
    touching the network. Otherwise files already in ``<data_dir>/cifar-10-batches-py``
    are read directly, or torchvision downloads them (md5-checked). Subsets take the first
    k images of each split, for smoke runs.
    """
    root = Path(data_dir) if data_dir is not None else data_root()
    if synthetic:
        folder = root / "synthetic" / FOLDER
        if not has_cifar_files(folder):
            write_synthetic_cifar10(folder.parent)
    else:
        folder = root / FOLDER
        if not has_cifar_files(folder):
            if not download:
                raise DataNotFoundError(
                    f"CIFAR-10 is not in {folder}. Put the extracted '{FOLDER}' folder in "
                    f"{root} (or set KDTP_DATA_DIR), or use smoke mode (KDTP_SMOKE=1).")
            folder = download_cifar10(root)
    train_x, train_y, test_x, test_y = read_cifar_folder(folder)
    tr, va = split_indices(len(train_y))
    tr, va = tr[:train_subset], va[:val_subset]
    return CifarData(train_x[tr], train_y[tr], train_x[va], train_y[va],
                     test_x[:test_subset], test_y[:test_subset],
                     source="synthetic" if is_synthetic(folder) else "cifar10")
