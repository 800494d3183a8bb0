"""DynamicBatcher alone, behind a plain Python predict (no model, no grpc)."""

from __future__ import annotations

import asyncio
import random
import threading

import numpy as np
import pytest

from server.batcher import BatcherClosed, DynamicBatcher
from server.errors import DeadlineExpired, Overloaded


class Recorder:
    """Records every batch; optionally blocks until released, to hold a batch 'running'."""

    def __init__(self, *, block: bool = False) -> None:
        self.batches: list[np.ndarray] = []
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.started = threading.Event()

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, str]:
        self.batches.append(rows.copy())
        self.started.set()
        assert self.release.wait(10)
        return rows * 2, f"batch{len(self.batches)}"


class Flushes:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.rejected: list[str] = []
        self.depth = 0

    def observe_batch(self, images, reason, inference_s, queue_waits_s, tag) -> None:
        self.reasons.append(reason)

    def set_queue_depth(self, images: int) -> None:
        self.depth = images

    def count_rejected(self, reason: str) -> None:
        self.rejected.append(reason)


def rows(n: int, value: int = 1) -> np.ndarray:
    return np.full((n, 2), value, dtype=np.int64)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.001)


@pytest.fixture
async def make():
    made: list[DynamicBatcher] = []

    async def factory(predict, **kwargs) -> DynamicBatcher:
        batcher = DynamicBatcher(predict, **kwargs)
        await batcher.start()
        made.append(batcher)
        return batcher

    yield factory
    for batcher in made:
        await batcher.stop()


async def test_lone_request_is_not_delayed(make) -> None:
    flushes = Flushes()
    batcher = await make(Recorder(), max_batch_size=64, max_wait_s=5.0, metrics=flushes)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out, tag, *_ = await batcher.submit(rows(1, 3))
    # The 5 s delay would show; an idle flush takes milliseconds.
    assert loop.time() - t0 < 1.0
    assert out.tolist() == [[6, 6]] and tag == "batch1"
    assert flushes.reasons == ["idle"]


async def test_full_batch_flushes_at_once_while_another_runs(make) -> None:
    predict = Recorder(block=True)
    flushes = Flushes()
    batcher = await make(predict, max_batch_size=4, max_wait_s=5.0, concurrency=2, metrics=flushes)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(predict.started.wait, 5)
    second = [asyncio.create_task(batcher.submit(rows(2, v))) for v in (1, 2)]
    await wait_until(lambda: len(predict.batches) == 2)
    predict.release.set()
    await asyncio.gather(first, *second)
    assert sorted(flushes.reasons) == ["full", "idle"]
    assert [len(b) for b in predict.batches] == [1, 4]


