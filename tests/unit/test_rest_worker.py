"""server/rest_worker.py's ParseWorker with its real worker process: answers in order, a
caller that goes away never shifts another caller's answer, the byte budget, and close()."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import numpy as np
import pytest

from server import rest_worker
from server.errors import InvalidInput, ModelNotReady
from server.http_body import Busy
from server.rest_codec import REST_INFER
from server.rest_worker import ParseWorker

LIMITS = {"model_name": "fashion", "model_version": "", "max_images": 256}


def body(images: np.ndarray) -> bytes:
    tensor = {"name": "images", "datatype": "UINT8", "shape": list(images.shape)}
    return json.dumps({"inputs": [{**tensor, "data": images.ravel().tolist()}]}).encode()


def batch(n: int, value: int) -> np.ndarray:
    return np.full((n, 28, 28), value, np.uint8)


async def its_turn(worker: ParseWorker) -> None:
    """Until a body has its turn (it is being written to, or parsed by, the worker)."""
    while not worker._turn.locked():
        await asyncio.sleep(0)


async def in_the_worker(worker: ParseWorker) -> None:
    """Until the body that has its turn is all in the worker's pipe: the worker has read
    all but the pipe's 64 KiB of it, and the exchange awaits the answer."""
    await its_turn(worker)
    while worker._process is None or worker._process.stdin is None:
        await asyncio.sleep(0)
    transport = worker._process.stdin.transport
    while transport.get_write_buffer_size() > 0 or not worker._turn.locked():
        await asyncio.sleep(0.001)


def decoded(parsed) -> np.ndarray:
    return REST_INFER.decode(parsed, LIMITS["max_images"])


@pytest.fixture
async def worker():
    rejected: list[str] = []
    parser = ParseWorker(max_pending_bytes=64 * 2**20, count_rejected=rejected.append)
    parser.rejected = rejected  # type: ignore[attr-defined]
    yield parser
    await parser.close()


async def test_bodies_are_answered_each_with_its_own_images(worker) -> None:
    images = [batch(n, n) for n in (1, 200, 3, 64)]
    answers = await asyncio.gather(*(worker.parse(body(i), None, **LIMITS) for i in images))
    for sent, got in zip(images, answers, strict=True):
        np.testing.assert_array_equal(decoded(got), sent)
    with pytest.raises(InvalidInput, match="not valid JSON"):
        await worker.parse(b"{", None, **LIMITS)
    np.testing.assert_array_equal(
        decoded(await worker.parse(body(images[0]), None, **LIMITS)), images[0]
    )


async def test_a_caller_that_goes_away_never_shifts_the_next_answer(worker) -> None:
    """Cancelled while its body is in the worker, and while it waits its turn: the next
    callers still get their own answers, and the budget is given back."""
    await worker.parse(body(batch(1, 0)), None, **LIMITS)  # the worker is up
    # ~3 MB of long numbers: tens of milliseconds in the worker (refused: not n/255).
    slow = json.dumps(
        {"inputs": [{"name": "images", "datatype": "FP32", "shape": [256, 28, 28],
                     "data": [0.123456789012] * (256 * 784)}]}
    ).encode()  # fmt: skip
    small = batch(1, 9)
    in_worker = asyncio.create_task(worker.parse(slow, None, **LIMITS))
    await in_the_worker(worker)
    queued = asyncio.create_task(worker.parse(slow, None, **LIMITS))
    await asyncio.sleep(0)
    in_worker.cancel()
    queued.cancel()
    got = await worker.parse(body(small), None, **LIMITS)
    np.testing.assert_array_equal(decoded(got), small)
    for task in (in_worker, queued):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert worker.pending_bytes == 0


async def test_beyond_the_byte_budget_bodies_are_refused_at_once() -> None:
    rejected: list[str] = []
    one = body(batch(64, 1))
    parser = ParseWorker(max_pending_bytes=len(one) + 10, count_rejected=rejected.append)
    try:
        first = asyncio.create_task(parser.parse(one, None, **LIMITS))
        await asyncio.sleep(0)
        with pytest.raises(Busy, match="waiting to be parsed"):
            await parser.parse(one, None, **LIMITS)
        assert rejected == ["http_parse_queue_full"]
        np.testing.assert_array_equal(decoded(await first), batch(64, 1))
    finally:
        await parser.close()


async def test_close_finishes_the_body_in_the_worker_and_refuses_the_queued_ones(worker) -> None:
    await worker.parse(body(batch(1, 0)), None, **LIMITS)  # the worker is up
    process = worker._process
    in_worker = asyncio.create_task(worker.parse(body(batch(256, 3)), None, **LIMITS))
    await its_turn(worker)
    queued = asyncio.create_task(worker.parse(body(batch(2, 4)), None, **LIMITS))
    await asyncio.sleep(0)
    await worker.close()
    np.testing.assert_array_equal(decoded(await in_worker), batch(256, 3))
    with pytest.raises(ModelNotReady, match="shutting down"):
        await queued
    assert process.returncode == 0  # it ended at the end of its input


async def test_a_stuck_worker_is_replaced_after_the_round_trip_limit(worker, monkeypatch):
    """A worker that stops answering (here SIGSTOP) would hold every later body: past the
    limit it is killed, its body answered 503, and the next body gets a new worker."""
    monkeypatch.setattr(rest_worker, "ROUND_TRIP_TIMEOUT_S", 1.0)
    await worker.parse(body(batch(1, 0)), None, **LIMITS)
    stuck = worker._process
    os.kill(stuck.pid, signal.SIGSTOP)
    with pytest.raises(ModelNotReady, match="restarted; retry"):
        await worker.parse(body(batch(2, 5)), None, **LIMITS)
    assert stuck.returncode == -signal.SIGKILL
    np.testing.assert_array_equal(
        decoded(await worker.parse(body(batch(2, 5)), None, **LIMITS)), batch(2, 5)
    )
    assert worker._process is not stuck


async def test_a_worker_that_cannot_start_is_not_started_for_every_body(worker, monkeypatch):
    """Twice in a row failed: no new worker for a second (then longer), each body 503 with
    when to retry; once it can start again, bodies are answered."""
    monkeypatch.setattr(rest_worker, "WORKER_MODULE", "server.no_such_module")
    started = []
    real = asyncio.create_subprocess_exec

    async def spawn(*args, **kwargs):
        started.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    for _ in range(2):
        with pytest.raises(ModelNotReady, match="restarted; retry"):
            await worker.parse(body(batch(1, 1)), None, **LIMITS)
    with pytest.raises(ModelNotReady, match=r"restarting; retry in 1 s"):
        await worker.parse(body(batch(1, 1)), None, **LIMITS)
    assert len(started) == 2
    monkeypatch.setattr(rest_worker, "WORKER_MODULE", "server.parse_process")
    await asyncio.sleep(1.1)
    np.testing.assert_array_equal(
        decoded(await worker.parse(body(batch(1, 1)), None, **LIMITS)), batch(1, 1)
    )
    assert len(started) == 3
