"""The metrics endpoint (issue #17 item 10): event-loop served, /metrics only.

prometheus_client's ``start_http_server`` spent one thread per connection (300 slow
clients = 300 threads) and answered every path with the metrics.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.serverproc import start_server
from soak import hostile_http as attack
from soak import http_wire as wire
from soak.http_wire import Target, request_bytes

IDLE_CONNECTIONS = 200


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_scrape_parses_and_other_paths_are_404(app) -> None:
    base = f"http://127.0.0.1:{app.metrics_port}"
    status, headers, body = await asyncio.to_thread(get, f"{base}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"fashion_requests", "fashion_model_info", "fashion_queue_depth_images"} <= names
    for path in ("/", "/metrics/", "/metricsx", "/favicon.ico", "/../metrics"):
        status, _, body = await asyncio.to_thread(get, base + path)
        assert status == 404, path
        assert b"fashion_" not in body
    status, _, _ = await asyncio.to_thread(get_method, f"{base}/metrics", "POST")
    assert status == 405
    status, headers, body = await asyncio.to_thread(
        get, f"{base}/metrics", **{"Accept-Encoding": "gzip"}
    )
    assert headers.get("Content-Encoding") == "gzip"
    assert b"fashion_model_info" in gzip.decompress(body)
    status, headers, body = await asyncio.to_thread(
        get, f"{base}/metrics", Accept="application/openmetrics-text; version=1.0.0"
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def get_method(url: str, method: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, data=b"")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_idle_and_slow_connections_spend_no_thread(app) -> None:
    threads_before = threading.active_count()
    connections = []
    try:
        for i in range(IDLE_CONNECTIONS):
            _reader, writer = await asyncio.open_connection("127.0.0.1", app.metrics_port)
            if i % 2:  # half of them start a request and never finish it (slowloris)
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                await writer.drain()
            connections.append(writer)
        # The server still answers while they hang, from the same threads.
        status, _, body = await asyncio.to_thread(
            get, f"http://127.0.0.1:{app.metrics_port}/metrics"
        )
        assert status == 200 and b"fashion_requests_total" in body
        # to_thread itself may add a worker or two; one thread per connection would add 200.
        assert threading.active_count() - threads_before < 10
    finally:
        for writer in connections:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in connections), return_exceptions=True)


async def test_metrics_served_on_ipv6_loopback(start_app) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this kernel has no IPv6 loopback")
    app = await start_app(host="[::1]")
    status, _, body = await asyncio.to_thread(get, f"http://[::1]:{app.metrics_port}/metrics")
    assert status == 200 and b"fashion_model_info" in body


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_metrics_port_keeps_the_http_limits_with_workers(
    model_repo: Path, tmp_path: Path, workers: int
) -> None:
    """--http-header-timeout-s and --http-keepalive-timeout-s hold on /metrics as on the
    REST port. With --workers N the supervisor serves /metrics, and until this test it kept
    the built-in limits (a 10 s head, 60 s keep-alive) whatever the flags said."""
    args = ["--workers", str(workers)]
    args += ["--http-header-timeout-s", "1", "--http-keepalive-timeout-s", "2"]
    with (tmp_path / "server.log").open("w") as stderr:
        process = start_server(model_repo, args, stderr=stderr)
    try:
        target = Target("127.0.0.1", process.metrics_port, process.pid)
        reader, writer = await target.connect()
        writer.write(request_bytes("GET", "/metrics"))
        assert (await wire.read_reply(reader)).status == 200
        idle_since = time.monotonic()
        assert await wire.closed_by_server(reader, 6), "kept past --http-keepalive-timeout-s"
        assert time.monotonic() - idle_since > 1.5
        writer.close()
        result = await attack.slowloris(target, connections=5, seconds=5, byte_every_s=0.3)
        assert result["closed_by_server"] == 5, result
        assert result["closed_after_s"]["max"] < 4.0, result  # --http-header-timeout-s 1
    finally:
        process.stop()
