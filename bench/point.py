"""One measured point: an API, a request size and a concurrency, against one server."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.loadgen import LoadGenerator, percentiles_ms
from bench.payload import HTTP_APIS
from bench.scrape import Snapshot, scrape
from bench.serverproc import cpu_seconds


@dataclass(frozen=True)
class Target:
    """Where to send traffic; metrics and pid are optional (a server we did not start)."""

    address: str
    metrics_address: str | None = None
    pid: int | None = None
    http_address: str | None = None  # the REST API (--http-port), for the http-* APIs


def _sleep_until(instant: float) -> None:
    time.sleep(max(0.0, instant - time.monotonic()))


def _server_sample(target: Target) -> tuple[float | None, Snapshot | None]:
    cpu = cpu_seconds(target.pid) if target.pid else None
    snap = scrape(target.metrics_address) if target.metrics_address else None
    return cpu, snap


def measure(
    load: LoadGenerator,
    target: Target,
    *,
    api: str,
    size: int,
    concurrency: int,
    connections: int,
    warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:
    address = target.http_address if api in HTTP_APIS else target.address
    if address is None:
        raise ValueError(f"API {api!r} needs the server's HTTP address (--http-port)")
    used, schedule = load.start(
        target=address,
        api=api,
        size=size,
        concurrency=concurrency,
        connections=connections,
        warmup_s=warmup_s,
        duration_s=duration_s,
    )
    _sleep_until(schedule.measure_from)
    cpu0, snap0 = _server_sample(target)
    _sleep_until(schedule.end_at)
    cpu1, snap1 = _server_sample(target)
    outcome = load.collect(used, timeout_s=warmup_s + duration_s + 30.0)
    requests = len(outcome.latencies_s)
    errors = sum(outcome.errors.values())
    server_cpu_s = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    if server_cpu_s is not None and server_cpu_s < 0:
        server_cpu_s = None  # a process of the server's tree died in the window: unknown
    return {
        "api": api,
        "size": size,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "requests": requests,
        "requests_per_s": round(requests / duration_s, 1),
        "images_per_s": round(requests * size / duration_s, 1),
        "latency_ms": percentiles_ms(outcome.latencies_s),
        "errors": errors,
        "errors_by_code": dict(outcome.errors),
        "bad_responses": outcome.bad_responses,
        "server_errors": (snap1.errors - snap0.errors) if snap0 and snap1 else None,
        "server_cpu_cores": None if server_cpu_s is None else round(server_cpu_s / duration_s, 2),
        # CPU the server spent per request: far less sensitive to other load on a shared
        # machine than throughput is.
        "server_cpu_ms_per_request": (
            round(1000 * server_cpu_s / requests, 3)
            if server_cpu_s is not None and requests
            else None
        ),
        "client_cpu_cores": round(outcome.cpu_s / duration_s, 2),
        "client_processes": used,
        "mean_batch_size": snap1.mean_batch_since(snap0) if snap0 and snap1 else None,
    }
