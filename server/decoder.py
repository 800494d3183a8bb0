"""Encoded images decoded off the event loop, fairly between clients (issue #28 item 7).

Decoding is partly Python (it holds the GIL), so one thread does it all: more threads
would not decode faster, only take more from the event loop. A first-come queue let a
few clients sending many crafted images (each ~100 ms of Pillow work) hold every other
client's one small PNG for seconds. So requests wait in one queue per client
connection (:data:`client_key`, set by the front end), the connections take turns,
and a turn decodes one request's images for at most :data:`SLICE_S` (at least one
image): an honest request waits for one slice per other busy connection, not for
everything queued before it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.errors import Overloaded

# Who is asking: the front end sets it per call (gRPC: the peer, one per connection).
client_key: ContextVar[str] = ContextVar("client_key", default="")
# Longest turn in the decode thread, seconds (a single image may take longer).
SLICE_S = 0.005


class SlicedDecode(Protocol):
    """A request's encoded images, decoded a slice at a time (blocking, CPU-bound)."""

    @property
    def images(self) -> int:
        """How many images it decodes (what the pending-decode limit counts)."""
        ...

    def decode_some(self, slice_s: float) -> np.ndarray | None:
        """Decode the next images for about ``slice_s`` (at least one); all of them
        decoded -> the uint8 [n, 28, 28] array, else None."""
        ...


@dataclass(slots=True)
class _Job:
    decode: SlicedDecode
    done: asyncio.Future[np.ndarray]


class FairDecoder:
    """One decode thread, shared in turns between clients; at most ``max_pending``
    images waiting or being decoded (beyond: Overloaded, RESOURCE_EXHAUSTED)."""

    def __init__(self, *, max_pending: int, slice_s: float = SLICE_S) -> None:
        self.max_pending = max_pending
        self.slice_s = slice_s
        self.pending = 0
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._turns: asyncio.Task[None] | None = None

    async def decode(self, job: SlicedDecode) -> np.ndarray:
        """Queue ``job`` under the caller's :data:`client_key`; a caller that goes away
        is never decoded further."""
        n = job.images
        if self.pending + n > self.max_pending:
            raise Overloaded(
                f"{self.pending} encoded images are waiting to be decoded (at most "
                f"{self.max_pending}); retry with backoff, or send raw pixels"
            )
        loop = asyncio.get_running_loop()
        entry = _Job(job, loop.create_future())
        self._queues.setdefault(client_key.get(), deque()).append(entry)
        self.pending += n
        if self._turns is None or self._turns.done():
            self._turns = asyncio.create_task(self._take_turns(), name="decode-turns")
        try:
            return await entry.done
        finally:
            self.pending -= n

    async def _take_turns(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queues:
            key, jobs = next(iter(self._queues.items()))
            job = jobs[0]
            if not job.done.done():  # its caller may have gone
                try:
                    out = await loop.run_in_executor(
                        self._pool, job.decode.decode_some, self.slice_s
                    )
                except Exception as exc:
                    if not job.done.done():
                        job.done.set_exception(exc)
                else:
                    if out is not None and not job.done.done():
                        job.done.set_result(out)
            if job.done.done():
                jobs.popleft()
            # This connection's turn is over: to the back of the line (or out, if idle).
            del self._queues[key]
            if jobs:
                self._queues[key] = jobs

    def close(self) -> None:
        """Every call has ended: drop what is queued, do not wait for a running slice."""
        if self._turns is not None:
            self._turns.cancel()
        self._queues.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
