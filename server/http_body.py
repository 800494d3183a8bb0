"""REST requests under limits: how many at once, and how their bodies are read.

* :meth:`RequestLimits.middleware`: at most ``max_concurrent`` requests in progress,
  from their head's arrival to their answer (bodies still arriving included); beyond it
  429 at once. Health checks (``/v2/health/...``) are exempt: a flood never fails a probe.
* :meth:`RequestLimits.read_body`: the body, at most ``limit`` bytes (413 when declared
  or found larger); its bytes are reserved in a server-wide :class:`BodyBudget` before
  it is read (429 when the budget is spent); it must arrive within ``timeout_s`` (408);
  ``Content-Encoding`` gzip or deflate is inflated in a thread and stops at ``limit``
  (413), any other coding is 415; ``Expect: 100-continue`` is answered only here, once
  every check has passed, so a refused client never sends its body.

Refusals whose body is left unread also close the connection (``Connection: close``,
then aiohttp reads and drops what is in flight for a moment so the answer is seen).
A client that goes away mid-body frees its buffer at once: the exception's traceback,
which would keep the request's frames and buffers alive until a full garbage
collection, is dropped.
"""

from __future__ import annotations

import asyncio
import mmap
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import ClassVar

from aiohttp import hdrs, web

from server.errors import Code, InvalidInput, Overloaded, ServingError
from server.http_limits import json_answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEALTH_PREFIX = "/v2/health/"
# Bodies at least this large are received into an anonymous mapping: pages are committed
# only as bytes arrive, and are returned to the system when the request ends or aborts.
MMAP_MIN_BYTES = 64 * 1024
CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 0}
ACCEPTED_CODINGS = "gzip, deflate"


class HttpRefusal(ServingError):
    """A refusal with its own HTTP status (and headers); ``close``: close the connection."""

    http_status: ClassVar[int] = 400
    close: ClassVar[bool] = True
    headers: ClassVar[dict[str, str]] = {}


class BodyTooLarge(HttpRefusal):
    code = Code.INVALID_ARGUMENT
    http_status = 413


class UnsupportedEncoding(HttpRefusal):
    code = Code.INVALID_ARGUMENT
    http_status = 415
    close = False
    headers: ClassVar[dict[str, str]] = {"Accept-Encoding": ACCEPTED_CODINGS}


class BodyTimeout(HttpRefusal):
    """The client did not send its body in time (408). Counted as CANCELLED, a caller that
    gave up: DEADLINE_EXCEEDED is the server too slow for the caller, a server-side error
    that the error-ratio alert pages on, and a stalled upload is not the server's fault."""

    code = Code.CANCELLED
    http_status = 408


