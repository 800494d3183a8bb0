"""How the process's memory allocator is set up (glibc), once, by ``fashion-serve``."""

from __future__ import annotations

import ctypes

# glibc's mallopt parameter, and the size from which an allocation gets its own mapping.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def return_large_frees_at_once() -> bool:
    """Pin glibc's mmap threshold at its initial 128 KiB (True when done).

    glibc raises the threshold each time a mapped block is freed (up to 32 MiB), so after
    the first burst, request bodies (4 MiB) and TLS connections' 256 KiB read buffers
    come from the heap, and a burst of aborted uploads or handshakes leaves the heap
    fragmented: measured, 1,000 timed-out handshakes kept 300 MiB after they closed.
    Pinned, every block from 128 KiB is its own mapping, returned when freed.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to pin
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