async def test_partial_batch_flushes_after_max_wait(make) -> None:
    predict = Recorder(block=True)
    flushes = Flushes()
    batcher = await make(
        predict, max_batch_size=64, max_wait_s=0.05, concurrency=2, metrics=flushes
    )
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(predict.started.wait, 5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    second = asyncio.create_task(batcher.submit(rows(3)))
    await wait_until(lambda: len(predict.batches) == 2)
    waited = loop.time() - t0
    predict.release.set()
    await asyncio.gather(first, second)
    # Both batches finish together, so their metrics may come in either order.
    assert sorted(flushes.reasons) == ["delay", "idle"]
    assert waited >= 0.05


async def test_queue_accumulates_while_the_only_slot_is_busy(make) -> None:
    predict = Recorder(block=True)
    flushes = Flushes()
    batcher = await make(predict, max_batch_size=64, max_wait_s=0.0, metrics=flushes)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(predict.started.wait, 5)
    rest = [asyncio.create_task(batcher.submit(rows(1, v))) for v in range(5)]
    await wait_until(lambda: batcher.queued_images == 5)
    predict.release.set()
    await asyncio.gather(first, *rest)
    assert [len(b) for b in predict.batches] == [1, 5]


async def test_results_reach_the_right_callers_under_random_concurrency(make) -> None:
    def predict(batch: np.ndarray) -> tuple[np.ndarray, None]:
        return batch * 10 + 1, None

    batcher = await make(predict, max_batch_size=16, max_wait_s=0.001, concurrency=2)
    rng = random.Random(7)

    async def client(i: int) -> None:
        for j in range(20):
            n = rng.randint(1, 9)
            x = np.arange(n * 2, dtype=np.int64).reshape(n, 2) + 1000 * i + 100 * j
            out, *_ = await batcher.submit(x)
            np.testing.assert_array_equal(out, x * 10 + 1)
            await asyncio.sleep(rng.random() * 0.002)

    await asyncio.gather(*(client(i) for i in range(16)))


async def test_one_failure_reaches_every_waiter_of_its_batch(make) -> None:
    predict = Recorder(block=True)
    calls = 0

    def failing(batch: np.ndarray) -> tuple[np.ndarray, str]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        return predict(batch)

    batcher = await make(failing, max_batch_size=64)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(predict.started.wait, 5)
    victims = [asyncio.create_task(batcher.submit(rows(1))) for _ in range(3)]
    await wait_until(lambda: batcher.queued_images == 3)
    predict.release.set()
    await first
    for victim in victims:
        with pytest.raises(RuntimeError, match="boom"):
            await victim
    # The batcher survives the failure.
    out, *_ = await batcher.submit(rows(1, 4))
    assert out.tolist() == [[8, 8]]


async def test_cancelled_callers_are_skipped(make) -> None:
    predict = Recorder(block=True)
    flushes = Flushes()
    batcher = await make(predict, max_batch_size=64, metrics=flushes)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(predict.started.wait, 5)
    gone = asyncio.create_task(batcher.submit(rows(1, 7)))
    kept = asyncio.create_task(batcher.submit(rows(1, 8)))
    await wait_until(lambda: batcher.queued_images == 2)
    gone.cancel()
    await asyncio.sleep(0)
    predict.release.set()
    await first
    out, *_ = await kept
    assert out.tolist() == [[16, 16]]
    assert [b.tolist() for b in predict.batches[1:]] == [[[8, 8]]]
    assert "cancelled" in flushes.rejected


async def test_expired_deadline_is_dropped_not_computed(make) -> None:
    predict = Recorder(block=True)
    batcher = await make(predict, max_batch_size=64)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(predict.started.wait, 5)
    loop = asyncio.get_running_loop()
    late = asyncio.create_task(batcher.submit(rows(1, 5), deadline=loop.time() + 0.02))
    await asyncio.sleep(0.05)
    predict.release.set()
    await first
    with pytest.raises(DeadlineExpired):
        await late
    assert len(predict.batches) == 1


async def test_past_deadline_is_refused_at_submit(make) -> None:
    batcher = await make(Recorder())
    loop = asyncio.get_running_loop()
    with pytest.raises(DeadlineExpired):
        await batcher.submit(rows(1), deadline=loop.time() - 1)


async def test_full_queue_rejects_at_once(make) -> None:
    predict = Recorder(block=True)
    flushes = Flushes()
    batcher = await make(predict, max_batch_size=64, max_queue=4, metrics=flushes)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(predict.started.wait, 5)
    queued = asyncio.create_task(batcher.submit(rows(3)))
    await wait_until(lambda: batcher.queued_images == 3)
    with pytest.raises(Overloaded, match="queue full"):
        await batcher.submit(rows(2))
    assert flushes.rejected == ["queue_full"]
    predict.release.set()
    await asyncio.gather(first, queued)


async def test_stop_drains_queued_requests_then_refuses(make) -> None:
    predict = Recorder(block=True)
    flushes = Flushes()
    batcher = await make(predict, max_batch_size=2, metrics=flushes)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(predict.started.wait, 5)
    queued = [asyncio.create_task(batcher.submit(rows(1, v))) for v in range(3)]
    await wait_until(lambda: batcher.queued_images == 3)
    stopping = asyncio.create_task(batcher.stop())
    await asyncio.sleep(0.01)
    with pytest.raises(BatcherClosed):
        await batcher.submit(rows(1))
    predict.release.set()
    await stopping
    results = await asyncio.gather(first, *queued)
    assert [r[0][0, 0] for r in results] == [2, 0, 2, 4]
    assert flushes.reasons == ["idle", "full", "shutdown"]


async def test_unmeetable_deadline_fails_fast(make) -> None:
    def slow(batch: np.ndarray) -> tuple[np.ndarray, None]:
        threading.Event().wait(0.01 * len(batch))  # 10 ms per image
        return batch, None

    flushes = Flushes()
    batcher = await make(slow, max_batch_size=64, metrics=flushes)
    await batcher.submit(rows(2))  # teaches the batcher ~10 ms per image
    loop = asyncio.get_running_loop()
    running = asyncio.ensure_future(batcher.submit(rows(20)))  # work ahead of the next one
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExpired, match="cannot be met"):
        await batcher.submit(rows(50), deadline=loop.time() + 0.1)  # needs ~500 ms
    assert flushes.rejected == ["deadline_unmeetable"]
    await running
    out, *_ = await batcher.submit(rows(1), deadline=loop.time() + 5)
    assert out.shape == (1, 2)


