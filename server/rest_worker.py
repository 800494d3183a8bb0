"""Large REST inference bodies are parsed and decoded in a worker process, not on the loop.

A thread would not do: JSON parsers (the standard library's and orjson) hold the GIL
for a whole document, so a 4 MiB body parsed in a thread still stops the event loop,
and with it gRPC health checks, for as long as the parse takes (0.3-1.8 s measured,
docs/PERFORMANCE.md). One worker process (:mod:`server.parse_process`) parses the JSON and
checks and converts the tensor (:func:`server.rest_codec.parse_and_decode`); only the
images come back, over a pipe, one body at a time in arrival order.

Bounded: at most ``max_pending_bytes`` of bodies wait for or are in the worker (one
body always fits); beyond it 429 at once, counted in
``fashion_rejected_requests_total{reason="http_parse_queue_full"}``. The worker is
started by the first large body (a process of its own, not a fork, which would copy
gRPC's threads), and started again after it dies (the body it had, or the next one, is
answered 503, retry). It dies with the server process that started it, however that
ends (:mod:`server.orphans`).

A plain process and a pipe rather than multiprocessing's pool: the pool also started
multiprocessing's resource tracker (13 MiB more per server process, and a warning in the
log whenever a worker was killed) and needed named semaphores in /dev/shm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import server
from server.errors import ModelNotReady
from server.http_body import Busy
from server.parse_process import FRAME
from server.rest_codec import InferBody, parse_and_decode

logger = logging.getLogger(__name__)

# JSON parts from this size go to the worker: below it a parse costs the loop at most
# ~6 ms (orjson, the costliest shape of JSON), about what the round trip costs.
OFF_LOOP_BYTES = 64 * 1024
# How long close() lets the worker finish the body it has before killing it.
CLOSE_TIMEOUT_S = 5.0
# The directory the ``server`` package is imported from: the worker imports the same one.
PACKAGE_ROOT = Path(server.__file__).resolve().parent.parent


@dataclass
class _Job:
    body: bytes
    header_length: str | None
    limits: dict[str, Any]
    abandoned: bool = field(default=False)  # its caller went away before its turn


class ParseWorker:
    def __init__(self, *, max_pending_bytes: int, count_rejected: Callable[[str], None]) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.count_rejected = count_rejected
        self.pending_bytes = 0
        self._process: asyncio.subprocess.Process | None = None
        self._thread: ThreadPoolExecutor | None = None  # no process could be started
        # One body in the worker at a time, in arrival order (asyncio's lock is FIFO).
        self._turn = asyncio.Lock()
        self._closing = False

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
        limits = {"model_name": model_name, "model_version": model_version}
        job = _Job(body, header_length, {**limits, "max_images": max_images})
        self.pending_bytes += size
        # Never cancelled once it has its turn: a body half written to the pipe, or an
        # answer left unread, would give the next caller this one's answer.
        exchange = asyncio.ensure_future(self._exchange(job))
        exchange.add_done_callback(partial(self._done, size))
        try:
            return await asyncio.shield(exchange)
        except asyncio.CancelledError:
            job.abandoned = True  # skipped if it has not reached the worker yet
            raise

    def _done(self, size: int, exchange: asyncio.Future[InferBody]) -> None:
        self.pending_bytes -= size
        if not exchange.cancelled():
            exchange.exception()  # retrieved: its caller may have gone

    async def _exchange(self, job: _Job) -> InferBody:
        async with self._turn:
            if job.abandoned:
                raise asyncio.CancelledError
            if self._closing:
                raise ModelNotReady("the server is shutting down; retry on another replica")
            process = await self._started()
            if process is None:
                call = partial(parse_and_decode, job.body, job.header_length, **job.limits)
                return await asyncio.get_running_loop().run_in_executor(self._thread, call)
            return await self._round_trip(process, job)

    async def _round_trip(self, process: asyncio.subprocess.Process, job: _Job) -> InferBody:
        assert process.stdin is not None and process.stdout is not None
        request = pickle.dumps(
            (job.body, job.header_length, job.limits), protocol=pickle.HIGHEST_PROTOCOL
        )
        try:
            process.stdin.write(FRAME.pack(len(request)))
            process.stdin.write(request)
            del request
            await process.stdin.drain()
            (size,) = FRAME.unpack(await process.stdout.readexactly(FRAME.size))
            ok, value = pickle.loads(await process.stdout.readexactly(size))
        except Exception:  # it died, or its answer cannot be read: the pipe is unusable
            await self._lost(process)
            raise ModelNotReady("the request parser was restarted; retry") from None
        if not ok:
            raise value
        assert isinstance(value, InferBody)
        return value

    async def _started(self) -> asyncio.subprocess.Process | None:
        """The worker process, started if needed; None: parse in a thread instead."""
        if self._thread is not None:
            return None
        if self._process is not None and self._process.returncode is None:
            return self._process
        if self._process is not None:
            await self._lost(self._process)
        env = dict(os.environ)
        if not {"site-packages", "dist-packages"} & set(PACKAGE_ROOT.parts):
            # A source checkout (not installed): the same tree, whatever the working
            # directory. An installed package is found as it is (and site-packages on
            # PYTHONPATH would come before the standard library).
            path = [str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.parse_process",
                str(os.getpid()),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            # Still one at a time and bounded, but a thread holds the GIL while it parses.
            logger.warning(
                "cannot start the REST parse worker process (%s); parsing large JSON "
                "bodies in a thread instead, which stalls the event loop while it runs",
                exc,
            )
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="rest-parse")
            return None
        return self._process

    async def _lost(self, process: asyncio.subprocess.Process) -> None:
        """The worker died (or broke the protocol): reaped, and the next body starts another."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        code = await process.wait()
        if self._process is process:
            self._process = None
        logger.error(
            "the REST parse worker died or its answer was unreadable (exit code %s); the "
            "next large body starts another",
            code,
        )

    async def close(self) -> None:
        """Stop the worker once it has answered the body it has (queued ones are refused)."""
        self._closing = True
        try:
            await asyncio.wait_for(self._turn.acquire(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            pass  # a body still parsing: the worker is killed below
        else:
            self._turn.release()  # nothing can start: _closing is set
        process, self._process = self._process, None
        if self._thread is not None:
            await asyncio.to_thread(self._thread.shutdown, wait=True, cancel_futures=True)
            self._thread = None
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        process.stdin.close()  # its next read ends: it exits
        try:
            await asyncio.wait_for(process.wait(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
