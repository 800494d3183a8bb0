"""The HTTP side of the server: one aiohttp application on the gRPC server's event loop.

It serves ``GET /metrics`` (the Prometheus exposition of the injected registry)
and answers 404 for any other path. Connections are asyncio transports, not
threads: a thousand idle or slow clients cost memory, never a thread each
(prometheus_client's ``start_http_server`` spends one thread per connection).
The Open Inference Protocol REST API (:mod:`server.rest`) is a second instance
on ``--http-port``, without ``/metrics``: its routes are added to :attr:`app`
before :meth:`HttpServer.start`.
"""

from __future__ import annotations

import logging
import ssl

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from server.errors import ConfigError

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
# How long stop() lets an in-progress response (a scrape) finish.
SHUTDOWN_TIMEOUT_S = 2.0


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
        self.app = web.Application(client_max_size=client_max_size)
        if registry is not None:
            self.app.router.add_get(METRICS_PATH, self._metrics)
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind ``host:port`` (0 = any free port, then :attr:`port` says which) and serve."""
        # No access log: a scrape every few seconds is not news.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.shutdown_timeout_s)
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.host,
            self.requested_port,
            reuse_port=self.reuse_port,
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
        # With a host name that resolves to several addresses, each is bound: report the first.
        self.port = int(runner.addresses[0][1])

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
