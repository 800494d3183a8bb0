"""The supervisor's coordinator over real control channels (socket pairs), with workers that
answer prepare/commit/abort as a worker's manager does and can be held at any step.

The caller of a change can be cancelled midway: a worker that forwarded a load and died has
its channel closed, which cancels the request it was serving (the supervisor's apply). The
change must still end in a commit or an abort in every worker that prepared it, and the
coordinator must record what they serve."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from server.channel import Channel, Message
from server.coordinator import Coordinator, WorkerHandle
from server.errors import Code, ServingError
from server.statistics import VersionStatistics

NEW_STATE = {"fashion": {"versions": ["2"]}}


class Worker:
    """The worker end of a control channel: records each step; a step in ``held`` waits for
    its gate."""

    def __init__(self, held: tuple[str, ...] = ()) -> None:
        self.steps: list[str] = []
        self.gates = {op: asyncio.Event() for op in held}
        self.arrived = {op: asyncio.Event() for op in ("prepare", "commit", "abort")}
        self.channel: Channel | None = None

    async def handle(self, message: Message) -> Message | None:
        op = message["op"]
        self.arrived[op].set()
        if op in self.gates:
            await self.gates[op].wait()
        self.steps.append(op)
        if op == "prepare":
            return {"plan": 1, "state": NEW_STATE}
        if op == "commit":
            return {"changes": [{"name": "fashion", "loaded": [2], "unloaded": [1]}]}
        return {}


async def connect(index: int, worker: Worker, tasks: list[asyncio.Task[Any]]) -> WorkerHandle:
    ours, theirs = socket.socketpair()

    async def nothing(message: Message) -> Message | None:
        return None

    supervisor_end = await Channel.over_socket(ours, nothing)
    worker.channel = await Channel.over_socket(theirs, worker.handle)
    tasks.append(asyncio.create_task(supervisor_end.serve()))
    tasks.append(asyncio.create_task(worker.channel.serve()))
    return WorkerHandle(index, channel=supervisor_end, joined=True)


async def coordinate(*workers: Worker) -> tuple[Coordinator, list[asyncio.Task[Any]]]:
    tasks: list[asyncio.Task[Any]] = []
    handles = [await connect(i, w, tasks) for i, w in enumerate(workers)]
    return Coordinator(handles), tasks


async def close(coordinator: Coordinator, tasks: list[asyncio.Task[Any]]) -> None:
    for handle in coordinator.workers:
        assert handle.channel is not None
        await handle.channel.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_change_whose_caller_is_cancelled_while_peers_prepare_still_ends_everywhere():
    """Cancelled while one worker prepares and the other has died: the plan that was made is
    aborted (before, it was kept, with its manager's control lock, and every later change
    in that worker waited forever)."""
    forwarder, peer = Worker(held=("prepare",)), Worker(held=("prepare",))
    coordinator, tasks = await coordinate(forwarder, peer)
    try:
        change = asyncio.create_task(coordinator.apply({"operation": "load", "name": "fashion"}))
        await forwarder.arrived["prepare"].wait()
        await peer.arrived["prepare"].wait()
        assert forwarder.channel is not None
        await forwarder.channel.close()  # the worker that forwarded the load dies...
        change.cancel()  # ...and closing its channel cancels the request it was serving
        await asyncio.gather(change, return_exceptions=True)
        peer.gates["prepare"].set()
        async with coordinator.lock:  # the change has ended, however it ended
            pass
        assert peer.steps == ["prepare", "abort"]
        assert coordinator.committed == {}
    finally:
        await close(coordinator, tasks)


async def test_a_change_whose_caller_is_cancelled_while_peers_commit_is_recorded():
    """Cancelled after one worker committed and while the other commits: what they now serve
    is recorded (before, the coordinator kept the old state, and a restarted worker synced
    to it served other models than its peers)."""
    first, second = Worker(), Worker(held=("commit",))
    coordinator, tasks = await coordinate(first, second)
    try:
        change = asyncio.create_task(coordinator.apply({"operation": "load", "name": "fashion"}))
        await second.arrived["commit"].wait()
        change.cancel()
        await asyncio.gather(change, return_exceptions=True)
        second.gates["commit"].set()
        async with coordinator.lock:
            pass
        assert coordinator.committed == NEW_STATE
        assert first.steps == second.steps == ["prepare", "commit"]
    finally:
        await close(coordinator, tasks)


async def test_a_change_that_is_not_cancelled_returns_the_changes():
    coordinator, tasks = await coordinate(Worker(), Worker())
    try:
        changes = await coordinator.apply({"operation": "load", "name": "fashion"})
        assert changes == [{"name": "fashion", "loaded": [2], "unloaded": [1]}]
        assert coordinator.committed == NEW_STATE
    finally:
        await close(coordinator, tasks)


async def test_a_dead_workers_statistics_are_carried_until_their_version_leaves():
    workers = [Worker(), Worker()]
    coordinator, tasks = await coordinate(*workers)
    try:
        dead = coordinator.workers[0]
        dead.statistics = [VersionStatistics("fashion", 1, inference_count=5)]
        coordinator.carry(dead)
        dead.statistics = [
            VersionStatistics("fashion", 1, inference_count=2),  # its successor, dead too
            VersionStatistics("fashion", 2, inference_count=3),
        ]
        coordinator.carry(dead)
        assert dead.statistics == []
        carried = coordinator.carried_statistics
        assert {key: s.inference_count for key, s in carried.items()} == {
            ("fashion", 1): 7,
            ("fashion", 2): 3,
        }
        await coordinator.apply({"operation": "load", "name": "fashion"})  # serves 2 only
        assert list(coordinator.carried_statistics) == [("fashion", 2)]
    finally:
        await close(coordinator, tasks)


async def test_statistics_no_worker_answers_are_retryable():
    """Asked while no worker answers (every one restarting), the caller is told to retry
    with a status that says so: UNAVAILABLE, not FAILED_PRECONDITION (HTTP 400)."""
    coordinator = Coordinator([WorkerHandle(0, channel=None, joined=False)])
    try:
        await coordinator.statistics([["fashion", 1]])
    except ServingError as exc:
        assert exc.code is Code.UNAVAILABLE, exc.code
        assert "retry" in str(exc)
    else:
        raise AssertionError("statistics with no worker answering did not fail")
