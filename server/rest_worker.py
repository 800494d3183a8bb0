"""Large REST inference bodies are parsed and decoded in a worker process, not on the loop.

A thread would not do: JSON parsers (the standard library's and orjson) hold the GIL
for a whole document, so a 4 MiB body parsed in a thread still stops the event loop,
and with it gRPC health checks, for as long as the parse takes (0.3-1.8 s measured,
docs/PERFORMANCE.md). One worker process parses the JSON and checks and converts the
tensor (:func:`server.rest_codec.parse_and_decode`); only the images come back.

Bounded: at most ``max_pending_bytes`` of bodies wait for or are in the worker (one
body always fits); beyond it 429 at once, counted in
``fashion_rejected_requests_total{reason="http_parse_queue_full"}``. The worker is
started by the first large body (spawned: a fork would copy gRPC's threads), and
started again after it dies (that body is answered 503, retry). It dies with the server
process that started it, however that ends (:mod:`server.orphans`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial

from server.errors import ModelNotReady
from server.http_body import Busy
from server.orphans import die_with
from server.rest_codec import InferBody, parse_and_decode

logger = logging.getLogger(__name__)

# JSON parts from this size go to the worker: below it a parse costs the loop at most
# ~6 ms (orjson, the costliest shape of JSON), about what the round trip costs.
OFF_LOOP_BYTES = 64 * 1024


class ParseWorker:
    def __init__(self, *, max_pending_bytes: int, count_rejected: Callable[[str], None]) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.count_rejected = count_rejected
        self.pending_bytes = 0
        self._executor: Executor | None = None

    def _pool(self) -> Executor:
        if self._executor is None:
            try:
                self._executor = ProcessPoolExecutor(
                    1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=die_with,
                    initargs=(os.getpid(),),
                )
            except (OSError, ImportError, NotImplementedError) as exc:
                # No working semaphores (e.g. no writable /dev/shm): still one at a time and
                # bounded, but a thread holds the GIL while it parses.
                logger.warning(
                    "cannot start the REST parse worker process (%s); parsing large JSON "
                    "bodies in a thread instead, which stalls the event loop while it runs",
                    exc,
                )
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="rest-parse")
        return self._executor

    async def parse(
        self,
        body: bytes,
        header_length: str | None,
        *,
        model_name: str,
        model_version: str,
        max_images: int,
    ) -> InferBody:
        """:func:`parse_and_decode` in the worker process."""
        size = len(body)
        if self.pending_bytes and self.pending_bytes + size > self.max_pending_bytes:
            self.count_rejected("http_parse_queue_full")
            raise Busy(
                f"{self.pending_bytes} bytes of request bodies are waiting to be parsed (at "
                f"most {self.max_pending_bytes}); retry shortly, or send binary tensors"
            )
        self.pending_bytes += size
        call = partial(
            parse_and_decode,
            body,
            header_length,
            model_name=model_name,
            model_version=model_version,
            max_images=max_images,
        )
        executor = self._pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, call)
        except BrokenProcessPool:
            if self._executor is executor:
                logger.error("the REST parse worker died; starting another one")
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            raise ModelNotReady("the request parser was restarted; retry") from None
        finally:
            self.pending_bytes -= size

    async def close(self) -> None:
        """Stop the worker (after the body it is parsing, if any; queued ones are dropped)."""
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
