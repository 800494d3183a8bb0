"""The series the rules and the dashboard read, from a real server: readiness, queue
capacity and the memory limit follow the server's state; every metric name the rules and
the dashboard use exists, in one process and behind a ``--workers 2`` supervisor; the
``process_*`` series cover every process the server started (the REST parse workers); the
exposition passes ``promtool check metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.registry import Collector

from bench.memory import large_json_body, post
from bench.serverproc import descendants, memory_mib, start_server
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.app import App
from server.cgroup import memory_limit_bytes
from server.metrics import Metrics
from server.metrics_merge import merge, parse
from server.process_metrics import role
from tests.e2e.conftest import Samples, parse_samples
from tests.monitoring import dashboard, rules
from tests.monitoring.prometheus import promtool
from tests.reliability.test_limits import connection, open_idle_streams
from tests.reliability.test_limits import predict as limits_predict

# A series name; recorded ones (level:metric:operations) are not the server's.
METRIC = re.compile(r"(?<![:\w])((?:fashion|process)_[a-z_]+)(?![:\w])")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


async def exposition(app: App) -> str:
    return await scrape(app.metrics_port)


async def scrape(metrics_port: int, accept: str = "", timeout_s: float = 5.0) -> str:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})

    def get() -> str:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
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


# What Prometheus asks for first (its default scrape_protocols).
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


async def test_the_supervisors_openmetrics_exposition_is_valid(model_repo: Path) -> None:
    """Behind ``--workers 2`` the supervisor writes the merged series itself. OpenMetrics
    wants each series' samples together and a histogram's buckets by increasing ``le``;
    the merge sorted them by their labels as text (``+Inf`` first, every method's buckets
    interleaved) and kept the text format's empty ``*_created`` families, names OpenMetrics
    reserves: prometheus_client's OpenMetrics parser refused the whole scrape."""
    server = await asyncio.to_thread(start_server, model_repo, ["--workers", "2"])
    try:
        await predict_once(server.target)  # two methods: two series of every request metric
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        text = await scrape(server.metrics_port, OPENMETRICS)
        plain = await scrape(server.metrics_port)
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    assert text.rstrip().endswith("# EOF")
    families = {family.name: family for family in openmetrics_families(text)}  # strict
    buckets: dict[str, list[float]] = {}
    for sample in families["fashion_request_duration_seconds"].samples:
        if sample.name.endswith("_bucket"):
            buckets.setdefault(sample.labels["method"], []).append(float(sample.labels["le"]))
    assert set(buckets) == {"Predict", "GetModelInfo"}
    assert all(bounds == sorted(bounds) and bounds[-1] == math.inf for bounds in buckets.values())
    assert not re.search(r"^# TYPE \S+_created ", plain, flags=re.MULTILINE)


async def test_calls_refused_at_the_servers_limits_count_as_rejected_requests(
    start_app, tmp_path: Path
) -> None:
    """A call refused beyond --max-concurrent-rpcs is RESOURCE_EXHAUSTED: left out of the
    error ratio as load shedding, which FashionServingRequestsRejected is for. Its share,
    read by promtool with the production rules from what a real server exported, was no
    sample at all (the rule counted the two queues' reasons only): no alert, whatever the
    share."""
    app = await start_app(max_concurrent_rpcs=2, max_concurrent_streams=100)
    async with connection(app.port) as channel:
        streams = await open_idle_streams(channel, 2)  # two PredictStream messages answered
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await limits_predict(channel)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in streams:
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
        await limits_predict(channel)  # a slot is free again
    found = await samples(app)
    assert found["fashion_rejected_requests_total{model=,reason=too_many_calls,version=}"] == 1
    counted = {k: v for k, v in found.items() if k.startswith("fashion_requests_total{")}
    assert sum(counted.values()) == 4  # 2 stream messages, 1 refused, 1 answered
    # The same counts every minute, one target: the share of the requests refused.
    share = "instance:fashion_overload_rejections:ratio_rate5m"
    expected = [{"labels": share + TARGET + "}", "value": 0.25}]
    assert_promql(tmp_path, found, share, expected)


