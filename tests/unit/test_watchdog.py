"""The supervisor's watchdog alone (server.watchdog): workers that answer its pings, late
or not, are left alone; one silent for longer than the timeout is killed once; workers it
must not judge are neither pinged nor killed. The workers are stand-ins (a process that
records kill(), a coordinator whose ask() answers as each worker would); the real
processes are in tests/reliability/test_workers.py."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import pytest

from server.coordinator import Coordinator, WorkerHandle
from server.watchdog import UNRESPONSIVE, Watchdog

TIMEOUT_S = 0.4


@dataclass
class Process:
    """What the watchdog reads of an asyncio.subprocess.Process, and its kill()."""

    pid: int
    returncode: int | None = None
    kills: int = 0

    def kill(self) -> None:
        self.kills += 1


class Workers(Coordinator):
    """Each worker answers a ping after ``delay_s[index]`` seconds; None: never."""

    def __init__(self, delays: list[float | None]) -> None:
        workers = []
        for index in range(len(delays)):
            worker = WorkerHandle(index, process=Process(1000 + index))  # type: ignore[arg-type]
            worker.listening.set()
            workers.append(worker)
        super().__init__(workers)
        self.delay_s = delays
        self.pings = [0] * len(delays)
        self.in_flight = [0] * len(delays)
        self.most_in_flight = [0] * len(delays)

    async def ask(self, worker: WorkerHandle, op: str, **fields: Any) -> dict[str, Any]:
        assert op == "ping" and fields == {"timeout_s": TIMEOUT_S}
        i = worker.index
        self.pings[i] += 1
        self.in_flight[i] += 1
        self.most_in_flight[i] = max(self.most_in_flight[i], self.in_flight[i])
        try:
            delay = self.delay_s[i]
            if delay is None:
                await asyncio.sleep(fields["timeout_s"])  # as the channel's timeout does
                raise TimeoutError
            await asyncio.sleep(delay)
            return {}
        finally:
            self.in_flight[i] -= 1


async def watch(workers: Workers, seconds: float) -> None:
    """Run a watchdog over ``workers`` for ``seconds``, their clocks starting now."""
    now = time.monotonic()
    for worker in workers.workers:
        worker.heard_at = now  # what the supervisor sets when a worker says it listens
    stop = asyncio.Event()
    dog = Watchdog(workers, TIMEOUT_S)
    run = asyncio.create_task(dog.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await run


def process(worker: WorkerHandle) -> Process:
    assert isinstance(worker.process, Process)
    return worker.process


async def test_workers_that_answer_are_never_killed_even_late_and_one_ping_at_a_time() -> None:
    # One answers at once, one takes longer than the ping interval but less than the timeout.
    workers = Workers([0.0, TIMEOUT_S * 0.6])
    await watch(workers, TIMEOUT_S * 5)
    for worker in workers.workers:
        assert process(worker).kills == 0 and not worker.stopped_for
    assert workers.pings[0] >= 12  # every tenth of a second (a quarter of the timeout)
    assert workers.pings[1] >= 4
    assert workers.most_in_flight == [1, 1]  # a slow answer is waited for, not piled on


async def test_a_silent_worker_is_killed_once_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers = Workers([0.0, None])
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="server.supervisor"):
        await watch(workers, TIMEOUT_S * 4)
    quiet, silent = workers.workers
    assert process(quiet).kills == 0 and not quiet.stopped_for
    assert process(silent).kills == 1  # and not again while it is being ended
    assert silent.stopped_for == UNRESPONSIVE
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("worker 1 (pid 1001) has not answered for ")
    assert line.endswith(" s (--worker-timeout-s 0.4): killing it")
    silent_for = float(line.split("answered for ")[1].split(" s")[0])
    assert TIMEOUT_S <= silent_for < TIMEOUT_S + 0.5  # judged every tenth; logged to 0.1 s
    assert time.monotonic() - started > TIMEOUT_S


async def test_workers_it_must_not_judge_are_neither_pinged_nor_killed() -> None:
    workers = Workers([None, None, None, None])
    starting, exited, ending, gone = workers.workers
    starting.listening.clear()  # not listening yet: start-up has its own time limit
    process(exited).returncode = -9  # dead: the reaper restarts it
    ending.stopped_for = "did not come back"  # the supervisor is already ending it
    gone.process = None  # between two processes
    await watch(workers, TIMEOUT_S * 3)
    assert workers.pings == [0, 0, 0, 0]
    assert [process(w).kills for w in (starting, exited, ending)] == [0, 0, 0]


async def test_timeout_zero_never_pings() -> None:
    workers = Workers([None])
    stop = asyncio.Event()
    await asyncio.wait_for(Watchdog(workers, 0.0).run(stop), 1.0)  # returns at once
    assert workers.pings == [0]
