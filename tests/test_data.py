"""CIFAR-10 on disk, the split, batch augmentation and the offline errors."""
import pickle
import socket

import numpy as np
import pytest
import torch

from kdtp import data
from kdtp.batches import DeviceLoader, augment, normalize
from kdtp.data import DataNotFoundError, load_cifar10, split_indices, write_synthetic_cifar10


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar10(root, n_train=1000, n_test=200, seed=3)
    return root


def test_synthetic_files_have_the_real_on_disk_format(synthetic_root):
    folder = synthetic_root / "cifar-10-batches-py"
    names = sorted(p.name for p in folder.iterdir())
    for f in [*data.TRAIN_FILES, data.TEST_FILE, data.META_FILE]:
        assert f in names
    with open(folder / "data_batch_1", "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")          # what torchvision does
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (200, 3072)
    assert len(entry["labels"]) == 200 and set(entry["labels"]) <= set(range(10))
    with open(folder / "batches.meta", "rb") as fh:
        assert pickle.load(fh, encoding="latin1")["label_names"] == list(data.CLASSES)


def test_reading_and_labelling_synthetic_data(synthetic_root):
    d = load_cifar10(synthetic_root / "cifar-10-batches-py" / "..", synthetic=False, download=False)
    assert d.source == "synthetic" and d.synthetic          # the marker file is honoured
    assert d.sizes() == {"train": 900, "val": 100, "test": 200}
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (3, 32, 32)


def test_split_is_45k_5k_disjoint_deterministic_and_the_reference_split():
    tr, va = split_indices(50_000)
    assert (len(tr), len(va)) == (45_000, 5_000)
    assert len(set(tr.tolist()) | set(va.tolist())) == 50_000
    tr2, va2 = split_indices(50_000)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    ref_tr, ref_va = torch.utils.data.random_split(range(50_000), [45_000, 5_000],
                                                   generator=torch.Generator().manual_seed(42))
    assert tr.tolist() == list(ref_tr.indices) and va.tolist() == list(ref_va.indices)


def test_subsets_take_the_first_images_of_each_split(synthetic_root):
    d = load_cifar10(synthetic_root, download=False, train_subset=64, val_subset=16, test_subset=8)
    assert d.sizes() == {"train": 64, "val": 16, "test": 8}


def test_augment_is_a_padded_crop_or_its_mirror():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crops = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    assert not torch.equal(out, x)


def test_normalize_resizes_and_uses_channels_last():
    x = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    out = normalize(x, image_size=64)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out[0, 0, 0, 0].item() == pytest.approx((128 / 255 - data.MEAN[0]) / data.STD[0], rel=1e-4)


def test_device_loader_is_deterministic_per_epoch_and_covers_the_set():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 32, 32).contiguous()
    y = torch.arange(100)
    loader = DeviceLoader(x, y, 32, train=True, seed=5)
    loader.set_epoch(1)
    a = [b[1] for b in loader]
    loader.set_epoch(1)
    b = [b[1] for b in loader]
    loader.set_epoch(2)
    c = [b[1] for b in loader]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    assert len(loader) == 3 and sum(len(t) for t in a) == 96          # drop_last in training
    test_loader = DeviceLoader(x, y, 32, train=False)
    assert torch.equal(torch.cat([t for _, t in test_loader]), y)      # all, in order


def test_missing_data_offline_gives_one_error_naming_both_ways_out(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable (blocked by the test)")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert "cifar-10-batches-py" in message and str(tmp_path) in message
    assert "KDTP_SMOKE=1" in message
    with pytest.raises(DataNotFoundError, match="smoke"):
        load_cifar10(tmp_path, download=False)


def test_synthetic_mode_never_touches_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("smoke data must not use the network")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    d = load_cifar10(tmp_path, synthetic=True, train_subset=10)
    assert d.source == "synthetic" and len(d.train_y) == 10
