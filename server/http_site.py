"""The listening socket of an HTTP port, with every connection under a limiter.

:class:`LimitedSite` replaces aiohttp's ``TCPSite``: its protocol factory makes
:class:`server.http_limits.LimitedRequestHandler` connections that take a slot of the
port's :class:`server.http_limits.ConnectionLimiter`. With TLS the socket accepts plain
TCP and :class:`TlsGate` runs the handshake itself (``loop.start_tls``, under
``--http-tls-handshake-timeout-s``), so a pending handshake holds a slot and is evicted
like any idle connection. (asyncio's own TLS server calls the protocol only once the
handshake is done: 3,000 silent connections held 900 MiB for 60 s before.)

:func:`quiet_accept_errors`: asyncio logs ``socket.accept() out of system resource``
with a traceback on every failed accept, and retries up to the listen backlog each time
the socket is readable: ~25,000 lines a second once the process ran out of descriptors.
Here once per interval, with a count.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import resource
import ssl
import termios
from collections.abc import Callable
from typing import Any

from aiohttp import web

from server.http_limits import (
    ConnectionLimiter,
    HttpLimits,
    LimitedRequestHandler,
    RateLimitedLog,
    Slot,
)

logger = logging.getLogger(__name__)

ACCEPT_FAILED = "socket.accept() out of system resource"
# Descriptors the rest of the process needs beside one port's connections (gRPC, files).
FD_RESERVE = 64
# The listen backlog: the kernel's queue of connections not yet accepted, and also how many
# asyncio's loop accepts in one go when the socket is readable, before any of them reaches
# the limiter. So for a moment, after a burst, a port may hold up to this many descriptors
# beyond --http-max-connections, until the limiter has closed the ones it evicts to make
# room (aiohttp's default, kept: a smaller queue would drop honest clients' SYNs in bursts).
LISTEN_BACKLOG = 128


class TlsGate(asyncio.Protocol, Slot):
    """A TCP connection whose TLS handshake is in progress; then its HTTP handler.

    Holds a limiter slot from the accept on, so pending handshakes are capped and
    evictable; it is ``silent`` (closed first at the cap) until the client's first bytes
    arrive. Any application data that arrives in the handshake's last flight is handed
    to the handler once it takes over.
    """

    silent = True

    def __init__(self, site: LimitedSite) -> None:
        self.site = site
        self.last_active = asyncio.get_running_loop().time()
        self.transport: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self._eof = False
        self._evicted = False
        self._task: asyncio.Task[None] | None = None

    def evictable(self) -> bool:
        return True

    def heard(self) -> None:
        """Bytes of the handshake came from the client."""
        self.silent = False
        self.last_active = asyncio.get_running_loop().time()

    def still_silent(self) -> bool:
        """Its ClientHello may be in the socket, not yet read: the loop reads it a few turns
        after the accept, and a flood's accepts come in batches of up to the backlog."""
        if self.silent and self.transport is not None and unread_bytes(self.transport) > 0:
            self.heard()
        return self.silent

    def evict(self) -> None:
        self._evicted = True
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.site.limiter.admit(self):
            transport.abort()  # no TLS yet: nothing can be said
            return
        self._task = asyncio.ensure_future(self._handshake(transport))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        assert self.site.ssl_context is not None
        # start_tls installs its protocol on ``raw`` before its first await, and schedules
        # the reading to resume; this runs after the former and before the latter.
        loop.call_soon(self._listen, raw)
        try:
            secure = await loop.start_tls(
                raw,
                self,
                self.site.ssl_context,
                server_side=True,
                ssl_handshake_timeout=self.site.limits.tls_handshake_timeout_s,
            )
        except BaseException as exc:  # a failed or timed-out handshake, an eviction: quiet
            self.site.limiter.release(self)
            raw.abort()
            # Its traceback holds start_tls's frame, which holds the future that holds it:
            # a cycle that would keep the handshake's 256 KiB buffer until a full collection.
            exc.__traceback__ = None
            if isinstance(exc, Exception):
                return
            raise
        if isinstance(listening := raw.get_protocol(), _Listening):
            raw.set_protocol(listening.inner)  # the handshake is done: no more to see
        if secure is None or self._evicted or secure.is_closing():
            self.site.limiter.release(self)
            raw.abort()
            return
        handler = self.site.make_handler(admitted=True)
        self.site.limiter.replace(self, handler)
        secure.set_protocol(handler)
        handler.connection_made(secure)
        for data in self._early:
            handler.data_received(data)
        if self._eof:
            handler.eof_received()

    def _listen(self, raw: asyncio.Transport) -> None:
        """Put a :class:`_Listening` between ``raw`` and start_tls's protocol: asyncio tells
        nothing of a handshake's progress. Left out (the gate stays silent, ranked by its
        accept time) if the protocol is not the buffered one expected."""
        inner = raw.get_protocol()
        if isinstance(inner, asyncio.BufferedProtocol) and not raw.is_closing():
            raw.set_protocol(_Listening(inner, self))

    # Between the handshake's end and the handler's start (start_tls has returned).
    def data_received(self, data: bytes) -> None:
        self._early.append(data)

    def eof_received(self) -> bool | None:
        self._eof = True
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.site.limiter.release(self)


def unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes received on a transport's socket that nothing has read yet (0 if unknown)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    pending = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, pending, True)
    except OSError:  # closed meanwhile
        return 0
    return pending[0]


class _Listening(asyncio.BufferedProtocol):
    """Hands a raw transport's events to start_tls's protocol, telling the gate when the
    client's bytes arrive."""

    def __init__(self, inner: asyncio.BufferedProtocol, gate: TlsGate) -> None:
        self.inner = inner
        self.gate = gate

    def get_buffer(self, sizehint: int) -> Any:
        return self.inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.gate.heard()
        self.inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class LimitedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionLimiter`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limits: HttpLimits,
        handler_args: dict[str, Any],
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = LISTEN_BACKLOG,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port``: a worker of --workers N, sharing the port with its peers."""
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.limits = limits
        self.limiter = ConnectionLimiter(limits.max_connections)
        self.handler_args = handler_args
        self.malformed = RateLimitedLog(
            "malformed HTTP request from %s (%s)", level=logging.WARNING
        )

    @property
    def name(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl_context

    def make_handler(self, admitted: bool = False) -> LimitedRequestHandler:
        server = self._runner.server
        assert server is not None
        return LimitedRequestHandler(
            server,
            limiter=self.limiter,
            header_timeout_s=self.limits.header_timeout_s,
            malformed=self.malformed,
            admitted=admitted,
            **self.handler_args,
        )

    def _protocol(self) -> asyncio.Protocol:
        return TlsGate(self) if self._ssl_context is not None else self.make_handler()

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        quiet_accept_errors(loop)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < self.limits.max_connections + FD_RESERVE:
            logger.warning(
                "--http-max-connections %d is close to or above this process's open-file "
                "limit (%d): accepting will fail before the cap; raise the limit or lower "
                "the cap",
                self.limits.max_connections,
                soft,
            )
        # TLS is done by TlsGate (start_tls), so the listening socket is plain TCP.
        self._server = await loop.create_server(
            self._protocol,
            self.host,
            self.port,
            backlog=self._backlog,
            reuse_port=self.reuse_port,
        )

    async def stop(self) -> None:
        await super().stop()
        self.limiter.close_all()


_accept_log = RateLimitedLog(
    "accepting a connection failed: %s; raise the process's open-file limit or lower "
    "--http-max-connections",
    level=logging.ERROR,
)


class _AcceptErrorFilter:
    """A loop exception handler: failed accepts to a rate-limited log, the rest as before."""

    def __init__(self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]
                 | None) -> None:  # fmt: skip
        self.previous = previous

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_FAILED:
            _accept_log.note(loop.time(), context.get("exception"))
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log asyncio's failed accepts once per interval (with a count), not once per try."""
    previous = loop.get_exception_handler()
    if not isinstance(previous, _AcceptErrorFilter):
        loop.set_exception_handler(_AcceptErrorFilter(previous))