async def test_an_idle_batcher_never_refuses_a_deadline_as_unmeetable(make) -> None:
    """Nothing ahead of it: computed at once, so a wrong estimate is corrected."""
    hold = threading.Event()

    def slow_once(batch: np.ndarray) -> tuple[np.ndarray, None]:
        hold.wait(0.5)  # the first batch: ~0.5 s for 1 image
        hold.set()
        return batch, None

    flushes = Flushes()
    batcher = await make(slow_once, max_batch_size=64, metrics=flushes)
    await batcher.submit(rows(1))
    loop = asyncio.get_running_loop()
    out, *_ = await batcher.submit(rows(1), deadline=loop.time() + 0.2)
    assert out.shape == (1, 2)
    assert flushes.rejected == []


async def test_cancelled_caller_frees_its_queue_space_at_once(make) -> None:
    predict = Recorder(block=True)
    batcher = await make(predict, max_batch_size=64, max_queue=4)
    first = asyncio.create_task(batcher.submit(rows(1)))
    await asyncio.to_thread(predict.started.wait, 5)
    gone = asyncio.create_task(batcher.submit(rows(4)))
    await wait_until(lambda: batcher.queued_images == 4)
    gone.cancel()
    await asyncio.sleep(0)
    assert batcher.queued_images == 0
    kept = asyncio.create_task(batcher.submit(rows(4, 3)))  # fits again, no Overloaded
    await wait_until(lambda: batcher.queued_images == 4)
    predict.release.set()
    await first
    assert (await kept)[0].tolist() == [[6, 6]] * 4
    assert [len(b) for b in predict.batches] == [1, 4]


# -- small batches on the event loop (inline_max_images) ----------------------


class Where:
    """Records each batch's size and the thread that computed it; ``hold``: a batch of more
    than ``hold_over`` images waits for ``release`` (a batch kept running on the thread)."""

    def __init__(self, fail_first: bool = False, *, hold: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fail_first = fail_first
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.started = threading.Event()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, str]:
        self.calls.append((len(batch), threading.get_ident()))
        if self.fail_first and len(self.calls) == 1:
            raise RuntimeError("boom")
        if len(batch) > 4:
            self.started.set()
            assert self.release.wait(10)
        return batch * 2, "tag"


async def hold_the_thread(batcher: DynamicBatcher, where: Where) -> asyncio.Task:
    """A 5-image batch running on the thread until ``where.release`` is set."""
    big = asyncio.create_task(batcher.submit(rows(5)))
    await asyncio.get_running_loop().run_in_executor(None, where.started.wait, 5)
    return big


async def test_small_batches_run_on_the_event_loop_and_bigger_ones_in_the_executor(make) -> None:
    where = Where()
    flushes = Flushes()
    batcher = await make(where, max_batch_size=64, inline_max_images=4, metrics=flushes)
    loop_thread = threading.get_ident()
    for n in (1, 4, 5, 32):
        out, tag, *_ = await batcher.submit(rows(n, 3))
        assert out.tolist() == [[6, 6]] * n and tag == "tag"
    assert [n for n, _ in where.calls] == [1, 4, 5, 32]
    assert [t == loop_thread for _, t in where.calls] == [True, True, False, False]
    assert flushes.reasons == ["idle"] * 4


