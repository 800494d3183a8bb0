"""The HTTP side of the server: one aiohttp application on the gRPC server's event loop.

It serves ``GET /metrics`` (the Prometheus exposition of the injected registry)
and answers 404 for any other path. Connections are asyncio transports, not
threads: a thousand idle or slow clients cost memory, never a thread each
(prometheus_client's ``start_http_server`` spends one thread per connection).
The Open Inference Protocol REST API (:mod:`server.rest`) is a second instance
on ``--http-port``, without ``/metrics``: its routes are added to :attr:`app`
before :meth:`HttpServer.start`.

Both ports run under the same connection limits (:mod:`server.http_limits`: a
connection cap, request-head and keep-alive timeouts, a TLS handshake timeout, quiet
answers to malformed requests), and neither names its software's versions.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from server.errors import ConfigError
from server.http_limits import SERVER_NAME, HttpLimits
from server.http_site import LimitedSite

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
# How long stop() lets an in-progress response (a scrape) finish.
SHUTDOWN_TIMEOUT_S = 2.0
# After an answer sent before its request's body was read (a refusal), how long the rest
# of the body is read and dropped so the client sees the answer, not a reset; then the
# connection is closed. aiohttp's default is 10 s.
LINGER_S = 2.0


class HttpServer:
    """``start()`` binds and serves, ``stop()`` closes every connection. One use only."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: CollectorRegistry | None,
        flag: str = "--metrics-port",
        ssl_context: ssl.SSLContext | None = None,
        client_max_size: int = 1024**2,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
        reuse_port: bool = False,
        limits: HttpLimits | None = None,
    ) -> None:
        """``registry`` None: no ``/metrics``; ``flag`` names the port in a bind error;
        ``reuse_port``: a worker of --workers N, sharing the port with its peers."""
        self.host = host
        self.requested_port = port
        self.registry = registry
        self.flag = flag
        self.ssl_context = ssl_context
        self.shutdown_timeout_s = shutdown_timeout_s
        self.reuse_port = reuse_port
        self.limits = limits or HttpLimits()
        self.app = web.Application(client_max_size=client_max_size)
        self.app.on_response_prepare.append(_server_header)
        if registry is not None:
            self.app.router.add_get(METRICS_PATH, self._metrics)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: LimitedSite | None = None

    async def start(self) -> None:
        """Bind ``host:port`` (0 = any free port, then :attr:`port` says which) and serve."""
        handler_args: dict[str, Any] = {
            "access_log": None,  # no access log: a scrape every few seconds is not news
            "keepalive_timeout": self.limits.keepalive_timeout_s,
            "lingering_time": LINGER_S,
            # Compressed bodies are inflated by server.http_body, bounded and off the loop.
            "auto_decompress": False,
        }
        runner = web.AppRunner(self.app, shutdown_timeout=self.shutdown_timeout_s, **handler_args)
        await runner.setup()
        site = LimitedSite(
            runner,
            self.host,
            self.requested_port,
            reuse_port=self.reuse_port,
            limits=self.limits,
            handler_args=handler_args,
            ssl_context=self.ssl_context,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"{self.flag}: cannot listen on {self.host}:{self.requested_port} ({exc})"
            ) from None
        self._runner = runner
        self._site = site
        # With a host name that resolves to several addresses, each is bound: report the first.
        self.port = int(runner.addresses[0][1])

    @property
    def connections(self) -> int:
        """Connections open now (TLS handshakes in progress included)."""
        return len(self._site.limiter) if self._site is not None else 0

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        # Collecting ~100 series takes about a millisecond: done on the loop, no thread.
        assert self.registry is not None  # the route exists only with a registry
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(self.registry))
        # Set as a raw header: the exposition's type carries parameters (version, charset).
        response.headers["Content-Type"] = content_type
        response.enable_compression()  # gzip or deflate when the scraper accepts it
        return response


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME
