"""The floor (:mod:`bench.echo`) with one piece of a real server's request path before each
canned answer, to price it alone (``python -m bench.experiments.unary hops``).

    python -m bench.experiments.echo_wait --wait {none,yield,executor,batched,context}

``yield``: one extra event-loop turn. ``executor``: a no-op run in a one-thread executor
per request (the thread hop and the self-pipe wake-up). ``batched``: one such hop per batch
of whatever queued while the previous one ran, as the dynamic batcher does. ``context``: what
fashion-serve's gRPC binding asks of each call's context (its peer, its metadata, its
deadline) and the request id it sends back in the trailing metadata. ``none``: the floor
itself. Prints bench.echo's ready line and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.echo import READY_MARK, serve
from bench.serverproc import ServerProcess, start_process
from server.request_context import REQUEST_ID_HEADER, new_id

WAITS = ("none", "yield", "executor", "batched", "context")


def _noop() -> None:
    return None


class Hops:
    """The waits of ``--wait``: each request awaits one before its answer."""

    def __init__(self, wait: str) -> None:
        self.wait = wait
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="echo")
        self._waiting: list[asyncio.Future[None]] = []
        self._busy = False

    async def __call__(self, context: Any) -> None:
        if self.wait == "context":
            context.peer()
            metadata = context.invocation_metadata()
            dict(metadata or ())  # the binding scans it for x-request-id
            context.time_remaining()
            context.set_trailing_metadata(((REQUEST_ID_HEADER, new_id()),))
        elif self.wait == "yield":
            await asyncio.sleep(0)
        elif self.wait == "executor":
            await asyncio.get_running_loop().run_in_executor(self._pool, _noop)
        elif self.wait == "batched":
            future = asyncio.get_running_loop().create_future()
            self._waiting.append(future)
            if not self._busy:
                self._run_batch()
            await future

    def _run_batch(self) -> None:
        self._busy = True
        batch, self._waiting = self._waiting, []
        done = asyncio.get_running_loop().run_in_executor(self._pool, _noop)
        done.add_done_callback(lambda _: self._deliver(batch))

    def _deliver(self, batch: list[asyncio.Future[None]]) -> None:
        for future in batch:
            if not future.done():
                future.set_result(None)
        self._busy = False
        if self._waiting:
            self._run_batch()


def start(wait: str, timeout_s: float = 60.0) -> ServerProcess:
    """This module in a child process, ``--wait wait``; returns once it serves."""
    command = [sys.executable, "-m", "bench.experiments.echo_wait", "--wait", wait]
    return start_process(command, READY_MARK, timeout_s)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.echo_wait")
    parser.add_argument("--wait", choices=WAITS, default="none")
    chosen = parser.parse_args().wait
    asyncio.run(serve(None if chosen == "none" else Hops(chosen)))
