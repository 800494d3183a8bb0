"""The supervisor's watchdog: ``--worker-timeout-s``, as gunicorn's ``--timeout``.

A worker whose event loop stops turning (a deadlock, a call stuck on the loop, a stopped
process) still holds its listening sockets: the kernel goes on handing it its share of new
connections, which nobody answers, and every model change waits for it (each is prepared
in every worker). So the supervisor pings each worker that has opened its ports over its
control channel, every second (or a quarter of the timeout, if less), and kills one that
has not answered for the timeout with SIGKILL; the supervisor then restarts it as one that
died, counted under :data:`UNRESPONSIVE`. A worker busy serving still answers: its pings
are handled on its loop between requests, and model loads run on threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from server.channel import ChannelClosed
from server.coordinator import Coordinator, WorkerHandle
from server.errors import ServingError

logger = logging.getLogger("server.supervisor")

PING_EVERY_S = 1.0
# The restart reason of a worker the watchdog killed.
UNRESPONSIVE = "unresponsive"


class Watchdog:
    def __init__(self, coordinator: Coordinator, timeout_s: float) -> None:
        """``timeout_s``: how long a worker may leave pings unanswered (0: never judged)."""
        self.coordinator = coordinator
        self.timeout_s = timeout_s
        self.every_s = min(PING_EVERY_S, timeout_s / 4)
        self._pings: dict[int, asyncio.Task[None]] = {}  # by worker index: one at a time

    async def run(self, stop: asyncio.Event) -> None:
        """Ping and judge every ``every_s`` until ``stop`` is set."""
        if not self.timeout_s:
            return
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every_s)
                if stop.is_set():
                    return
                self.check(time.monotonic())
        finally:
            for task in self._pings.values():
                task.cancel()

    def check(self, now: float) -> None:
        """Kill each watched worker silent for longer than the timeout; ping the others."""
        for worker in self.coordinator.workers:
            process = worker.process
            if (
                process is None
                or process.returncode is not None
                or not worker.listening.is_set()  # its clock starts when it listens
                or worker.stopped_for  # already being ended
            ):
                continue
            silent_s = now - worker.heard_at
            if silent_s > self.timeout_s:
                self._kill(worker, process, silent_s)
            elif worker.index not in self._pings:
                self._pings[worker.index] = asyncio.create_task(
                    self._ping(worker, process), name=f"worker-{worker.index}-ping"
                )

    async def _ping(self, worker: WorkerHandle, process: asyncio.subprocess.Process) -> None:
        try:
            await self.coordinator.ask(worker, "ping", timeout_s=self.timeout_s)
            if worker.process is process:  # not an answer from a process since replaced
                worker.heard_at = time.monotonic()
        except (ServingError, ChannelClosed, TimeoutError):
            pass  # judged by when it last answered
        finally:
            self._pings.pop(worker.index, None)

    def _kill(
        self, worker: WorkerHandle, process: asyncio.subprocess.Process, silent_s: float
    ) -> None:
        logger.error(
            "worker %d (pid %d) has not answered for %.1f s (--worker-timeout-s %g): killing it",
            worker.index,
            process.pid,
            silent_s,
            self.timeout_s,
        )
        worker.stopped_for = UNRESPONSIVE
        with contextlib.suppress(ProcessLookupError):
            process.kill()
