"""Host (CPU) memory: keep freed blocks in the process instead of handing them back to the kernel.

glibc serves allocations above a threshold (128 KiB at first, then adapting) with fresh ``mmap`` pages and returns
them on ``free``. A training step allocates and frees the same large activation buffers every time, so each step
pays the kernel for zeroed pages again (page faults show up as slow ``fill_``, ``sub`` and ``copy_``). Raising the
mmap and trim thresholds makes glibc reuse its heap, as jemalloc or tcmalloc would: on the 2-core benchmark machine
this made the LoRA SFT step about 10% faster (``benchmarks/RESULTS.md``). Memory already freed stays counted in the
resident set, so the peak is that of the step, not lower.

Knob: ``LIGHTNING_POST_HOST_MALLOC=default`` leaves glibc's behaviour unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_done = False


def keep_freed_host_memory() -> bool:
    """Tune glibc's allocator once per process (Linux with glibc only); returns whether it was tuned."""
    global _done
    if _done or os.environ.get("LIGHTNING_POST_HOST_MALLOC", "reuse") == "default" or not sys.platform.startswith("linux"):
        return _done
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 34)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    _done = bool(ok)
    log.debug("glibc mallopt: mmap threshold 1 GiB, trim threshold 16 GiB (%s)", "ok" if ok else "refused")
    return _done