class Busy(HttpRefusal, Overloaded):
    """Too many requests or body bytes in progress (429, retry after a second)."""

    code = Code.RESOURCE_EXHAUSTED
    http_status = 429
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class BodyBudget:
    """Bytes of request bodies that requests in progress may hold, server-wide."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.max_bytes:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


class Held:
    """What one request holds of the budget; given back once, when the request ends."""

    __slots__ = ("budget", "bytes")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.bytes = 0

    def take(self, n: int, what: str) -> None:
        if not self.budget.take(n):
            raise Busy(
                f"{self.budget.held} bytes of request bodies are in progress (at most "
                f"{self.budget.max_bytes}, --http-max-body-bytes-in-flight); {what} does not "
                "fit: retry shortly"
            )
        self.bytes += n

    def give(self, n: int) -> None:
        n = min(n, self.bytes)
        self.bytes -= n
        self.budget.give(n)

    def release(self) -> None:
        self.give(self.bytes)


HELD = web.RequestKey("held_body_bytes", Held)
# When the request's body had arrived (time.perf_counter()): where its duration starts, as a
# gRPC call's starts once its whole message has arrived. A client's upload is not the
# server's latency: timed from the head, a slow sender fed the p99 the latency alert reads.
BODY_ARRIVED = web.RequestKey("body_arrived", float)


class RequestLimits:
    def __init__(
        self,
        *,
        max_concurrent: int,
        max_body_bytes: int,
        budget_bytes: int,
        timeout_s: float,
        count_rejected: Callable[[str], None],
    ) -> None:
        self.max_concurrent = max_concurrent
        self.limit = max_body_bytes
        self.budget = BodyBudget(budget_bytes)
        self.timeout_s = timeout_s
        self.count_rejected = count_rejected
        self.in_progress = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(HEALTH_PREFIX):
            return await handler(request)
        if self.in_progress >= self.max_concurrent:
            self.count_rejected("http_concurrency")
            response = json_answer(
                {
                    "error": f"{self.in_progress} requests are in progress (at most "
                    f"{self.max_concurrent}, --http-max-concurrent-requests); retry shortly"
                },
                status=429,
                headers=Busy.headers,
            )
            if request.body_exists:
                response.force_close()  # its body is not read
            return response
        held = Held(self.budget)
        request[HELD] = held
        self.in_progress += 1
        try:
            return await handler(request)
        finally:
            self.in_progress -= 1
            held.release()

    async def read_body(self, request: web.Request) -> bytes:
        """The whole body under every limit (see the module's docstring)."""
        wbits = content_coding(request.headers.get(hdrs.CONTENT_ENCODING, ""))
        declared = request.content_length
        limit = self.limit
        if declared is not None and declared > limit:
            raise BodyTooLarge(_too_large(f"{declared} bytes", limit))
        held = request[HELD]
        if declared is not None:
            self._take(held, declared, f"this body's {declared} bytes")
            if wbits is not None:  # room for what it inflates to, at most the limit
                self._take(held, limit, "its inflated size")
        if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer proper has not started
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._receive(request, declared, held)
            request[BODY_ARRIVED] = time.perf_counter()
        except TimeoutError:
            raise BodyTimeout(
                f"the request body did not arrive within {self.timeout_s:g} s "
                "(--http-body-timeout-s)"
            ) from None
        if wbits is None:
            return body
        if declared is None:
            self._take(held, limit, "its inflated size")
        inflated = await asyncio.to_thread(inflate, body, wbits, limit)
        held.give(limit - len(inflated))
        return inflated

    def _take(self, held: Held, n: int, what: str) -> None:
        try:
            held.take(n, what)
        except Busy:
            self.count_rejected("http_body_budget")
            raise

    async def _receive(self, request: web.Request, declared: int | None, held: Held) -> bytes:
        content = request.content
        mapped = declared is not None and declared >= MMAP_MIN_BYTES
        buffer: mmap.mmap | bytearray = mmap.mmap(-1, declared or 1) if mapped else bytearray()
        size = 0
        try:
            while chunk := await content.readany():
                if declared is None:  # chunked: reserved as it comes
                    if size + len(chunk) > self.limit:
                        raise BodyTooLarge(_too_large(f"more than {self.limit} bytes", self.limit))
                    self._take(held, len(chunk), "the rest of this chunked body")
                buffer[size : size + len(chunk)] = chunk
                size += len(chunk)
            return buffer[:size] if isinstance(buffer, mmap.mmap) else bytes(buffer)
        except web.RequestPayloadError as exc:  # e.g. malformed chunked framing
            raise InvalidInput(f"the request body cannot be read: {exc}") from None
        except (ConnectionError, asyncio.CancelledError) as exc:
            # The client went away mid-body: nobody to answer. Without its traceback the
            # exception no longer keeps this frame (and the request's buffers) alive.
            exc.__traceback__ = None
            raise asyncio.CancelledError from None
        finally:
            if isinstance(buffer, mmap.mmap):
                buffer.close()
            else:
                del buffer[:]


def content_coding(header: str) -> int | None:
    """``Content-Encoding`` -> zlib's wbits (None: identity); 415 for anything else."""
    coding = header.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in CODINGS:
        return CODINGS[coding]
    raise UnsupportedEncoding(
        f"Content-Encoding {header[:32]!r} is not supported; send the body as is, or as "
        f"{ACCEPTED_CODINGS}"
    )


def inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """gzip (several members allowed) or deflate (zlib-wrapped or raw), stopped past ``limit``."""
    if wbits == 0:  # "deflate": zlib's wrapper as HTTP says, or the raw stream many send
        zlib_header = len(data) > 1 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    out = bytearray()
    rest = data
    try:
        while rest:
            inflater = zlib.decompressobj(wbits)
            out += inflater.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                raise BodyTooLarge(_too_large(f"more than {limit} bytes once inflated", limit))
            if not inflater.eof:
                raise InvalidInput("the request body cannot be read: the compressed data is cut")
            rest = inflater.unused_data if wbits > zlib.MAX_WBITS else b""
    except zlib.error as exc:
        raise InvalidInput(f"the request body cannot be read: {exc}") from None
    return bytes(out)


def _too_large(size: str, limit: int) -> str:
    return (
        f"the request body has {size}; this server accepts at most {limit} "
        "(--max-message-bytes); send fewer images per request"
    )
