"""The supervisor's ``/metrics``: its workers' series summed, and its own.

* every worker's exposition, read when scraped and every few seconds besides, merged
  by :func:`server.metrics_merge.merge` (with what dead workers had counted); read
  with it, its Triton statistics, so that a dead worker's are carried too
  (:meth:`server.coordinator.Coordinator.carry`);
* ``process_*`` for the supervisor, each worker and the processes a worker started,
  labelled ``process`` (``supervisor``, ``worker-0``, ``worker-0/rest-parse``, …);
* ``fashion_server_ready`` (every worker ready), ``fashion_workers{state}``,
  ``fashion_worker_restarts_total{reason}``, the memory limit, ``python_info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, PlatformCollector
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from server.cgroup import MemoryLimitCollector
from server.coordinator import ASK_TIMEOUT_S, Coordinator
from server.http import HttpServer
from server.http_limits import HttpLimits
from server.metrics_merge import merge, parse
from server.process_metrics import ProcessTree, Root
from server.statistics import from_dict

# How often the supervisor reads every worker's counters (what a dead worker leaves behind).
SAMPLE_EVERY_S = 2.0


class SupervisorMetrics:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.registry = CollectorRegistry()
        self.ready = Gauge(
            "fashion_server_ready",
            "1 while the server can run inference (every worker ready, not shutting down)",
            registry=self.registry,
        )
        self.workers = Gauge(
            "fashion_workers", "Worker processes, by state", ["state"], registry=self.registry
        )
        self.restarts = Counter(
            "fashion_worker_restarts",
            "Workers restarted, by how the one before ended: exit code N, signal NAME, "
            "unresponsive (killed after --worker-timeout-s without an answer) or did not "
            "come back (a restarted worker that could not join the others, stopped to try "
            "again)",
            ["reason"],
            registry=self.registry,
        )
        PlatformCollector(registry=self.registry)
        self.registry.register(MemoryLimitCollector())
        self.registry.register(ProcessTree(functools.partial(_roots, coordinator)))
        self._merged: list[Metric] = []
        self.registry.register(_Merged(self))
        self._http: HttpServer | None = None
        self.port = 0

    async def open(self, host: str, port: int, limits: HttpLimits) -> None:
        """Serve ``/metrics`` on ``host:port`` (port -1: not at all), under the same
        connection limits as a single process's."""
        if port < 0:
            return
        http = HttpServer(host=host, port=port, registry=None, limits=limits)
        http.app.router.add_get("/metrics", self._serve)
        await http.start()
        self._http = http
        self.port = http.port

    async def close(self) -> None:
        if self._http is not None:
            await self._http.stop()
            self._http = None

    async def _serve(self, request: web.Request) -> web.Response:
        await self.gather()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(self.registry))
        response.headers["Content-Type"] = content_type
        response.enable_compression()
        return response

    async def gather(self) -> None:
        """Read every live worker's exposition and merge them all."""
        workers = self.coordinator.workers
        # Only workers that have started: one still starting (a restart) answers its channel
        # only after its imports, which take a second or more on a busy machine, and has
        # counted nothing yet. Asked, it held every scrape until it answered (up to
        # ASK_TIMEOUT_S): longer than a short scrape_timeout, and the target read as down.
        live = [
            (w, w.channel)
            for w in workers
            if w.channel is not None and not w.channel.closed.is_set() and w.listening.is_set()
        ]
        replies = await asyncio.gather(
            *(self.coordinator.ask(w, "metrics", timeout_s=ASK_TIMEOUT_S) for w, _ in live),
            return_exceptions=True,
        )
        for (worker, channel), reply in zip(live, replies, strict=True):
            # A worker that answered, then died while the others were waited for (up to
            # ASK_TIMEOUT_S), had its last families carried when it died (its channel is
            # closed before): stored now, they would be counted twice until its successor
            # answers, and the sums would then fall (a counter reset to Prometheus).
            if (
                isinstance(reply, dict)
                and worker.channel is channel
                and not channel.closed.is_set()
            ):
                worker.families = parse(reply["text"])
                worker.statistics = [from_dict(item) for item in reply["statistics"]]
        self._merged = merge([w.families for w in workers], self.coordinator.carried)

    async def sample(self, stop: asyncio.Event) -> None:
        """Every few seconds until ``stop``: what a worker counted is known if it dies."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
            if stop.is_set():
                return
            with contextlib.suppress(Exception):
                await self.gather()


def _roots(coordinator: Coordinator) -> list[Root]:
    """The supervisor and every worker, labelled ``process``; :class:`ProcessTree` adds what
    each worker started (its REST parse worker). Summed by job and instance they are the
    pod's, which is what memory alerts divide by its limit."""
    roots: list[Root] = [("supervisor", os.getpid())]
    return roots + [(f"worker-{w.index}", w.pid) for w in coordinator.workers if w.pid]


class _Merged(Collector):
    def __init__(self, metrics: SupervisorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics._merged
