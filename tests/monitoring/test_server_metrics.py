"""The series the rules and the dashboard read, from a real server: readiness, queue
capacity and the memory limit follow the server's state; every metric name the rules and
the dashboard use exists, in one process and behind a ``--workers 2`` supervisor; the
``process_*`` series cover every process the server started (the REST parse workers); the
exposition passes ``promtool check metrics``."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import grpc

from bench.memory import large_json_body, post
from bench.serverproc import descendants, memory_mib, start_server
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.app import App
from server.cgroup import memory_limit_bytes
from server.process_metrics import role
from tests.e2e.conftest import Samples, parse_samples
from tests.monitoring import dashboard, rules
from tests.monitoring.prometheus import promtool

# A series name; recorded ones (level:metric:operations) are not the server's.
METRIC = re.compile(r"(?<![:\w])((?:fashion|process)_[a-z_]+)(?![:\w])")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


async def exposition(app: App) -> str:
    return await scrape(app.metrics_port)


async def scrape(metrics_port: int) -> str:
    url = f"http://127.0.0.1:{metrics_port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


async def samples(app: App) -> Samples:
    return parse_samples(await exposition(app))


async def test_ready_follows_the_readiness_state(start_app, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "fashion").mkdir(parents=True)
    app = await start_app(empty, load=False, wait_for_model=True, poll_interval_s=0)
    assert (await samples(app))["fashion_server_ready{}"] == 0  # listening, nothing loaded
    await app.plane.wait_for_model()
    assert (await samples(app))["fashion_server_ready{}"] == 0  # live, waiting


async def test_ready_is_one_while_serving_and_zero_from_shutdown(start_app) -> None:
    app = await start_app()
    assert (await samples(app))["fashion_server_ready{}"] == 1
    await app.plane.begin_shutdown()  # what stop() does first; /metrics is still up
    assert (await samples(app))["fashion_server_ready{}"] == 0


async def test_queue_capacity_is_max_queue(start_app) -> None:
    app = await start_app(max_queue=777)
    # Per loaded version: the bound is each version's own queue.
    assert (await samples(app))["fashion_queue_capacity_images{model=fashion,version=1}"] == 777


async def test_memory_limit_is_what_the_process_may_use(start_app) -> None:
    app = await start_app()
    found = await samples(app)
    limit = memory_limit_bytes()
    assert limit is not None, "Linux: a cgroup limit or MemTotal is always readable"
    assert found["fashion_memory_limit_bytes{}"] == limit
    assert 0 < found["process_resident_memory_bytes{}"] < limit


async def test_model_load_results_start_at_zero(start_app) -> None:
    found = await samples(await start_app())
    assert found["fashion_model_loads_total{model=fashion,result=loaded}"] == 1
    assert found["fashion_model_loads_total{model=fashion,result=refused}"] == 0


def names_used() -> set[str]:
    used = set()
    for group in rules.load_groups():
        for rule in group["rules"]:
            used |= set(METRIC.findall(rule["expr"]))
    board = dashboard.load()
    for query in dashboard.queries(board) + dashboard.variable_queries(board):
        used |= set(METRIC.findall(query.expr))
    return used


# Exported by the supervisor of ``--workers`` alone (a single process has no workers).
SUPERVISOR_ONLY = {"fashion_worker_restarts_total"}


async def predict_once(target: str) -> None:
    """One request, so the per-method series exist."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        await stub.Predict(pb.PredictRequest(images=[pb.Image(raw=bytes(784))]), timeout=10)


def names_exported(text: str) -> set[str]:
    families = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    return families | {f + s for f in families for s in SUFFIXES}


async def test_every_metric_the_rules_and_dashboard_read_is_exported(
    start_app, model_repo: Path
) -> None:
    app = await start_app()
    await predict_once(f"127.0.0.1:{app.port}")
    used = names_used()
    assert {"fashion_server_ready", "process_resident_memory_bytes"} <= used
    assert SUPERVISOR_ONLY <= used
    missing = used - names_exported(await exposition(app))
    assert missing == SUPERVISOR_ONLY, "read by rules or dashboard, not exported"

    # Behind a supervisor every name is there: its own and its workers' summed.
    server = await asyncio.to_thread(start_server, model_repo, ["--workers", "2"])
    try:
        await predict_once(server.target)
        text = await scrape(server.metrics_port)
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    missing = used - names_exported(text)
    assert missing == set(), "read by rules or dashboard, not exported with --workers 2"


def resident_by_label(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes"):
            series, value = line.rsplit(" ", 1)
            label = re.search(r'process="([^"]*)"', series)
            found[label.group(1) if label else ""] = float(value)
    return found


def parse_workers_started(pid: int, workers: int) -> bool:
    """Every server process (the one, or each worker) has started its REST parse worker."""
    started = [c for c in descendants(pid) if role(c) == "rest-parse"]
    return len(started) == workers


async def test_memory_series_count_every_process_the_server_started(model_repo: Path) -> None:
    """The REST parse worker, started by the first large JSON body, holds ~40 MiB per
    server process: the memory rule and the
    dashboard sum ``process_resident_memory_bytes`` against the pod's limit, so they are in
    it, labelled by what they are (and below which worker), and the sum is the sum of
    every process's resident memory. One process, then ``--workers 2``."""
    body = large_json_body(64)
    for workers in (1, 2):
        args = ["--workers", str(workers)]
        server = await asyncio.to_thread(start_server, model_repo, args)
        try:
            url = f"http://127.0.0.1:{server.http_port}/v2/models/fashion/infer"

            for _ in range(60):
                assert await asyncio.to_thread(post, url, body) == 200
                if parse_workers_started(server.pid, workers):
                    break
            assert parse_workers_started(server.pid, workers), "some worker got no large body"
            text = await scrape(server.metrics_port)
            processes = [server.pid, *descendants(server.pid)]
            on_proc = sum(memory_mib(pid)["rss_mib"] for pid in processes) * 2**20
        finally:
            assert await asyncio.to_thread(server.stop) == 0
        found = resident_by_label(text)
        children = {"rest-parse"}
        if workers == 1:
            expected = {""} | children
        else:
            expected = {"supervisor"} | {
                f"worker-{i}{child}" for i in range(workers) for child in ("", "/rest-parse")
            }
        assert set(found) == expected
        assert len(processes) == len(expected)
        # Read a moment apart: within a few per cent of each other.
        assert abs(sum(found.values()) - on_proc) < 0.05 * on_proc, (found, on_proc)
        result = promtool("check", "metrics", stdin=text)
        assert result.returncode == 0, result.stdout + result.stderr


async def test_exposition_passes_promtool_check_metrics(start_app) -> None:
    text = await exposition(await start_app())
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("fashion_server_ready", "fashion_queue_capacity_images"):
        assert f"# TYPE {name} gauge" in text
    assert "# TYPE fashion_memory_limit_bytes gauge" in text
