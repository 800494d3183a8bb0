"""Pieces of the ``--workers`` supervisor that need no worker: its waits and its ports."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from server import supervisor as supervisor_module
from server.config import Settings
from server.held_ports import HeldPorts
from server.supervisor import Supervisor, wait_or_stop


async def test_a_wait_that_times_out_leaves_no_task_behind() -> None:
    """Each poll interval used to leave two tasks waiting on the poll and stop events for
    good (~31.6 MiB a day at --poll-interval-s 5)."""
    poll, stop = asyncio.Event(), asyncio.Event()
    before = asyncio.all_tasks()
    for _ in range(50):
        assert await wait_or_stop(poll.wait(), stop, timeout_s=0.001) is False
    await asyncio.sleep(0)  # cancelled tasks end at their next turn
    assert asyncio.all_tasks() == before


async def test_a_cancelled_wait_leaves_no_task_behind() -> None:
    poll, stop = asyncio.Event(), asyncio.Event()
    before = asyncio.all_tasks()
    waiting = asyncio.create_task(wait_or_stop(poll.wait(), stop))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == before


async def test_a_wait_ends_on_what_it_waits_for_or_on_stop() -> None:
    poll, stop = asyncio.Event(), asyncio.Event()
    poll.set()
    assert await wait_or_stop(poll.wait(), stop, timeout_s=60) is False
    stop.set()
    assert await wait_or_stop(asyncio.sleep(60), stop) is True


def test_a_held_port_is_refused_to_a_second_server_while_nothing_listens_on_it() -> None:
    """Both bind with SO_REUSEPORT and neither listens (the first one's workers are starting,
    or all restarting): the kernel lets both bind, the claim does not."""
    first, second = HeldPorts("127.0.0.1"), HeldPorts("127.0.0.1")
    try:
        port = first.hold(0)
        with pytest.raises(
            OSError, match=f"another fashion-serve --workers server holds port {port}"
        ):
            second.hold(port)
        first.release()
        assert second.hold(port) == port  # released with the first one
    finally:
        first.release()
        second.release()


def test_a_port_another_program_listens_on_with_so_reuseport_is_refused() -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        held = HeldPorts("127.0.0.1")
        try:
            with pytest.raises(OSError, match="another server listens on it"):
                held.hold(other.getsockname()[1])
        finally:
            held.release()


def test_the_workers_can_listen_on_a_held_port() -> None:
    held = HeldPorts("127.0.0.1")
    try:
        port = held.hold(0)
        workers = [socket.socket() for _ in range(2)]
        for worker in workers:  # as grpc and aiohttp bind them in a worker
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
        for worker in workers:
            worker.close()
    finally:
        held.release()


async def test_a_worker_started_while_the_server_stops_is_stopped_and_waited_for(
    tmp_path, monkeypatch
) -> None:
    """SIGTERM while a restart is starting a worker: the shutdown took its list of processes
    before the new one existed, so that worker got no SIGTERM and was not waited for. Here
    the start is held at the process's creation while the shutdown begins."""
    supervisor = Supervisor(Settings(model_repo=tmp_path, workers="2", grace_s=5.0), [])
    gate = asyncio.Event()
    create = asyncio.create_subprocess_exec
    sleeper = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )

    async def held_start(*args: object, pass_fds: tuple[int, ...] = (), **kwargs: object):
        await gate.wait()
        process = await create(
            sys.executable, "-c", sleeper, pass_fds=pass_fds, stdout=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None
        assert await process.stdout.readline() == b"up\n"  # its SIGTERM handler is set
        return process

    monkeypatch.setattr(supervisor_module.asyncio, "create_subprocess_exec", held_start)
    worker = supervisor.workers[0]
    starting = asyncio.create_task(supervisor._spawn(worker))
    await asyncio.sleep(0.05)
    supervisor._stop.set()
    stopping = asyncio.create_task(supervisor._shutdown(0))
    await asyncio.sleep(0.05)
    gate.set()
    await starting
    try:
        assert await asyncio.wait_for(stopping, 20) == 0
        assert worker.process is not None and worker.process.returncode == 0
    finally:
        if worker.process is not None and worker.process.returncode is None:
            worker.process.kill()
            await worker.process.wait()