async def test_readiness_probes_of_a_pod_not_ready_are_not_server_errors(
    start_app, tmp_path: Path
) -> None:
    """A pod waiting for its model answers REST readiness probes 503 (UNAVAILABLE), as it
    must. Counted as server errors, a kubelet's probes of that one pod made the job's error
    ratio 75 % here (FashionServingHighErrorRatio, critical) while no client request failed."""
    empty = tmp_path / "empty"
    (empty / "fashion").mkdir(parents=True)
    app = await start_app(empty, load=False, wait_for_model=True, poll_interval_s=0)
    await app.plane.wait_for_model()
    base = f"http://127.0.0.1:{app.http_port}/v2/health"
    for path, status in (("ready", 503), ("ready", 503), ("ready", 503), ("live", 200)):
        assert await asyncio.to_thread(http_status, f"{base}/{path}") == status
    found = await samples(app)
    assert (
        found["fashion_requests_total{code=UNAVAILABLE,method=HTTP/ServerReady,model=,version=}"]
        == 3
    )
    requests = "job:fashion_requests:rate5m"
    assert_promql(
        tmp_path,
        found,
        requests,
        [{"labels": requests + '{job="fashion-serving"}', "value": 4 / 60}],
    )
    assert_promql(tmp_path, found, "job:fashion_request_errors:ratio_rate5m", [])


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


TARGET = '{instance="10.0.0.1:9090", job="fashion-serving"'


def assert_promql(
    tmp_path: Path,
    found: Samples,
    expr: str,
    expected: list[dict[str, object]],
    gauges: tuple[str, ...] = (),
) -> None:
    """promtool evaluates ``expr`` with the production rules over the counters a real server
    exported (``found``), as one target whose counts grow by that much every minute, and
    the ``gauges`` it exported, as they were throughout."""
    counters = ("fashion_requests_total{", "fashion_rejected_requests_total{")
    series = [
        {"series": promtool_series(key), "values": f"0+{value:g}x20"}
        for key, value in found.items()
        if key.startswith(counters)
    ]
    series += [
        {"series": promtool_series(key), "values": f"{value:g}x20"}
        for key, value in found.items()
        if key.startswith(tuple(name + "{" for name in gauges))
    ]
    case = {"expr": expr, "eval_time": "10m", "exp_samples": expected}
    spec = {
        "rule_files": [str(rules.RULES)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [case]}],
    }
    test_file = tmp_path / "exported.test.yml"
    test_file.write_text(yaml.safe_dump(spec))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def promtool_series(key: str) -> str:
    """``name{a=1,b=}`` (tests.e2e.conftest.Samples) -> a promtool series of one target."""
    name, _, labels = key.partition("{")
    pairs = [pair.split("=", 1) for pair in labels.rstrip("}").split(",") if pair]
    rest = "".join(f', {k}="{v}"' for k, v in pairs if v)
    return name + TARGET + rest + "}"


def requests_counted(text: str) -> float:
    return sum(v for k, v in parse_samples(text).items() if k.startswith("fashion_requests_total{"))


def worker_pids(supervisor: int) -> list[int]:
    found = []
    for pid in descendants(supervisor):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if b"\0server.worker\0" in cmdline.read():
                found.append(pid)
    return sorted(found)


async def test_a_worker_that_dies_while_a_scrape_waits_for_its_peer_is_counted_once(
    model_repo: Path,
) -> None:
    """The supervisor reads every worker, then merges. A worker that answered and then died
    while the read still waited for a slow peer (hung, up to the 5 s a worker is waited
    for) had what it counted carried when it died, and then its answer stored as a live
    worker's: its requests counted twice (61 of 40 here), until its successor answered and
    the sum fell back, a counter reset to Prometheus (rate() and increase() jump)."""
    server = await asyncio.to_thread(start_server, model_repo, ["--workers", "2"])
    stopped = None
    try:
        sent = 40
        for _ in range(sent):  # a connection each: the kernel spreads them over both workers
            async with connection(server.port) as channel:
                await limits_predict(channel)
        assert requests_counted(await scrape(server.metrics_port)) == sent
        stopped, dying = worker_pids(server.pid)
        os.kill(stopped, signal.SIGSTOP)  # answers nothing: every read waits for it
        reading = asyncio.ensure_future(scrape(server.metrics_port, timeout_s=30))
        await asyncio.sleep(1)  # the other worker has answered that read (and the sampler's)
        os.kill(dying, signal.SIGKILL)
        seen = [requests_counted(await reading)]
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        for _ in range(100):  # until the restarted worker serves and has been read
            text = await scrape(server.metrics_port)
            seen.append(requests_counted(text))
            if (
                parse_samples(text).get("fashion_workers{state=ready}") == 2
                and len(worker_pids(server.pid)) == 2
            ):
                break
            await asyncio.sleep(0.1)
        seen.append(requests_counted(await scrape(server.metrics_port)))
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        assert await asyncio.to_thread(server.stop) == 0
    assert seen == [sent] * len(seen)


