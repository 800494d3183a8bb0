"""Process memory: give freed message buffers back to the kernel (issue #28 item 1).

glibc serves allocations of 128 KiB and more with mmap and unmaps them when freed,
but it raises that threshold to the size of every such block freed (up to 32 MiB):
after the first large gRPC message, every later one comes from the heap, and a
stream of large messages leaves hundreds of MiB resident after they are all freed
(measured: 6 ModelStreamInfer streams of 1 MiB messages, 1,534 MiB peak and 1,248
MiB kept after the clients went away; with the threshold fixed, 259 and 186). Setting
the threshold explicitly turns the adjustment off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default, kept fixed


def keep_large_blocks_unmapped() -> bool:
    """Fix glibc's mmap threshold; False (and nothing done) on another C library."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        logger.warning("mallopt(M_MMAP_THRESHOLD) failed: large freed buffers may stay resident")
        return False
    return True
