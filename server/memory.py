"""Process memory: give freed message buffers back to the kernel (issue #28 item 1).

glibc serves allocations of 128 KiB and more with mmap and unmaps them when freed,
but it raises that threshold to the size of every such block freed (up to 32 MiB):
after the first large gRPC message, every later one comes from the heap, and a
stream of large messages leaves hundreds of MiB resident after they are all freed
(measured: 6 ModelStreamInfer streams of 1 MiB messages, 1,534 MiB peak and 1,248
MiB kept after the clients went away; with the threshold fixed, 259 and 186). Setting
the threshold explicitly turns the adjustment off.

It matters for HTTP too: REST request bodies (up to 4 MiB) and TLS connections' 256 KiB
read buffers otherwise come from the heap after the first burst, and a burst of aborted
uploads or handshakes leaves it fragmented (measured: 1,000 timed-out handshakes kept 300
MiB after they closed; docs/RELIABILITY.md).

Smaller blocks (grpc's read slices, protobuf arenas) freed by a flood of large
messages still stay in malloc's arenas: the same attack kept 156-1,036 MiB from run
to run. :func:`start_trimming` gives free arena pages back every few seconds
(``malloc_trim``, a few ms, in a thread of its own): 131-139 MiB in three runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default, kept fixed


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name is not None else None
    except OSError:
        return None


def keep_large_blocks_unmapped() -> bool:
    """Fix glibc's mmap threshold; False (and nothing done) on another C library."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        logger.warning("mallopt(M_MMAP_THRESHOLD) failed: large freed buffers may stay resident")
        return False
    return True


def start_trimming(interval_s: float) -> threading.Event | None:
    """Every ``interval_s``, give malloc's free pages back to the kernel, in a daemon
    thread (set the returned event to stop it). None when off (0) or not glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if interval_s <= 0 or trim is None:
        return None
    trim.argtypes = (ctypes.c_size_t,)
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            trim(0)

    threading.Thread(target=run, name="malloc-trim", daemon=True).start()
    return stop
