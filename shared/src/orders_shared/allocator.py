"""Keep payload-sized buffers on the heap: glibc ``mallopt`` at process start.

A payload is copied several times on its way through the codec (serialized,
encrypted, wrapped in a ``Payload``, and back). glibc serves each buffer over its
mmap threshold (128 KiB at start, then moving) with a fresh ``mmap`` and gives it
back with ``munmap`` on free, so every copy of a 256 KiB payload page-faults its
64 pages in again. Measured with ``orders-bench --profile`` on the build machine:
the envelope round trip of a 256 KiB payload took 1.0-1.3 ms of CPU (two thirds of
it in the kernel, about 145 page faults per round trip) against 0.18 ms with the
thresholds below, the same figure as bare AES-GCM plus the unavoidable copies.

:func:`tune_allocator` raises the mmap threshold to 4 MiB (every payload under
Temporal's default 2 MiB blob limit comes from the heap) and the trim threshold
to 64 MiB (freed heap stays mapped for the next payload instead of going back to
the kernel each time). Peak RSS does not move (the memory is reused, not added);
what stays mapped after a burst of large payloads is at most the trim threshold.

A no-op where the C library is not glibc (musl, macOS), and when the operator set
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` (glibc's own variables win).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for payload-sized buffers; True if set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl has a mallopt stub)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
