"""Budgets that bound what hostile or slow clients can make the server hold (issue #28).

* :class:`CallLimit`: calls in progress on the whole server, counted by the front end
  (``--max-concurrent-rpcs``). Health checks are not counted, so a flood of idle
  streams cannot make the liveness and readiness probes fail.
* :class:`ByteBudget`: bytes of requests (and responses waiting to be written) held for
  calls in progress on the whole server (``--max-inflight-bytes``). A call that does
  not fit is refused at once with RESOURCE_EXHAUSTED: memory stays bounded however many
  calls carry large messages.
* :class:`StreamBudget`: the same for one stream (``--max-stream-inflight-bytes``), with
  backpressure instead of refusal: a request's bytes are held from the moment it is read
  until its response is written, and the stream is not read while it (or the server)
  is full, so a client that does not read its responses stops being read from (HTTP/2
  flow control then stops its writes) instead of making the server queue its requests.

What a stream that is not read costs beyond these budgets is grpc's receive window for
it (``--stream-window-bytes``, fixed in :func:`server.app.grpc_options`).

No grpc here: the gRPC binding (:mod:`server.grpc_binding`) applies them.
"""

from __future__ import annotations

import asyncio
from collections import deque

from server.errors import Overloaded


class CallLimit:
    """At most ``limit`` calls in progress; :meth:`enter` refuses the next one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def enter(self) -> None:
        """Count one more call, or raise Overloaded (RESOURCE_EXHAUSTED) when full."""
        if self.active >= self.limit:
            raise Overloaded(
                f"the server has {self.active} calls in progress (at most {self.limit}); "
                "retry with backoff"
            )
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


class ByteBudget:
    """At most ``limit`` bytes held at once, server-wide. One message always fits when
    nothing else is held, so a limit below the largest message never locks it out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: list[asyncio.Future[None]] = []

    def fits(self, n: int) -> bool:
        return not self.used or self.used + n <= self.limit

    def take(self, n: int) -> None:
        """Hold ``n`` more bytes, or raise Overloaded (RESOURCE_EXHAUSTED) when they do not fit."""
        if self.used and self.used + n > self.limit:
            raise Overloaded(
                f"the server holds {self.used} bytes of calls in progress and this message "
                f"has {n} (at most {self.limit} in all); retry with backoff"
            )
        self.used += n

    def hold(self, n: int) -> None:
        """Hold ``n`` bytes that already exist (a response to write): never refused."""
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        _wake(self._waiters)

    def freed(self) -> asyncio.Future[None]:
        """A future done at the next :meth:`give`."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


class StreamBudget:
    """One stream's requests held until answered, and its responses until written.

    :meth:`wait_for_room` is awaited before each read: it waits while the next request
    (expected as large as the stream's previous one) would not fit the stream's
    ``limit`` or the server-wide budget; the first request of an idle stream always
    fits. :meth:`arrived` then holds what was read, in both: a request larger than the
    previous one may overshoot by its own size, never more. :meth:`answered` gives the
    oldest request's bytes back when its response has been written; :meth:`close` gives
    back everything at the end.
    """

    def __init__(self, limit: int, server: ByteBudget) -> None:
        self.limit = limit
        self.server = server
        self.used = 0
        self._expected = 0  # the size of the last request read
        self._requests: deque[int] = deque()
        self._waiters: list[asyncio.Future[None]] = []

    async def wait_for_room(self) -> None:
        """Return when the next request may be read (it is not read meanwhile)."""
        n = max(self._expected, 1)  # a new stream waits while the server is full
        while True:
            # Wait for what blocks the read, only: a stream full on its own (its client
            # stopped reading) must not wake, and leave a waiter behind, at every other
            # call's give on the server; it waits for its own release (which gives to the
            # server too), then looks at the server again.
            if self.used and self.used + n > self.limit:
                freed = asyncio.get_running_loop().create_future()
                self._waiters.append(freed)
            elif not self.server.fits(n):
                freed = self.server.freed()
            else:
                return
            try:
                await freed
            finally:
                freed.cancel()  # cancelled caller: a done waiter is dropped at the next wake

    def arrived(self, n: int) -> None:
        """A request of ``n`` bytes was read: held here and server-wide until answered."""
        self._expected = n
        self.used += n
        self.server.hold(n)
        self._requests.append(n)

    def hold(self, n: int) -> None:
        """A response of ``n`` bytes waits to be written: held until :meth:`release`."""
        self.used += n
        self.server.hold(n)

    def release(self, n: int) -> None:
        self.used -= n
        self.server.give(n)
        _wake(self._waiters)

    def answered(self) -> None:
        """The oldest request's response was written (or failed): its bytes are free."""
        if self._requests:
            self.release(self._requests.popleft())

    def close(self) -> None:
        while self._requests:
            self.release(self._requests.popleft())