async def test_calls_whose_deadline_passes_in_the_server_count_as_deadline_exceeded(
    start_app, faults
) -> None:
    """A server too slow for its callers' deadlines: the clients get DEADLINE_EXCEEDED, which
    the error ratio counts as the server's failure (FashionServingHighErrorRatio). grpc ends
    such a call by cancelling its handler, and the server counted it CANCELLED (a caller that
    went away, not an error), and a request dropped from the queue for it ``cancelled``:
    a server missing every deadline alerted nothing."""
    app = await start_app()
    faults.hold()  # a slow model: the first batch holds, the next request waits in the queue
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        request = pb.PredictRequest(images=[pb.Image(raw=bytes(784))])
        computing = asyncio.ensure_future(stub.Predict(request, timeout=0.5))
        assert await asyncio.to_thread(faults.entered.wait, 5)
        queued = asyncio.ensure_future(stub.Predict(request, timeout=0.5))
        stream = stub.PredictStream(iter([request] * 2), timeout=0.5)
        for call in (computing, queued):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [answer async for answer in stream]
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        faults.clear()
    for _ in range(100):  # the stream's messages are counted as it ends in the server
        found = await samples(app)
        if found.get(STREAM_EXPIRED, 0) == 2:
            break
        await asyncio.sleep(0.05)
    counted = {k: v for k, v in found.items() if k.startswith("fashion_requests_total{")}
    assert counted == {
        "fashion_requests_total{code=DEADLINE_EXCEEDED,method=Predict,model=fashion,version=1}": 2,
        STREAM_EXPIRED: 2,
    }
    rejected = {k: v for k, v in found.items() if k.startswith("fashion_rejected_requests_total")}
    assert set(rejected) == {
        "fashion_rejected_requests_total{model=fashion,reason=deadline,version=1}"
    }


STREAM_EXPIRED = (
    "fashion_requests_total{code=DEADLINE_EXCEEDED,method=PredictStream,model=fashion,version=1}"
)


def worker_exposition(depth: int, capacity: int) -> str:
    """What one ``--workers`` process reports (its real Metrics) with ``depth`` of
    ``capacity`` images in the queue of version 1."""
    metrics = Metrics(CollectorRegistry(), worker=True)
    metrics.queue_depth.labels("fashion", "1").set(depth)
    metrics.queue_capacity.labels("fashion", "1").set(capacity)
    return generate_latest(metrics.registry).decode()


class Exposition(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def test_the_queue_a_worker_refuses_from_shows_as_saturated(tmp_path: Path) -> None:
    """A client's calls on one connection stay on one worker (SO_REUSEPORT spreads
    connections): its queue fills and refuses while the other worker's is empty. Each
    worker's queue is bounded by --max-queue, so saturation is that of the fullest one; the
    supervisor summed depths and capacities, so the instance read 50 % full with
    ``--workers 2`` (1/N with N) while it refused: FashionServingQueueSaturated (75 %)
    could not fire, nor the dashboard show it."""
    workers = [parse(worker_exposition(1024, 1024)), parse(worker_exposition(0, 1024))]
    registry = CollectorRegistry()
    registry.register(Exposition(merge(workers, {})))
    found = parse_samples(generate_latest(registry).decode())
    share = "instance:fashion_queue_saturation:ratio_avg5m"
    labels = share + TARGET + ', model="fashion", version="1"}'
    queue = ("fashion_queue_depth_images", "fashion_queue_capacity_images")
    assert_promql(tmp_path, found, share, [{"labels": labels, "value": 1.0}], gauges=queue)
