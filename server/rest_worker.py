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
import time
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
# A body's round trip beyond this (a 4 MiB body takes ~2 s at most here): the worker is
# stuck (stopped, hung), and every later body would wait behind it.
ROUND_TRIP_TIMEOUT_S = 60.0
# After the second failure in a row, no new worker for 1 s, then 2, 4 ... up to 30: a worker
# that cannot start (a broken environment) is not started again for every body.
BACKOFF_S = (1.0, 30.0)
WORKER_MODULE = "server.parse_process"
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
        self._failures = 0  # in a row
        self._not_before = 0.0  # no new worker before this (monotonic)

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
            async with asyncio.timeout(ROUND_TRIP_TIMEOUT_S):
                process.stdin.write(FRAME.pack(len(request)))
                process.stdin.write(request)
                del request
                await process.stdin.drain()
                (size,) = FRAME.unpack(await process.stdout.readexactly(FRAME.size))
                ok, value = pickle.loads(await process.stdout.readexactly(size))
        except Exception as exc:  # it died, hangs, or its answer cannot be read
            await self._lost(process, exc)
            raise ModelNotReady("the request parser was restarted; retry") from None
        self._failures = 0
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
            await self._lost(self._process, None)
        wait_s = self._not_before - time.monotonic()
        if wait_s > 0:
            raise ModelNotReady(
                f"the request parser failed to run and is restarting; retry in {wait_s:.0f} s, "
                "or send binary tensors"
            )
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
                "-P",  # not the working directory first: a server/ there would replace ours
                "-m",
                WORKER_MODULE,
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

    async def _lost(self, process: asyncio.subprocess.Process, why: Exception | None) -> None:
        """The worker died, hung or broke the protocol: killed, reaped, and the next body
        starts another (after a back-off once it has failed twice in a row)."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        code = await process.wait()
        if self._process is process:
            self._process = None
        self._failures += 1
        if self._failures >= 2:
            backoff = min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** (self._failures - 2))
            self._not_before = time.monotonic() + backoff
        reason = "timed out" if isinstance(why, TimeoutError) else f"exit code {code}"
        log = logger.warning if self._closing else logger.error
        log(
            "the REST parse worker failed (%s; %d in a row); the next large body starts another",
            reason,
            self._failures,
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
