"""``python -m kdtp bench``: how fast is one distillation training step, and why.

Two loops do the same work (ResNet50 teacher -> ResNet18 student, CIFAR stem, 32 px, KD on
logits, SGD) on the same images:

* **kdtp**: the code the notebooks run. Images live in a ``DeviceLoader`` (one uint8
  tensor, crop/flip/normalise on whole batches), the step goes through ``kdtp.train.fit``
  with a ``LogitKD`` strategy, at ``pick_precision`` (bf16 autocast on AMX CPUs,
  AMD CPUs with AVX512-BF16 and Ampere+ GPUs, fp16 + gradient scaler on T4/V100), channels_last.
* **reference**: the loop as the seed notebooks wrote it. A torchvision ``CIFAR10``
  yielding PIL images, ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``,
  ``ToTensor``, ``Normalize``, a ``DataLoader`` with 2 workers, fp32, contiguous tensors,
  the teacher run under ``no_grad`` on every batch.

Both are timed after warm-up steps (first steps build kernels and start workers), over
the same number of steps, in one process. The loaders are also timed alone, so the report
shows what batch preparation costs in each loop. Synthetic data is generated in a temp
folder unless ``--data-dir`` names a folder holding ``cifar-10-batches-py``: no network.

Speed targets live here and in ``benchmarks/RESULTS.md``, never in timed unit tests.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .batches import DeviceLoader
from .data import CLASSES, FOLDER, has_cifar_files, load_cifar10, write_synthetic_cifar10
from .env import ConfigError, pick_device, pick_precision, seed_everything
from .recipes import get_recipe
from .runs import RUNS, TEACHER, build_network, build_strategy
from .train import fit, make_optimizer, make_scheduler

WARMUP_STEPS = 3
TEACHER_ARCH, STUDENT_ARCH = "resnet50", "resnet18"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    """Peak resident memory of this process so far (``ru_maxrss`` is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _children_rss_mb() -> float:
    """Largest peak RSS among finished child processes (the DataLoader workers)."""
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class TimedLoader(DeviceLoader):
    """A ``DeviceLoader`` that notes the clock once ``warmup`` steps are done and again
    after the last step, so validation and set-up inside ``fit`` stay out of the figure."""

    warmup = 0
    started = ended = None

    def __iter__(self):
        batches = super().__iter__()
        for i in range(len(self)):
            if i == self.warmup:
                _sync(self.device)
                self.started = time.perf_counter()
            yield next(batches)
        _sync(self.device)
        self.ended = time.perf_counter()


def _prepare_data(data_dir: Path | None, needed_train: int, tmp: Path):
    """CifarData from ``data_dir`` (real or synthetic files) or a freshly generated set."""
    if data_dir is None:
        # enough training images for every step after the 45k/5k-style 10% val split
        n_train = max(5_000, 5 * math.ceil(needed_train / 0.9 / 5) + 50)
        write_synthetic_cifar10(tmp, n_train=n_train, n_test=100)
        root = tmp
    else:
        root = Path(data_dir)
        if not has_cifar_files(root / FOLDER) and has_cifar_files(root) and root.name == FOLDER:
            root = root.parent
    return root, load_cifar10(root, download=False)


def _kdtp_loop(data, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    """The notebooks' path: DeviceLoader -> fit(LogitKD) at pick_precision, channels_last."""
    precision = pick_precision(device)
    recipe = get_recipe("fast", smoke=False, batch_size=batch, pretrained=False, epochs=1,
                        teacher_epochs=1)
    teacher = build_network(RUNS[TEACHER], recipe, device).eval()
    student = build_network(RUNS["student_scratch_kd_scores"], recipe, device)
    strategy = build_strategy(RUNS["student_scratch_kd_scores"], recipe, student, teacher)
    n = (warmup + steps) * batch
    train = TimedLoader(data.train_x[:n], data.train_y[:n], batch, train=True, device=device,
                        image_size=recipe.image_size, seed=recipe.seed)
    train.warmup = warmup
    val = DeviceLoader(data.val_x[:batch], data.val_y[:batch], batch, train=False, device=device,
                       image_size=recipe.image_size)
    params = [p for p in strategy.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum)
    # at least 10 scheduled steps: one-cycle needs its warm-up to end after step 1
    scheduler = make_scheduler(optimizer, recipe.schedule, max(len(train), 10), recipe.warmup_fraction)
    fit(strategy, train, val, optimizer=optimizer, scheduler=scheduler, epochs=1,
        precision=precision, progress=False, desc="bench")
    seconds = train.ended - train.started

    # what the device-side loader costs on its own: the same batches, no model
    loader = DeviceLoader(data.train_x[:n], data.train_y[:n], batch, train=True, device=device,
                          image_size=recipe.image_size, seed=1)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    _sync(device)
    loader_seconds = time.perf_counter() - t0
    # the whole 45,000-image training split as one uint8 tensor, as the notebooks hold it
    full_set_mb = 45_000 * 3 * 32 * 32 / 1e6
    del strategy, student, teacher, optimizer
    return {"precision": precision, "seconds": seconds, "loader_seconds": loader_seconds,
            "device_set_mb_45k": full_set_mb}


class _FolderCIFAR10:
    """torchvision's CIFAR10 reading the files in place, without its md5 check.

    The md5 sums torchvision knows are those of the official archive's files; the
    synthetic set (and re-encoded copies) have other bytes, so the check would refuse
    them although the format is the same.
    """

    @staticmethod
    def make(root: Path, train: bool, transform):
        from torchvision.datasets import CIFAR10

        class _NoCheckCIFAR10(CIFAR10):
            def _check_integrity(self) -> bool:
                return has_cifar_files(Path(self.root) / self.base_folder)

            def _load_meta(self) -> None:
                self.classes = list(CLASSES)
                self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        return _NoCheckCIFAR10(str(root), train=train, transform=transform, download=False)


def _reference_loop(root: Path, batch: int, steps: int, warmup: int, device: torch.device,
                    workers: int = 2) -> dict:
    """The seed notebooks' loop: PIL transforms in DataLoader workers, fp32, online teacher."""
    from torchvision import transforms
    from torchvision.models import resnet18, resnet50

    from .data import MEAN, STD, split_indices

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    full = _FolderCIFAR10.make(root, train=True, transform=transform)
    train_idx, _ = split_indices(len(full))
    dataset = torch.utils.data.Subset(full, train_idx.tolist())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True)

    def cifar_resnet(ctor):
        model = ctor(num_classes=10)
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
        return model.to(device)

    seed_everything(0)
    teacher = cifar_resnet(resnet50).eval()
    student = cifar_resnet(resnet18).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    T, alpha = 4.0, 0.5

    def step(images, labels):
        images, labels = images.to(device), labels.to(device)
        with torch.no_grad():
            teacher_logits = teacher(images)
        logits = student(images)
        soft = F.kl_div(F.log_softmax(logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                        reduction="batchmean") * T * T
        loss = alpha * F.cross_entropy(logits, labels) + (1 - alpha) * soft
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    it = iter(loader)
    for _ in range(warmup):
        step(*next(it))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    _sync(device)
    seconds = time.perf_counter() - t0
    del it

    # the same DataLoader alone: what PIL batch preparation delivers with nothing else running
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    loader_seconds = time.perf_counter() - t0
    del it, loader
    return {"seconds": seconds, "loader_seconds": loader_seconds, "workers": workers}


def run(steps: int = 20, batch: int = 128, data_dir: Path | None = None,
        warmup: int = WARMUP_STEPS, device: torch.device | str | None = None,
        reference: bool = True) -> dict:
    """Measure both loops and return every figure as a flat dict (what ``--json`` prints)."""
    device = torch.device(device) if device is not None else pick_device()
    load_before = os.getloadavg()
    needed = (warmup + steps) * batch
    with tempfile.TemporaryDirectory(prefix="kdtp-bench-") as tmp:
        root, data = _prepare_data(data_dir, needed, Path(tmp))
        if needed > len(data.train_y):
            raise ConfigError(f"{warmup} warm-up + {steps} steps of batch {batch} need {needed} "
                              f"training images; the {data.source} data in {root} has "
                              f"{len(data.train_y)}. Use fewer --steps or a smaller --batch.")
        kd = _kdtp_loop(data, batch, steps, warmup, device)
        kdtp_rss = _rss_mb()
        ref = _reference_loop(root, batch, steps, warmup, device) if reference else None
    images = steps * batch
    out = {
        "kdtp_images_per_s": images / kd["seconds"],
        "reference_images_per_s": images / ref["seconds"] if ref else None,
        "ratio": (ref["seconds"] / kd["seconds"]) if ref else None,
        "peak_rss_mb": _rss_mb(),
        "kdtp_peak_rss_mb": kdtp_rss,
        "reference_worker_peak_rss_mb": _children_rss_mb() if ref else None,
        "kdtp_step_ms": 1000 * kd["seconds"] / steps,
        "reference_step_ms": 1000 * ref["seconds"] / steps if ref else None,
        "kdtp_loader_images_per_s": images / kd["loader_seconds"],
        "kdtp_loader_share": kd["loader_seconds"] / kd["seconds"],
        "reference_loader_images_per_s": images / ref["loader_seconds"] if ref else None,
        "device_set_mb_45k": kd["device_set_mb_45k"],
        "precision": kd["precision"],
        "reference_precision": "fp32",
        "device": device.type if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": _cpu_name(), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "steps": steps, "warmup": warmup, "batch": batch, "data": data.source,
        "teacher": TEACHER_ARCH, "student": STUDENT_ARCH, "image_size": 32,
        "torch": str(torch.__version__), "loadavg_before": round(load_before[0], 2),
        "loadavg_after": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return out


def format_report(r: dict) -> str:
    ref = r["reference_images_per_s"] is not None
    lines = [
        f"kdtp bench | {r['teacher']} -> {r['student']}, CIFAR stem, {r['image_size']} px, batch "
        f"{r['batch']}, {r['steps']} steps after {r['warmup']} warm-up | {r['device']} ({r['cpu']}, "
        f"{r['threads']} threads) | data: {r['data']}",
        f"  kdtp      (DeviceLoader + fit/LogitKD, {r['precision']}, channels_last): "
        f"{r['kdtp_images_per_s']:8.1f} img/s  ({r['kdtp_step_ms']:.0f} ms/step)",
    ]
    if ref:
        lines.append(
            f"  reference (PIL DataLoader x2 workers, fp32, online teacher):      "
            f"{r['reference_images_per_s']:8.1f} img/s  ({r['reference_step_ms']:.0f} ms/step)")
        lines.append(f"  ratio kdtp / reference: {r['ratio']:.2f}x")
    lines.append(
        f"  batch preparation alone: DeviceLoader {r['kdtp_loader_images_per_s']:.0f} img/s "
        f"({100 * r['kdtp_loader_share']:.1f}% of a kdtp step; the 45k training split costs "
        f"{r['device_set_mb_45k']:.0f} MB on the device)"
        + (f", PIL DataLoader {r['reference_loader_images_per_s']:.0f} img/s" if ref else ""))
    lines.append(f"  peak RSS: {r['peak_rss_mb']:.0f} MB (after kdtp loop {r['kdtp_peak_rss_mb']:.0f} MB"
                 + (f"; largest DataLoader worker {r['reference_worker_peak_rss_mb']:.0f} MB)" if ref else ")"))
    lines.append(f"  load average (1 min) before {r['loadavg_before']}, after {r['loadavg_after']}")
    return "\n".join(lines)


def main(steps: int = 20, batch: int = 128, data_dir: Path | None = None, as_json: bool = False) -> int:
    """CLI entry: print the report (and with ``as_json`` one JSON object as the last line)."""
    from .data import DataNotFoundError

    try:
        result = run(steps=steps, batch=batch, data_dir=data_dir)
    except DataNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    print(format_report(result), flush=True)
    if as_json:
        print(json.dumps(result), flush=True)
    return 0
