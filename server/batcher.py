"""Dynamic batcher: merges concurrent requests into batches counted in images.

Transport-agnostic (no grpc). Flush rules, in order:

* ``full``: the queue holds ``max_batch_size`` images or more;
* ``idle``: no batch is running, so nobody gains from waiting: a lone request is
  computed at once and never pays the batching delay;
* ``delay``: another batch is running, a slot is free, and the oldest queued
  request has waited ``max_wait_s``;
* ``shutdown``: :meth:`stop` drains what is left.

While every slot is busy the queue simply fills; under load that is what forms
large batches, with no timer involved. Requests whose caller went away
(cancelled future) or whose deadline passed are dropped at flush time, never
computed.

Where a batch runs: in the executor thread (onnxruntime releases the GIL, so the
event loop goes on serving), except batches of at most ``inline_max_images`` images
whose requests all allow it (``submit(..., inline=True)``), which run on the event loop
itself. On this kind of machine the thread hop costs more CPU than such a batch: a
1-image batch is ~0.17 ms of model time, and handing it to a thread and back ~0.24 ms
more (two thread wake-ups and the GIL changing hands), measured in docs/PERFORMANCE.md
("Small batches on the event loop"). A small request that finds the batcher idle is
computed at once, in its caller's turn of the loop: no scheduler wake-up, no task switch
(measured: 1.07x at 1 image x 32, 6 % less CPU per request, against routing it through the
scheduler so that requests reaching the loop in the same turn could join it, which at that
load formed batches of 1.07 on average). Small requests that queue while a batch runs on
the thread still share the next batch. A caller that has more requests
coming right behind this one (a stream's pipelined messages) passes ``inline=False``:
while the thread computes, the loop reads the next messages, which then share a batch;
computed on the loop, they would go one by one, each waiting for the one before.

Every batch has an id, unique in the process (every batcher counts from one shared
counter): each request of the batch gets it back in :class:`Computed`, so logs and
traces can tell which requests shared a batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

import numpy as np

from server.errors import DeadlineExpired, Overloaded

logger = logging.getLogger(__name__)

# Batch ids, shared by every batcher of the process (one version's 7 is not another's).
_BATCH_IDS = itertools.count(1)


class BatcherClosed(RuntimeError):
    """The batcher is stopped (or stopped while the batch ran): what to tell the client is
    the data plane's call, which knows why (shutdown, a version unloaded)."""


T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
# predict(batch) -> (outputs with one row per input row, tag). The tag (e.g. the
# model version that ran) is handed back to every caller of that batch.
PredictFn = Callable[[np.ndarray], tuple[np.ndarray, T]]


class BatcherMetrics(Protocol[T_contra]):
    def observe_batch(
        self,
        images: int,
        reason: str,
        inference_s: float,
        queue_waits_s: Sequence[float],
        tag: T_contra,
    ) -> None:
        """Once per computed batch: one queue wait per request, and predict's tag."""
        ...

    def set_queue_depth(self, images: int) -> None: ...
    def count_rejected(self, reason: str) -> None: ...


class Computed(NamedTuple, Generic[T]):
    """One request's rows of a computed batch, and what they waited for (statistics)."""

    outputs: np.ndarray
    tag: T
    queue_s: float  # from submit() to its batch starting
    inference_s: float  # its batch's model time (every request of the batch waited for all of it)
    batch: int  # its batch's id (unique in the process)
    batch_images: int  # images in its batch, its own included


@dataclass(eq=False)
class _Pending(Generic[T]):
    rows: np.ndarray
    future: asyncio.Future[Computed[T]]
    enqueued: float
    deadline: float | None
    inline: bool  # may run on the event loop (see the module's docstring)
    queued: bool = field(default=True)  # counted in queued_images, not yet taken or dropped


