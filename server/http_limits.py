"""Connection-level limits of the HTTP ports (REST and /metrics), where aiohttp has no knob.

aiohttp 3.14 bounds a request head's size (``max_line_size``, ``max_field_size``,
``max_headers``) and closes idle keep-alive connections (``keepalive_timeout``), but it
caps no connections, times no request head (a client dribbling one header byte a
second is kept until the keep-alive timeout, an hour by default), counts no TLS
handshake, logs a traceback per malformed request and answers it in its own words.
This module adds, per port:

* :class:`ConnectionLimiter`: at most ``max_connections`` connections, TLS handshakes
  in progress included. At the limit the connection that has been quiet the longest
  *without a request in progress* (idle keep-alive, a request head still arriving, a
  handshake) is closed to make room; only when every connection is busy is the new one
  refused (503). So idle or dribbling connections can never lock a health probe out.
* :class:`LimitedRequestHandler`: aiohttp's protocol with a request-head timeout
  (from the connection's start, or from a request's first byte), a cap on the head's
  bytes (431), and its own answers to malformed requests: a JSON error, no ``Server``
  version, one log line per interval (:class:`RateLimitedLog`) instead of a traceback.
* :mod:`server.http_site`: the listening socket that puts every connection (TLS
  handshakes included) under the limiter, and quiets failed accepts.

It reads a few of aiohttp's private attributes (``_waiter``, ``_request_count``,
``_request_in_progress``, ``_messages``): aiohttp is pinned, and
``tests/reliability/test_rest_hostile.py`` checks every behaviour on a real server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

if TYPE_CHECKING:
    from server.config import Settings

logger = logging.getLogger(__name__)

# What every HTTP answer says in its Server header: no Python or aiohttp version.
SERVER_NAME = "fashion-serving"
# Bytes of one request head (request line and headers) before 431. aiohttp alone allows
# 128 header lines of 8190 bytes (~2 MiB a connection while they arrive).
MAX_HEAD_BYTES = 64 * 1024
# How often a repeated warning (malformed requests, failed accepts) reaches the log.
LOG_INTERVAL_S = 10.0
# The media type of every JSON answer, without aiohttp's "; charset=utf-8": RFC 8259 defines
# no parameter for it (JSON is UTF-8), Triton and KServe's server send it bare, and KServe's
# REST client reads an error's message only when the header is exactly this.
JSON_TYPE = "application/json"


def json_answer(
    document: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``document`` as a JSON answer with ``Content-Type: application/json`` (see
    :data:`JSON_TYPE`); use it instead of ``web.json_response``."""
    return web.Response(
        body=json.dumps(document).encode(), status=status, content_type=JSON_TYPE, headers=headers
    )


@dataclass(frozen=True)
class HttpLimits:
    """Connection limits of one HTTP port (see Settings for each one's meaning)."""

    max_connections: int = 1000
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 60.0
    tls_handshake_timeout_s: float = 10.0


def limits_of(settings: Settings) -> HttpLimits:
    """The limits the settings give every HTTP port: REST and /metrics, a worker's and the
    supervisor's alike."""
    return HttpLimits(
        max_connections=settings.http_max_connections,
        header_timeout_s=settings.http_header_timeout_s,
        keepalive_timeout_s=settings.http_keepalive_timeout_s,
        tls_handshake_timeout_s=settings.http_tls_handshake_timeout_s,
    )


class RateLimitedLog:
    """One log line per ``interval_s`` for a repeated event, with how many were not logged."""

    def __init__(self, message: str, *, level: int = logging.WARNING,
                 interval_s: float = LOG_INTERVAL_S) -> None:  # fmt: skip
        self.message = message
        self.level = level
        self.interval_s = interval_s
        self._next_at = 0.0
        self._suppressed = 0

    def note(self, now: float, *args: object) -> None:
        if now < self._next_at:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} more not logged in the last {self.interval_s:g} s)"
        logger.log(self.level, self.message + (suffix if self._suppressed else ""), *args)
        self._suppressed = 0
        self._next_at = now + self.interval_s


def canned_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, for use outside aiohttp."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nServer: {SERVER_NAME}\r\n"
    )
    retry = "Retry-After: 1\r\n" if status == 503 else ""
    return (head + retry + "\r\n").encode() + body


class Slot:
    """A connection the limiter counts: evictable while no request is in progress.

    ``silent``: nothing has come from the client yet (a TLS handshake still waiting for its
    ClientHello); such a slot is closed before any that has spoken, however recent it is,
    once :meth:`still_silent` has confirmed it.
    """

    last_active: float
    silent: bool = False

    def still_silent(self) -> bool:
        """Asked of a silent slot chosen to be closed: has it spoken meanwhile?"""
        return self.silent

    def evictable(self) -> bool:
        raise NotImplementedError

    def evict(self) -> None:
        raise NotImplementedError


