"""Keep freed memory for reuse on a Linux CPU: the same training, 10-35% faster.

A CPU training step at the kit's batch of 1024 allocates activations and gradients of
tens to hundreds of megabytes (``air_large``'s first block: 1024 x 32 x 32 x 32 floats,
134 MB). glibc's ``malloc`` hands every block over 128 kB to its own ``mmap`` and returns
it to the kernel on ``free``, so the next step's block is fresh memory again, and the
kernel zeroes it page by page on first touch. Profiled on ``air_large`` (AVX2 kernels,
fp32), a fifth of the step went to ``aten::fill_`` in the max-pool backward, most of it
those page faults. The usual cure (Intel's PyTorch CPU tuning guide) is a caching
allocator: jemalloc or tcmalloc by ``LD_PRELOAD``, which a notebook kernel on Colab cannot
be started with. glibc's own switch does the same from inside the process: with
``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` and a matching ``M_TRIM_THRESHOLD`` those blocks come
from the heap, and a freed one is kept for the next step.

Nothing computed changes (allocation does not touch arithmetic): a run's weights are
bit-identical with and without it (tests/test_cpu_memory.py). What it costs: the process keeps its
peak heap instead of giving it back between steps (the peak itself does not grow).
Measured in ``benchmarks/RESULTS.md`` ("Keeping freed memory"), with
``python benchmarks/allocator_step.py``. ``KDTP_KEEP_FREED_MEMORY=0`` leaves glibc's
defaults alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 1 << 30   # blocks under 1 GiB come from the heap (a step's largest is ~0.2 GB)
TRIM_ABOVE = 2**31 - 1   # and the heap is not given back until 2 GiB of it are free (mallopt takes an int)

_state: dict[str, bool] = {}


def _glibc():
    """glibc loaded in this process, or None (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()   # only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks for reuse (once per process); True when it is on.

    A no-op that returns False off glibc, when ``KDTP_KEEP_FREED_MEMORY=0``, or when glibc
    refuses the setting; it never raises, since training runs the same without it.
    """
    if "on" in _state:
        return _state["on"]
    on = False
    if os.environ.get("KDTP_KEEP_FREED_MEMORY", "1").strip().lower() not in ("0", "no", "off", "false"):
        libc = _glibc()
        if libc is not None:
            # trim first: a heap that is trimmed at once would undo the threshold
            on = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE)) and \
                bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW))
    _state["on"] = on
    return on
