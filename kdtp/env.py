"""Where we run: Colab or not, Drive, folders, device, precision, seeding, smoke mode.

Every other module asks this one instead of looking at ``sys.modules`` or ``os.environ``
itself, so a student's notebook, the CLI and the tests all agree on where checkpoints live
and whether this is a smoke run.
"""
from __future__ import annotations

import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

COLAB_DRIVE_MOUNT = Path("/content/drive")
COLAB_CKPT_DIR = COLAB_DRIVE_MOUNT / "MyDrive" / "KD_checkpoints"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting the user typed (flag, ``--set`` value, environment variable) is invalid.

    The CLI turns it into one line on stderr and exit code 2; in a notebook it is an
    ordinary exception whose message says what to type instead.
    """


def in_colab() -> bool:
    """True inside Google Colab (its runtime always has ``google.colab`` imported)."""
    return "google.colab" in sys.modules


def smoke_mode() -> bool:
    """Smoke mode (``KDTP_SMOKE=1``): synthetic data, tiny subsets, one short epoch.

    It is what CI and nbval run; anything it produces is labelled "smoke".
    """
    return _switch("KDTP_SMOKE", "1 (smoke mode) or 0 / unset it (real run)")


def _switch(var: str, choices: str) -> bool:
    """An on/off environment variable: 1/true/yes/on, 0/false/no/off or unset; else a ConfigError."""
    raw = os.environ.get(var, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{var}={os.environ[var]!r} is not understood: set it to {choices}")


def load_only_mode() -> bool:
    """``KDTP_LOAD_ONLY=1``: every ``train_or_load`` loads or downloads, and fails rather than train.

    The switch ``python -m kdtp rehearse`` sets for the notebooks it runs, so that a run which
    would train in class fails the rehearsal, by name, the day before.
    """
    return _switch("KDTP_LOAD_ONLY", "1 (never train, only load or download) or 0 / unset it")


def project_root() -> Path:
    """The kit's checkout when kdtp runs from one (editable install), else the cwd.

    Notebooks run with ``notebooks/`` as their cwd; anchoring relative folders at the
    checkout keeps ``./checkpoints`` in one place whichever notebook wrote it.
    """
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "kdtp").is_dir():
        return here
    return Path.cwd()


def _dir_from_env(var: str) -> Path | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    path = Path(raw).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{var}={raw!r} points at a file, not a folder: "
                          f"give {var} a folder path (it is created if missing)")
    return path


def mount_drive() -> Path | None:
    """Mount Google Drive on Colab (asks the student once); elsewhere do nothing.

    Returns the checkpoint folder on Drive, or None when Drive is unavailable (mount
    refused or failed, Drive full or read-only); the kit then keeps checkpoints locally
    and says so rather than crash the lab.
    """
    if not in_colab():
        return None
    try:
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount(str(COLAB_DRIVE_MOUNT))
    except Exception as exc:  # noqa: BLE001 - any Drive failure must fall back, not crash
        warnings.warn(f"Google Drive could not be mounted ({exc}); checkpoints stay in "
                      f"{local_checkpoint_root()} and are lost when the runtime is recycled.",
                      stacklevel=2)
        return None
    if not COLAB_DRIVE_MOUNT.joinpath("MyDrive").is_dir():
        warnings.warn(f"Google Drive was mounted but {COLAB_DRIVE_MOUNT / 'MyDrive'} is missing; "
                      f"checkpoints stay in {local_checkpoint_root()}.", stacklevel=2)
        return None
    if not _writable(COLAB_CKPT_DIR):
        warnings.warn(f"{COLAB_CKPT_DIR} is not writable (Drive full, over quota or read-only); "
                      f"checkpoints stay in {local_checkpoint_root()} and are lost when the "
                      "runtime is recycled. Free some Drive space and run mount_drive() again.",
                      stacklevel=2)
        return None
    return COLAB_CKPT_DIR


def _writable(folder: Path) -> bool:
    """Create ``folder`` and prove a file can be written there (Drive can be full or RO).

    The probe is written, flushed and fsynced: a full Drive often accepts ``open`` and
    fails only when the bytes are pushed out.
    """
    probe = folder / f".kdtp-write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        return True
    except OSError:
        return False
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def local_checkpoint_root() -> Path:
    """``<project>/checkpoints``: where checkpoints go when nothing else is asked or possible."""
    return project_root() / "checkpoints"


def _under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def checkpoint_root() -> Path:
    """The folder every checkpoint lives under (before recipe/smoke sub-folders).

    ``KDTP_CKPT_DIR`` wins; on Colab with Drive mounted and writable, Drive; otherwise
    ``<project>/checkpoints``. A Drive that is not mounted, read-only or full gives a
    warning and the local folder, never a crash.
    """
    from_env = _dir_from_env("KDTP_CKPT_DIR")
    local = local_checkpoint_root()
    drive_mounted = COLAB_DRIVE_MOUNT.joinpath("MyDrive").is_dir()
    if from_env is not None:
        # writing under /content/drive before Drive is mounted would create local folders
        # there, and Colab then refuses to mount Drive onto the non-empty mount point
        if in_colab() and not drive_mounted and _under(from_env, COLAB_DRIVE_MOUNT):
            warnings.warn(f"KDTP_CKPT_DIR={from_env} is on Google Drive, which is not mounted; "
                          f"checkpoints go to {local} and are lost if the runtime resets. Run "
                          "kdtp.env.mount_drive() first to keep them.", stacklevel=2)
            return local
        return from_env
    if in_colab():
        if drive_mounted:
            if _writable(COLAB_CKPT_DIR):
                return COLAB_CKPT_DIR
            warnings.warn(f"{COLAB_CKPT_DIR} is not writable (Drive full, over quota or read-only); "
                          f"checkpoints go to {local} and are lost if the runtime resets.",
                          stacklevel=2)
        else:
            warnings.warn("Google Drive is not mounted; checkpoints go to "
                          f"{local} and are lost if the runtime resets. Run "
                          "kdtp.env.mount_drive() first to keep them.", stacklevel=2)
    return local


def data_root() -> Path:
    """Where CIFAR-10 lives: ``KDTP_DATA_DIR`` or ``<project>/data``."""
    return _dir_from_env("KDTP_DATA_DIR") or project_root() / "data"


def figures_root() -> Path:
    """Where figures go: ``KDTP_FIGURES_DIR`` or ``<project>/figures``."""
    return _dir_from_env("KDTP_FIGURES_DIR") or project_root() / "figures"


def pick_device(prefer: str | None = None) -> torch.device:
    """cuda, else mps, else cpu; ``prefer`` (or ``KDTP_DEVICE``) forces one."""
    choice = (prefer or os.environ.get("KDTP_DEVICE") or "").strip().lower()
    if choice:
        if choice not in {"cpu", "cuda", "mps"}:
            raise ConfigError(f"device {choice!r} is unknown: use cpu, cuda or mps")
        if choice == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for but no CUDA GPU is visible: "
                              "use cpu, or on Colab pick Runtime > Change runtime type > GPU")
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
CPUINFO = Path("/proc/cpuinfo")  # the Linux fallback for AMX detection (tests point it elsewhere)


def _cpuinfo_field(name: str, path: Path | None = None) -> str:
    """The first ``name`` line of /proc/cpuinfo ("" off Linux or when it cannot be read)."""
    if not sys.platform.startswith("linux"):
        return ""
    try:
        text = (path or CPUINFO).read_text(errors="replace")
    except OSError:
        return ""
    return next((ln.partition(":")[2].strip() for ln in text.splitlines()
                 if ln.partition(":")[0].strip() == name), "")


def _cpu_flags(path: Path | None = None) -> set[str]:
    """The ``flags`` of /proc/cpuinfo (empty off Linux or when it cannot be read)."""
    return set(_cpuinfo_field("flags", path).split())


def cpu_is_amd_with_avx512_bf16() -> bool:
    """An AMD CPU with native bf16 dot products (AVX512-BF16: Zen 4 and later).

    Unlike Intel's AVX512-BF16 CPUs without AMX, bf16 is not slower than fp32 here: on a 2-core
    Zen 5 (EPYC, 2026-12-02) a training step at batch 256 ran 1.5-2x faster under bf16 autocast
    (air_large 1377 -> 2190 img/s, cnn_large 666 -> 1348), the cpu_air students' runs were faster,
    and its teacher's epochs at batch 1024 were no faster (37-44 s either way; benchmarks/RESULTS.md).
    Zen 4 was not measured.
    """
    return _cpuinfo_field("vendor_id") == "AuthenticAMD" and "avx512_bf16" in _cpu_flags()


def _cpuinfo_has_amx(path: Path | None = None) -> bool:
    """True when the ``flags`` line of /proc/cpuinfo lists both ``amx_tile`` and ``amx_bf16``."""
    return {"amx_tile", "amx_bf16"} <= _cpu_flags(path)


def cpu_has_amx() -> bool:
    """AMX tiles (Sapphire Rapids and later Xeons): the only CPUs where bf16 is faster.

    ``torch.cpu._is_amx_tile_supported`` (torch >= 2.3, private) also checks that the OS
    enabled the tiles; without it, the /proc/cpuinfo flags on Linux, else False.
    """
    probe = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    if callable(probe):
        try:
            return bool(probe())
        except Exception:  # noqa: BLE001 - a private probe may break in any torch release
            pass
    return _cpuinfo_has_amx()


def cpu_class() -> str:
    """``cpu-amx``, ``cpu-amd-avx512bf16``, ``cpu-avx512bf16`` (Intel without AMX), ``cpu-avx2`` or
    ``cpu``: what sets a CPU's training speed
    here (see ``pick_precision``); the device classes of benchmarks/RESULTS.md."""
    if cpu_has_amx():
        return "cpu-amx"
    if cpu_is_amd_with_avx512_bf16():
        return "cpu-amd-avx512bf16"
    flags = _cpu_flags()
    return "cpu-avx512bf16" if "avx512_bf16" in flags else "cpu-avx2" if "avx2" in flags else "cpu"


def pick_precision(device: torch.device) -> str:
    """The precision ``fit`` trains at on ``device``: chosen by what is fast, not by what runs.

    CUDA: bf16 on compute capability >= 8 (Ampere+): fp32's range, no loss scaling; fp16
    with a gradient scaler below (T4, V100), whose tensor cores do fp16 only.

    CPU: bf16 where it was measured faster: with AMX (about 3x fp32), and on AMD CPUs with
    AVX512-BF16 (Zen 4+; a step 1.5-2x faster on a Zen 5 at batch 256, the
    cpu_air teacher's epochs no faster at batch 1024). oneDNN "supports" bf16 on more CPUs, but there it
    is slower: on an Intel Xeon with AVX512-BF16 and no AMX a distillation step ran at 27 img/s
    in bf16 vs 33 in fp32 (cnn_small 1284 vs 1532 img/s), and on AVX2-only CPUs bf16 is
    emulated, about 10x slower. So fp32 everywhere else, and on other devices.

    ``KDTP_PRECISION`` (fp32, bf16, fp16 or auto) forces a choice; fp16 only on CUDA, since
    CPU autocast in fp16 has neither fast kernels nor the gradient scaler it needs.
    """
    raw = os.environ.get("KDTP_PRECISION", "").strip().lower()
    forced = raw or "auto"
    if forced not in PRECISION_CHOICES:
        raise ConfigError(f"KDTP_PRECISION={os.environ['KDTP_PRECISION']!r} is not understood: "
                          f"use one of {', '.join(PRECISION_CHOICES)}")
    if forced == "fp16" and device.type != "cuda":
        raise ConfigError(f"KDTP_PRECISION=fp16 needs a CUDA GPU, not {device.type}: fp16 is "
                          "for GPUs with fp16-only tensor cores; on a CPU use bf16 (fast "
                          "only with AMX) or fp32, or unset it (auto)")
    if forced != "auto":
        return forced
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_amx() or cpu_is_amd_with_avx512_bf16() else "fp32"
    return "fp32"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a rerun draws the same initial weights."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def banner(device: torch.device | None = None) -> str:
    """One short paragraph: where we run, device and precision, folders, mode."""
    device = device or pick_device()
    where = "Google Colab" if in_colab() else "local machine"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    mode = ("SMOKE mode (synthetic data, tiny runs; results are not real)" if smoke_mode()
            else "real mode")
    return (f"kdtp | {where} | device {name} ({pick_precision(device)}) | torch {torch.__version__}\n"
            f"     | checkpoints {checkpoint_root()} | data {data_root()}\n"
            f"     | {mode}")