class ConnectionLimiter:
    """Counts one port's connections; makes room by closing the quietest evictable one:
    silent before spoken, then the one quiet the longest. Silent first, because under a
    flood of silent connections age alone ranks an honest client whose handshake is in
    flight as the quietest once the flood's newer arrivals outnumber the cap.
    """

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._slots: set[Slot] = set()
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._slots)

    def admit(self, slot: Slot) -> bool:
        if len(self._slots) >= self.max_connections:
            while True:
                victim = min(
                    (s for s in self._slots if s.evictable()),
                    key=lambda s: (not s.silent, s.last_active),
                    default=None,
                )
                if victim is None:
                    self.refused += 1
                    return False
                if not victim.silent or victim.still_silent():
                    break
                victim.silent = False  # it spoke meanwhile: ranked by its last activity now
            self._slots.discard(victim)
            self.evicted += 1
            victim.evict()
        self._slots.add(slot)
        return True

    def replace(self, old: Slot, new: Slot) -> None:
        """``new`` takes ``old``'s place (a finished TLS handshake becomes its HTTP connection)."""
        if old in self._slots:
            self._slots.discard(old)
            self._slots.add(new)

    def release(self, slot: Slot) -> None:
        self._slots.discard(slot)

    def close_all(self) -> None:
        """Evict every evictable slot (the port is closing)."""
        for slot in [s for s in self._slots if s.evictable()]:
            self._slots.discard(slot)
            slot.evict()


class LimitedRequestHandler(RequestHandler, Slot):
    """aiohttp's HTTP/1.1 protocol under a :class:`ConnectionLimiter`, with a head timeout."""

    def __init__(
        self,
        manager: web.Server,
        *,
        limiter: ConnectionLimiter,
        header_timeout_s: float,
        malformed: RateLimitedLog,
        admitted: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=asyncio.get_running_loop(), **kwargs)
        self.limiter = limiter
        self.header_timeout_s = header_timeout_s
        self.malformed = malformed
        self.last_active = self._loop.time()
        self._admitted = admitted  # True when a TLS gate already holds its slot
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._armed_at_request = 0
        self._head_bytes = 0

    # -- the limiter's view ----------------------------------------------------------

    def evictable(self) -> bool:
        return not self._request_in_progress and not self._messages

    def evict(self) -> None:
        self.force_close()

    # -- connection lifecycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._admitted and not self.limiter.admit(self):
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            transport.write(
                canned_response(
                    503,
                    "Service Unavailable",
                    f"{self.limiter.max_connections} connections are busy "
                    "(--http-max-connections); retry shortly",
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        self._arm()  # the first request's head, from the connection's start

    def connection_lost(self, exc: BaseException | None) -> None:
        self.limiter.release(self)
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        waiting = self._waiter is not None and not self._waiter.done()
        if waiting and self._head_timer is None:
            self._arm()  # a later request's head, from its first byte
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:
            self._disarm()
            self._head_bytes = 0
        elif waiting:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._close_with(431, "Request Header Fields Too Large",
                                 f"the request head is over {MAX_HEAD_BYTES} bytes")  # fmt: skip

    # -- the request-head timer ----------------------------------------------------------

    def _arm(self) -> None:
        if self.header_timeout_s > 0:
            self._armed_at_request = self._request_count
            self._head_timer = self._loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_count != self._armed_at_request or not self.evictable():
            return
        if self._head_bytes:
            self._close_with(408, "Request Timeout",
                             f"the request head took over {self.header_timeout_s:g} s "
                             "(--http-header-timeout-s)")  # fmt: skip
        else:
            self.force_close()

    def _close_with(self, status: int, reason: str, message: str) -> None:
        if self.transport is not None:
            self.transport.write(canned_response(status, reason, message))
        self.force_close()

    # -- malformed requests: our words, one log line per interval ------------------------

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; cannot send an error instead")
        if status == 500:
            text = "internal error while handling the request; it has been logged"
            logger.error("HTTP request failed", exc_info=exc)
        elif isinstance(exc, LineTooLong):
            status = 431
            text = f"a request line or header is over {self.max_field_size} bytes"
        else:
            text = "malformed HTTP/1.1 request"
        if status != 500:
            self.malformed.note(self._loop.time(), self.peername, type(exc).__name__)
        response = json_answer({"error": text}, status=status)
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response