async def test_a_small_request_on_an_idle_batcher_is_answered_without_a_loop_turn(make) -> None:
    where = Where()
    batcher = await make(where, max_batch_size=64, inline_max_images=4)
    turns: list[int] = []
    asyncio.get_running_loop().call_soon(turns.append, 1)
    out = await batcher.submit(rows(1, 7))
    # Computed and answered before the loop ran anything else: the caller never suspended.
    assert turns == [] and out.outputs.tolist() == [[14, 14]]
    assert where.calls == [(1, threading.get_ident())]
    # Requests that reach an idle batcher in one turn are each computed as they come.
    outs = await asyncio.gather(*(batcher.submit(rows(1, v)) for v in (1, 2, 3)))
    assert [o.outputs.tolist() for o in outs] == [[[2, 2]], [[4, 4]], [[6, 6]]]
    assert [n for n, _ in where.calls] == [1, 1, 1, 1]


async def test_small_requests_that_queue_behind_a_running_batch_share_one_on_the_loop(
    make,
) -> None:
    where = Where(hold=True)
    batcher = await make(where, max_batch_size=64, inline_max_images=4)
    big = await hold_the_thread(batcher, where)
    small = [asyncio.create_task(batcher.submit(rows(1, v))) for v in (1, 2, 3)]
    await wait_until(lambda: batcher.queued_images == 3)
    where.release.set()
    outs = await asyncio.gather(*small)
    await big
    assert where.calls[1:] == [(3, threading.get_ident())]
    assert [o.outputs.tolist() for o in outs] == [[[2, 2]], [[4, 4]], [[6, 6]]]
    assert len({o.batch for o in outs}) == 1 and outs[0].batch_images == 3


async def test_a_small_batch_that_fails_fails_its_requests_and_the_batcher_goes_on(make) -> None:
    where = Where(fail_first=True)
    batcher = await make(where, max_batch_size=64, inline_max_images=4)
    with pytest.raises(RuntimeError, match="boom"):
        await batcher.submit(rows(1))
    out, *_ = await batcher.submit(rows(1, 5))
    assert out.tolist() == [[10, 10]]
    assert where.calls[-1] == (1, threading.get_ident())


async def test_a_small_batch_runs_in_no_request_s_context(make) -> None:
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
    seen: list[str] = []

    def predict(batch: np.ndarray) -> tuple[np.ndarray, None]:
        seen.append(request_id.get())
        return batch, None

    # The scheduler task copies the context its batcher was started in (e.g. during an
    # explicit load, that request's id), and the idle path runs in the request's own: a
    # batch's log lines must carry neither.
    request_id.set("the-loading-request")
    batcher = await make(predict, inline_max_images=4)
    request_id.set("a-client-request")
    await batcher.submit(rows(1))
    assert seen == [""]


async def test_stop_waits_for_nothing_after_small_batches(make) -> None:
    batcher = await make(Where(), inline_max_images=4)
    await asyncio.gather(*(batcher.submit(rows(1)) for _ in range(10)))
    await asyncio.wait_for(batcher.stop(), 5)
    with pytest.raises(BatcherClosed):
        await batcher.submit(rows(1))


async def test_a_request_that_asks_not_to_run_on_the_loop_keeps_its_batch_off_it(make) -> None:
    where = Where(hold=True)
    batcher = await make(where, max_batch_size=64, inline_max_images=4)
    loop_thread = threading.get_ident()
    where.release.set()
    await batcher.submit(rows(1), inline=False)  # alone: the idle fast path, to the thread
    where.release.clear()
    where.started.clear()
    big = await hold_the_thread(batcher, where)
    mixed = asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(1), inline=False))
    await wait_until(lambda: batcher.queued_images == 2)
    where.release.set()
    await mixed
    await big
    await batcher.submit(rows(1))
    assert [n for n, _ in where.calls] == [1, 5, 2, 1]
    # A batch runs on the loop only if every request in it allows it.
    assert [t == loop_thread for _, t in where.calls] == [False, False, False, True]


def test_inline_max_images_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="inline_max_images"):
        DynamicBatcher(Where(), inline_max_images=-1)
