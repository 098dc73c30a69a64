"""Process settings that make CPU registration fast and repeatable.

* Denormal floats are flushed to zero: near convergence gradients underflow,
  and denormal arithmetic is about 20x slower on x86 CPUs.
* glibc's allocator keeps freed memory instead of returning it to the system:
  every iteration allocates the same large tensors, and on virtual machines the
  page faults of fresh memory made whole runs 10x slower (measured here with 2
  threads: 2.3 s instead of 30 s for the same registration).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def configure() -> None:
    """Apply the settings above once per process (idempotent; the allocator part is glibc-only)."""
    torch.set_flush_denormal(True)
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        mallopt(_M_TRIM_THRESHOLD, 1 << 40)