@dataclass(frozen=True, slots=True)
class _Taken(Generic[T]):
    """One batch as dispatched: its requests, why it was flushed, when, and its id."""

    requests: list[_Pending[T]]
    reason: str
    started: float  # loop.time() at dispatch: each request's queue wait ends here
    images: int
    id: int


class DynamicBatcher(Generic[T]):
    def __init__(
        self,
        predict: PredictFn[T],
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.002,
        max_queue: int = 1024,
        concurrency: int = 1,
        metrics: BatcherMetrics[T] | None = None,
        executor: Executor | None = None,
        inline_max_images: int = 0,
    ) -> None:
        """``inline_max_images``: batches of at most this many images run on the event loop
        (0: every batch runs in the executor; see the module's docstring)."""
        if max_batch_size < 1 or max_queue < 1 or concurrency < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size, max_queue, concurrency >= 1 and max_wait_s >= 0")
        if inline_max_images < 0:
            raise ValueError("inline_max_images >= 0")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.concurrency = concurrency
        self._metrics = metrics
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(concurrency, thread_name_prefix="infer")
        self._queue: collections.deque[_Pending[T]] = collections.deque()
        self._queued_images = 0
        self._running = 0  # batches handed to the executor and not yet delivered
        self._all_delivered = asyncio.Event()  # set while _running == 0 (stop() waits on it)
        self._all_delivered.set()
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = False
        # Running estimate of inference seconds per image, for deadline checks.
        self._s_per_image = 0.0
        self.inline_max_images = inline_max_images

    @property
    def queued_images(self) -> int:
        return self._queued_images

    async def start(self) -> None:
        if self._loop_task is not None:
            raise RuntimeError("batcher already started")
        self._accepting = True
        self._loop_task = asyncio.create_task(self._run(), name="batcher")

    async def submit(
        self, rows: np.ndarray, *, deadline: float | None = None, inline: bool = True
    ) -> Computed[T]:
        """Queue ``rows`` (first axis = images) and wait for their outputs.

        ``deadline`` is in ``loop.time()`` seconds. ``inline``: a small batch of this
        request may run on the event loop (False: more requests follow right behind it;
        see the module's docstring). Raises Overloaded when the
        queue is full, BatcherClosed when stopped, DeadlineExpired when the
        deadline passes before the rows are computed. The result also carries the
        request's queue wait and its batch's model time, so per-request statistics
        use the batcher's own measurements.
        """
        n = len(rows)
        if not self._accepting:
            raise BatcherClosed("the batcher is stopped")
        if n == 0:
            raise ValueError("empty batch")
        if n > self.max_queue:
            raise Overloaded(f"{n} images can never fit the queue of {self.max_queue}")
        if self._queued_images + n > self.max_queue:
            self._count_rejected("queue_full")
            raise Overloaded(
                f"queue full ({self._queued_images} of {self.max_queue} images waiting); "
                "retry with backoff"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is not None:
            if deadline <= now:
                self._count_rejected("deadline")
                raise DeadlineExpired("the deadline passed before the request was queued")
            expected_s = (self._queued_images + n) * self._s_per_image / self.concurrency
            # Only with work ahead of it (queued, or a batch running): an idle batcher
            # computes it at once, and that batch is what corrects the estimate. Refused
            # when idle too, one slow batch (a throttled CPU, a pause) made every later
            # request with a shorter deadline unmeetable for good, nothing left computed.
            busy = self._queued_images > 0 or self._running > 0
            if busy and deadline - now < expected_s:
                # Fail fast instead of computing an answer nobody will read.
                self._count_rejected("deadline_unmeetable")
                raise DeadlineExpired(
                    f"the deadline ({(deadline - now) * 1000:.1f} ms away) cannot be met: about "
                    f"{expected_s * 1000:.1f} ms of work is queued; retry later or allow more time"
                )
        pending: _Pending[T] = _Pending(rows, loop.create_future(), now, deadline, inline)
        self._queue.append(pending)
        self._queued_images += n
        if not self._running and len(self._queue) == 1:
            # Idle fast path: nothing to wait for or merge with, so no scheduler hop. A small
            # batch is computed right here on the loop, so its future is done before the
            # await below, which then does not even suspend the caller.
            self._dispatch(self._take_batch(), "full" if n >= self.max_batch_size else "idle")
        else:
            self._set_depth()
            self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The caller went away: free its queue space now, not at the next flush. Or its
            # deadline passed while it waited (grpc cancels the call then): "deadline".
            if pending.queued:
                expired = deadline is not None and deadline <= loop.time()
                self._forget(pending, "deadline" if expired else "cancelled")
            raise

    def _forget(self, pending: _Pending[T], reason: str) -> None:
        pending.queued = False
        self._queued_images -= len(pending.rows)
        self._set_depth()
        self._count_rejected(reason)

    async def stop(self) -> None:
        """Refuse new work, compute everything already queued, wait for running batches."""
        self._accepting = False
        self._wakeup.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        await self._all_delivered.wait()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    # -- the scheduling loop -------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_dead(loop.time())
            if not self._queue:
                if not self._accepting:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._running >= self.concurrency:
                await self._wait_for_slot()
                continue
            reason = self._flush_reason(loop.time())
            if reason is None:
                await self._wait_for_change(self._queue[0].enqueued + self.max_wait_s)
                continue
            self._dispatch(self._take_batch(), reason)

    def _flush_reason(self, now: float) -> str | None:
        if self._queued_images >= self.max_batch_size:
            return "full"
        if not self._accepting:
            return "shutdown"
        if not self._running:
            return "idle"
        if now - self._queue[0].enqueued >= self.max_wait_s:
            return "delay"
        return None

    async def _wait_for_slot(self) -> None:
        """Until something changes: _deliver() sets the wake-up event when a slot frees."""
        self._wakeup.clear()
        await self._wakeup.wait()

    async def _wait_for_change(self, until: float) -> None:
        """Sleep until ``until``, a new request, or a running batch finishing.

        One event and one timer handle: cheaper than asyncio.wait() over a set of futures,
        which allocates a waiter and callbacks on every call (visible in busy-server profiles).
        """
        self._wakeup.clear()
        loop = asyncio.get_running_loop()
        timer = loop.call_at(until, self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            timer.cancel()

    def _drop_dead(self, now: float) -> None:
        """Remove forgotten callers and expired deadlines, so the head is live."""
        if not self._queue or not any(
            not p.queued or p.future.done() or (p.deadline is not None and p.deadline <= now)
            for p in self._queue
        ):
            return  # the common case: nothing to drop, no new deque
        alive: collections.deque[_Pending[T]] = collections.deque()
        for p in self._queue:
            if p.queued and p.future.done():  # cancelled without passing through submit()
                self._forget(p, "cancelled")
            elif p.queued and p.deadline is not None and p.deadline <= now:
                self._forget(p, "deadline")
                p.future.set_exception(
                    DeadlineExpired(
                        f"deadline passed after {now - p.enqueued:.3f} s in the queue; not computed"
                    )
                )
            if p.queued:
                alive.append(p)
        self._queue = alive

    def _take_batch(self) -> list[_Pending[T]]:
        """Whole requests, FIFO, up to max_batch_size images (a bigger request goes alone)."""
        batch = [self._queue.popleft()]
        size = len(batch[0].rows)
        while self._queue and size + len(self._queue[0].rows) <= self.max_batch_size:
            p = self._queue.popleft()
            batch.append(p)
            size += len(p.rows)
        for p in batch:
            p.queued = False
        self._queued_images -= size
        self._set_depth()
        return batch

    def _dispatch(self, batch: list[_Pending[T]], reason: str) -> None:
        """Hand the batch to an executor thread, which hands the outcome straight back.

        Not run_in_executor: its asyncio future, chained to the executor's, costs an
        allocation and one more event-loop turn between the result and :meth:`_deliver`
        (the thread's call_soon_threadsafe sets that future, whose done-callback is then
        scheduled again); here the thread schedules :meth:`_deliver` itself, once. Worth
        1.05-1.09x in throughput and ~5 % of CPU per request (docs/PERFORMANCE.md, "The unary
        path at 1 image x 32").
        """
        loop = asyncio.get_running_loop()
        inputs = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        taken = _Taken(batch, reason, loop.time(), len(inputs), next(_BATCH_IDS))
        if len(inputs) <= self.inline_max_images and all(p.inline for p in batch):
            # On the loop, at once: cheaper than the hop (module docstring). In a context of
            # its own, as the thread's delivery is: the batch is no one request's.
            context = contextvars.Context()
            context.run(self._finish, context.run(self._outcome, inputs), taken)
            return
        self._executor.submit(self._compute, loop, inputs, taken)
        # Counted once submitted (submit raises if the executor is shut down); _deliver runs
        # on this loop, so never before this line.
        self._running += 1
        self._all_delivered.clear()

    def _compute(
        self, loop: asyncio.AbstractEventLoop, inputs: np.ndarray, taken: _Taken[T]
    ) -> None:
        """Runs in the executor thread (onnxruntime releases the GIL)."""
        outcome: tuple[np.ndarray, T, float] | BaseException
        try:
            outcome = self._outcome(inputs)
        except BaseException as exc:  # every waiter of the batch gets it (as a future would)
            outcome = exc
        try:
            # In a context of its own: the batch is no one request's (whose id a log line
            # about it would otherwise carry, server.logs).
            loop.call_soon_threadsafe(self._deliver, outcome, taken, context=contextvars.Context())
        except RuntimeError:  # the loop is closed: nobody is left to answer
            pass

    def _outcome(self, inputs: np.ndarray) -> tuple[np.ndarray, T, float] | Exception:
        """Run predict: its outputs, tag and seconds, or the exception every waiter gets."""
        try:
            t0 = time.perf_counter()
            outputs, tag = self._predict(inputs)
            if len(outputs) != len(inputs):
                raise RuntimeError(f"model returned {len(outputs)} rows for {len(inputs)} inputs")
            return outputs, tag, time.perf_counter() - t0
        except Exception as exc:
            return exc

    def _deliver(
        self, outcome: tuple[np.ndarray, T, float] | BaseException, taken: _Taken[T]
    ) -> None:
        """A batch back from the executor thread: its slot is free, then :meth:`_finish`."""
        self._running -= 1
        if not self._running:
            self._all_delivered.set()
        self._wakeup.set()  # a slot is free: the scheduler may flush the next batch
        self._finish(outcome, taken)

    def _finish(
        self, outcome: tuple[np.ndarray, T, float] | BaseException, taken: _Taken[T]
    ) -> None:
        """Hand a computed batch's rows (or its failure) to its waiters, and count it."""
        batch, images, batch_id = taken.requests, taken.images, taken.id
        if isinstance(outcome, BaseException):
            logger.error(
                "batch %d of %d images (%d requests) failed",
                batch_id,
                images,
                len(batch),
                exc_info=outcome,
                extra={"fields": {"batch": batch_id}},
            )
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(outcome)
            return
        outputs, tag, inference_s = outcome
        per_image = inference_s / images
        self._s_per_image = (
            per_image if not self._s_per_image else (0.8 * self._s_per_image + 0.2 * per_image)
        )
        waits = [taken.started - p.enqueued for p in batch]
        if self._metrics is not None:
            self._metrics.observe_batch(images, taken.reason, inference_s, waits, tag)
        offset = 0
        for p, wait in zip(batch, waits, strict=True):
            n = len(p.rows)
            if not p.future.done():
                p.future.set_result(
                    Computed(outputs[offset : offset + n], tag, wait, inference_s, batch_id, images)
                )
            offset += n

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.set_queue_depth(self._queued_images)

    def _count_rejected(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.count_rejected(reason)
