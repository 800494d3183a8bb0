"""``fashion-serve --workers 2`` (#25), as real processes: one supervisor, two workers sharing
the ports, real clients on many connections (each lands on a worker the kernel picks).

A worker killed under load is restarted and only the requests it held fail; a hung one is
killed and restarted (--worker-timeout-s); one that cannot rejoin is stopped and tried
again; one lost while every worker waits for a first model is restarted to wait too;
SIGTERM under load loses nothing; the metrics and Triton's statistics are the sums over
the workers; a reload, and an explicit load, reach every worker, and a change that one
worker cannot make is made by none, nor left half made by a worker lost during it; SIGHUP
ends an explicit-mode wait for a first model; a second server on the same port refuses to
start; a worker whose supervisor is killed mid-change ends; a restarted worker reports what
its peers refused as they do; a load before every worker is up is refused as retryable;
Ctrl-C while the first models load ends quietly; a load racing a publish is made."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.memory import large_json_body, post
from bench.serverproc import ServerProcess, descendants, start_server
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.process_metrics import children_by_parent, role, state
from tests.e2e.conftest import Samples, parse_samples
from tests.repos import publish

IMAGE = pb.Image(raw=bytes(784))
# A connection of its own per channel: the kernel spreads connections, not calls.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
READINESS_SERVICE = "fashion.v1.PredictionService"


@pytest.fixture
def repo(model_repo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    publish(model_repo, root, "fashion", 1)
    return root


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "server.log"
    yield path


def start(repo: Path, log: Path, *extra: str) -> ServerProcess:
    with log.open("a") as stderr:
        return start_server(
            repo,
            ["--workers", "2", "--poll-interval-s", "0", "--log-level", "info", *extra],
            stderr=stderr,
        )


def workers_of(server: ServerProcess) -> list[int]:
    """The supervisor's children (not what they started: REST parse workers)."""
    return sorted(children_by_parent().get(server.pid, []))


def exposition(server: ServerProcess) -> str:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def scrape(server: ServerProcess) -> Samples:
    return parse_samples(exposition(server))


async def traffic(
    target: str, stop: asyncio.Event, outcomes: dict[str, int], *, clients: int = 8, **fields
) -> None:
    """``clients`` connections sending one image back to back until ``stop``; every
    outcome counted by status code."""

    async def client() -> None:
        async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    await stub.Predict(pb.PredictRequest(images=[IMAGE], **fields), timeout=20)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                outcomes[code] = outcomes.get(code, 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))


async def ready(target: str) -> bool:
    async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as channel:
        request = health_pb2.HealthCheckRequest(service=READINESS_SERVICE)
        answer = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        return answer.status == health_pb2.HealthCheckResponse.SERVING


async def wait_until(check, timeout_s: float = 60.0) -> None:
    """Until ``check()`` (a plain or an async callable) is true; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def restarts(server: ServerProcess) -> float:
    return scrape(server).get("fashion_worker_restarts_total{}", 0) or 0


async def test_two_workers_share_the_port_and_sum_their_counts(repo, log) -> None:
    server = start(repo, log)
    try:
        assert len(workers_of(server)) == 2
        sent = 0
        for _ in range(16):  # 16 connections: both workers get some
            async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
                reply = await pb_grpc.PredictionServiceStub(ch).Predict(
                    pb.PredictRequest(images=[IMAGE] * 2)
                )
                assert len(reply.predictions) == 2 and reply.model_version == 1
                sent += 1
        metrics = scrape(server)
        assert metrics["fashion_requests_total{code=OK,method=Predict,model=fashion}"] == sent
        assert metrics["fashion_images_total{model=fashion,version=1}"] == 2 * sent
        assert metrics["fashion_server_ready{}"] == 1
        assert metrics["fashion_workers{state=ready}"] == 2
        # One series per process, so summed they are the pod's memory.
        rss = {k: v for k, v in metrics.items() if k.startswith("process_resident_memory_bytes")}
        assert {k.split("process=")[1].rstrip("}") for k in rss} == {
            "supervisor", "worker-0", "worker-1"
        }  # fmt: skip
        assert metrics["fashion_model_versions_loaded{model=fashion}"] == 1  # not 2
        async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
            stats = await oip_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
                oip.ModelStatisticsRequest(name="fashion")
            )
        (only,) = stats.model_stats
        assert only.inference_count == 2 * sent  # every worker's, whichever answered
        assert only.inference_stats.success.count == sent
        log_text = log.read_text()
        assert "worker 0 INFO" in log_text and "worker 1 INFO" in log_text
    finally:
        assert server.stop() == 0


async def test_a_killed_worker_is_restarted_and_only_its_requests_fail(repo, log) -> None:
    server = start(repo, log)
    try:
        stop, outcomes = asyncio.Event(), {}
        load = asyncio.create_task(traffic(server.target, stop, outcomes))
        await wait_until(lambda: outcomes.get("OK", 0) > 50)
        victim = workers_of(server)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: restarts(server) == 1)
        await wait_until(lambda: scrape(server)["fashion_server_ready{}"] == 1)
        assert victim not in workers_of(server) and len(workers_of(server)) == 2
        before = outcomes.get("OK", 0)
        await wait_until(lambda: outcomes.get("OK", 0) > before + 50)
        stop.set()
        await load
        failed = {code: n for code, n in outcomes.items() if code != "OK"}
        # The requests the killed worker held (on its connections) fail, and only those:
        # at most one in flight per client connection.
        assert sum(failed.values()) <= 8, outcomes
        assert set(failed) <= {"UNAVAILABLE", "CANCELLED", "INTERNAL"}, outcomes
        metrics = scrape(server)
        assert metrics["fashion_worker_restarts_total{reason=signal SIGKILL}"] == 1
        # What the killed worker had counted stays counted (sampled every 2 s).
        assert metrics["fashion_requests_total{code=OK,method=Predict}"] <= outcomes["OK"]
        assert metrics["fashion_requests_total{code=OK,method=Predict}"] > outcomes["OK"] / 3
    finally:
        assert server.stop() == 0


async def test_a_lost_workers_rest_parse_processes_end_with_it(repo, log) -> None:
    """A worker killed outright cannot stop what it started (its REST parse worker): it
    lived on, reparented, ~55 MiB for every worker lost (with the multiprocessing pool's
    resource tracker it had then). It ends with the worker, and the supervisor waits for
    it: no zombie is left, and /metrics reports no process that is not a worker's."""
    server = start(repo, log)
    try:
        url = f"http://127.0.0.1:{server.http_port}/v2/models/fashion/infer"
        body = large_json_body(64)

        def both_started() -> bool:
            assert post(url, body) == 200  # a connection of its own: either worker
            workers = workers_of(server)
            return all(any(role(c) == "rest-parse" for c in descendants(w)) for w in workers)

        await wait_until(lambda: asyncio.to_thread(both_started))
        victim = workers_of(server)[0]
        started = descendants(victim)
        assert [role(pid) for pid in started] == ["rest-parse"]
        os.kill(victim, signal.SIGKILL)
        # Gone, not even a zombie (pids are not reused within seconds).
        await wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in started), 10)
        await wait_until(lambda: restarts(server) == 1)
        await wait_until(lambda: scrape(server)["fashion_server_ready{}"] == 1)
        below = workers_of(server)
        assert len(below) == 2 and victim not in below
        assert not [pid for pid in below if state(pid) == "Z"]
        text = exposition(server)
        labels = set(re.findall(r'process_resident_memory_bytes\{process="([^"]+)"\}', text))
        assert labels - {"worker-0/rest-parse", "worker-1/rest-parse"} == {
            "supervisor",
            "worker-0",
            "worker-1",
        }
        assert len(labels) == 4, labels  # one parse worker: the survivor's
    finally:
        assert server.stop() == 0


async def test_a_hung_worker_is_killed_and_restarted_and_a_busy_one_is_not(repo, log) -> None:
    """A worker whose event loop stops turning (SIGSTOP here; a deadlock or a stuck call
    alike) still gets its share of new connections from the kernel, and answers none of
    them. The supervisor kills it after --worker-timeout-s and restarts it. A worker
    busy serving answers the watchdog's pings and is left alone."""
    server = start(repo, log, "--worker-timeout-s", "2")
    try:
        stop, outcomes = asyncio.Event(), {}
        load = asyncio.create_task(traffic(server.target, stop, outcomes))
        await asyncio.sleep(5)  # more than the timeout, both workers serving
        stop.set()
        await load
        assert set(outcomes) == {"OK"} and outcomes["OK"] > 50, outcomes
        assert restarts(server) == 0
        victim = workers_of(server)[0]
        os.kill(victim, signal.SIGSTOP)
        await wait_until(lambda: victim not in workers_of(server), timeout_s=30)
        await wait_until(lambda: scrape(server)["fashion_server_ready{}"] == 1)
        assert len(workers_of(server)) == 2
        metrics = scrape(server)
        assert metrics["fashion_worker_restarts_total{reason=unresponsive}"] == 1
        assert restarts(server) == 1
        assert f"(pid {victim}) has not answered for" in log.read_text()
        for _ in range(16):  # fresh connections: on both workers, the restarted one too
            assert await ready(server.target)
    finally:
        assert server.stop() == 0


async def test_a_worker_that_cannot_rejoin_is_stopped_and_tried_again(repo, log) -> None:
    """A restarted worker must serve what its peers serve. When it cannot (here the served
    version's files are gone from the repository; the survivor still has them in memory),
    the supervisor stops it and tries again with back-off, counting each try under
    "did not come back", not as a worker that died; the pod reports not ready while the
    survivor goes on answering. Once the files are back the next try joins."""
    server = start(repo, log)
    try:
        version = repo / "fashion" / "1"
        away = repo.parent / "version-1-away"
        version.rename(away)
        victim = workers_of(server)[0]
        os.kill(victim, signal.SIGKILL)
        retired = "fashion_worker_restarts_total{reason=did not come back}"
        await wait_until(lambda: scrape(server).get(retired, 0) >= 1)
        metrics = scrape(server)
        assert metrics["fashion_worker_restarts_total{reason=signal SIGKILL}"] == 1
        assert metrics["fashion_server_ready{}"] == 0
        assert not await ready(server.target)
        async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
            reply = await pb_grpc.PredictionServiceStub(ch).Predict(
                pb.PredictRequest(images=[IMAGE]), timeout=10
            )
        assert reply.model_version == 1  # the survivor serves what it has
        text = log.read_text()
        assert "worker 0 did not come back (cannot serve what the other workers serve" in text
        assert "died: exit code" not in text  # the ones it stopped itself did not die

        away.rename(version)
        await wait_until(lambda: scrape(server)["fashion_server_ready{}"] == 1)
        assert len(workers_of(server)) == 2
        assert victim not in workers_of(server)
        assert re.search(r"worker 0 \(pid \d+\) is back", log.read_text())
    finally:
        assert server.stop() == 0


async def test_sigterm_under_load_loses_nothing_in_flight(repo, log) -> None:
    server = start(repo, log, "--max-queue", "8192")
    channels = [grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) for _ in range(4)]
    calls = [
        asyncio.ensure_future(
            pb_grpc.PredictionServiceStub(channel).Predict(
                pb.PredictRequest(images=[IMAGE] * 64), timeout=30
            )
        )
        for channel in channels
        for _ in range(8)
    ]
    await asyncio.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    results = await asyncio.gather(*calls, return_exceptions=True)
    for channel in channels:
        await channel.close()
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    # Calls already inside a worker are answered; one that arrives after the drain began
    # is refused UNAVAILABLE (retryable), never lost.
    assert all(len(r.predictions) == 64 for r in answered)
    assert all(e.code() == grpc.StatusCode.UNAVAILABLE for e in refused), refused
    assert answered
    assert server.process.wait(30) == 0
    assert not workers_of(server)
    assert server.stop() == 0  # already exited: closes its output


async def test_a_reload_reaches_every_worker_and_fails_no_request(repo, log, model_repo) -> None:
    server = start(repo, log)
    try:
        stop, outcomes = asyncio.Event(), {}
        load = asyncio.create_task(traffic(server.target, stop, outcomes))
        await wait_until(lambda: outcomes.get("OK", 0) > 20)
        publish(model_repo, repo, "fashion", 2)
        server.process.send_signal(signal.SIGHUP)
        swapped = "model 'fashion' serves version 2"
        await wait_until(lambda: log.read_text().count(swapped) == 2)
        await asyncio.sleep(0.3)
        stop.set()
        await load
        assert set(outcomes) == {"OK"}, outcomes  # no request failed during the swap
        # Every connection, whichever worker it reached, sees version 2 only.
        for _ in range(12):
            async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
                index = await oip_grpc.GRPCInferenceServiceStub(ch).RepositoryIndex(
                    oip.RepositoryIndexRequest(ready=True)
                )
                assert [(m.name, m.version) for m in index.models] == [("fashion", "2")]
    finally:
        assert server.stop() == 0


async def test_an_explicit_load_reaches_every_worker_or_none(repo, log, model_repo) -> None:
    publish(model_repo, repo, "other", 1)
    publish(model_repo, repo, "broken", 1)
    meta_path = repo / "broken" / "1" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "model_sha256": "0" * 64}))
    server = start(repo, log, "--model-control-mode", "explicit", "--load-model", "fashion")
    try:
        async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
            control = oip_grpc.GRPCInferenceServiceStub(ch)
            await control.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="other"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                broken = oip.RepositoryModelLoadRequest(model_name="broken")
                await control.RepositoryModelLoad(broken)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "refused 1" in info.value.details()
        text = log.read_text()
        assert "worker 0 INFO server.manager: model 'other' serves" in text
        assert "worker 1 INFO server.manager: model 'other' serves" in text
        for _ in range(12):  # whichever worker a connection reaches serves "other"
            async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
                stub = pb_grpc.PredictionServiceStub(ch)
                reply = await stub.Predict(pb.PredictRequest(images=[IMAGE], model_name="other"))
                assert reply.model_name == "other"
                ready = await oip_grpc.GRPCInferenceServiceStub(ch).ModelReady(
                    oip.ModelReadyRequest(name="broken")
                )
                assert not ready.ready
        async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
            await oip_grpc.GRPCInferenceServiceStub(ch).RepositoryModelUnload(
                oip.RepositoryModelUnloadRequest(model_name="other")
            )
        for _ in range(12):
            async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.PredictionServiceStub(ch).Predict(
                        pb.PredictRequest(images=[IMAGE], model_name="other")
                    )
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert server.stop() == 0


def start_waiting(repo: Path, log: Path, *extra: str) -> ServerProcess:
    """``--workers 2 --wait-for-model`` on ``repo`` (empty): started once it waits."""
    from bench.serverproc import start_process
    from server.main import WAITING_LINE

    command = [
        os.sys.executable, "-m", "server.main", "--model-repo", str(repo), "--workers", "2",
        "--port", "0", "--metrics-port", "0", "--http-port", "-1", "--wait-for-model",
        "--poll-interval-s", "0", "--log-level", "info", *extra,
    ]  # fmt: skip
    with log.open("a") as stderr:
        return start_process(command, WAITING_LINE.split("{")[0], 60, stderr=stderr)


async def test_a_first_deploy_waits_in_every_worker(model_repo, tmp_path, log) -> None:
    repo = tmp_path / "empty"
    (repo / "fashion").mkdir(parents=True)
    server = start_waiting(repo, log)
    try:
        for _ in range(6):
            assert not await ready(server.target)
        assert scrape(server)["fashion_server_ready{}"] == 0
        publish(model_repo, repo, "fashion", 1)
        server.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: ready(server.target))
        for _ in range(6):
            assert await ready(server.target)
    finally:
        assert server.stop() == 0


async def test_a_worker_that_dies_while_all_wait_is_restarted_and_waits_too(
    model_repo, tmp_path, log
) -> None:
    """A first deploy can wait for the training Job for hours: a worker lost meanwhile is
    restarted (before, none was until the server had started: the pod never turned
    ready), waits with the others, and takes the first model with them. The watchdog
    watches the waiting workers too."""
    repo = tmp_path / "empty"
    (repo / "fashion").mkdir(parents=True)
    server = start_waiting(repo, log, "--worker-timeout-s", "2")
    try:
        victim, hung = workers_of(server)
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: restarts(server) == 1)
        await wait_until(lambda: re.search(r"worker \d \(pid \d+\) is back", log.read_text()))
        os.kill(hung, signal.SIGSTOP)
        await wait_until(lambda: restarts(server) == 2)
        await wait_until(lambda: len(re.findall(r"\(pid \d+\) is back", log.read_text())) == 2)
        metrics = scrape(server)
        assert metrics["fashion_worker_restarts_total{reason=signal SIGKILL}"] == 1
        assert metrics["fashion_worker_restarts_total{reason=unresponsive}"] == 1
        assert not {victim, hung} & set(workers_of(server)) and len(workers_of(server)) == 2
        for _ in range(12):  # fresh connections: both workers, the new one too, wait
            async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await pb_grpc.PredictionServiceStub(ch).Predict(
                        pb.PredictRequest(images=[IMAGE]), timeout=10
                    )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "waiting for a model in" in (refused.value.details() or "")
        publish(model_repo, repo, "fashion", 1)
        server.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: ready(server.target))
        for _ in range(12):
            assert await ready(server.target)
        assert scrape(server)["fashion_workers{state=ready}"] == 2
    finally:
        assert server.stop() == 0


def accepted_by(server: ServerProcess, connection: http.client.HTTPConnection) -> int | None:
    """The worker that accepted ``connection`` (the kernel picks it); None until one has."""
    local = connection.sock.getsockname()[1]
    for pid in workers_of(server):
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == local:
                return pid
    return None


def post_on(connection: http.client.HTTPConnection, path: str) -> str:
    try:
        connection.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
        return str(connection.getresponse().status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__


@dataclass
class ForwardedLoad:
    """A load sent over REST to one worker (the forwarder), whose peer is stopped (SIGSTOP)
    so that the change waits for it: ``load`` ends with the answer's status."""

    forwarder: int
    peer: int
    load: asyncio.Task[str]
    stopped: bool = True

    def resume_peer(self) -> None:
        os.kill(self.peer, signal.SIGCONT)
        self.stopped = False


@contextlib.asynccontextmanager
async def a_load_whose_peer_is_stopped(
    server: ServerProcess, name: str
) -> AsyncIterator[ForwardedLoad]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    held: ForwardedLoad | None = None
    try:
        connection.connect()
        await wait_until(lambda: accepted_by(server, connection))
        forwarder = accepted_by(server, connection)
        assert forwarder is not None
        (peer,) = set(workers_of(server)) - {forwarder}
        os.kill(peer, signal.SIGSTOP)
        path = f"/v2/repository/models/{name}/load"
        load = asyncio.create_task(asyncio.to_thread(post_on, connection, path))
        held = ForwardedLoad(forwarder, peer, load)
        yield held
    finally:
        connection.close()
        if held is not None and held.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(held.peer, signal.SIGCONT)


async def test_a_worker_lost_during_a_load_it_forwarded_leaves_no_change_half_made(
    repo, log, model_repo
) -> None:
    """A load reaches worker A, which asks the supervisor to make it in every worker; A dies
    while its peer B is still preparing (a slow load: B is stopped here). Closing A's
    channel used to cancel the change in the supervisor: B's plan was never committed nor
    aborted and kept B's control lock, so every later load and unload waited for ever and
    SIGTERM ended in a forced kill (exit 1). The change now runs to its end without its
    caller: B commits or aborts it, the restarted A serves what B serves, and later
    changes reach both."""
    publish(model_repo, repo, "other", 1)
    server = start(repo, log, "--model-control-mode", "explicit", "--load-model", "fashion")
    try:
        async with a_load_whose_peer_is_stopped(server, "other") as held:
            await wait_until(lambda: "loaded model 'other'" in log.read_text())  # A prepared it
            os.kill(held.forwarder, signal.SIGKILL)
            await wait_until(lambda: f"(pid {held.forwarder}) died" in log.read_text())
            held.resume_peer()
            assert await held.load != "200"  # its worker died before answering
        await wait_until(lambda: scrape(server)["fashion_server_ready{}"] == 1)
        async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
            control = oip_grpc.GRPCInferenceServiceStub(ch)
            load = oip.RepositoryModelLoadRequest(model_name="other")
            await control.RepositoryModelLoad(load, timeout=20)
        for _ in range(12):  # whichever worker a connection reaches serves "other"
            async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
                reply = await oip_grpc.GRPCInferenceServiceStub(ch).ModelReady(
                    oip.ModelReadyRequest(name="other"), timeout=10
                )
                assert reply.ready
        async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
            unload = oip.RepositoryModelUnloadRequest(model_name="other")
            await oip_grpc.GRPCInferenceServiceStub(ch).RepositoryModelUnload(unload, timeout=20)
    finally:
        assert server.stop() == 0


async def test_sighup_ends_an_explicit_mode_wait_for_a_first_model(model_repo, tmp_path, log):
    """As one process does, and as documented: the wait for the --load-model models looks
    again on SIGHUP (before, only poll mode did with --workers)."""
    repo = tmp_path / "empty"
    (repo / "fashion").mkdir(parents=True)
    explicit = ("--model-control-mode", "explicit", "--load-model", "fashion")
    server = start_waiting(repo, log, *explicit)
    try:
        assert not await ready(server.target)
        publish(model_repo, repo, "fashion", 1)
        server.process.send_signal(signal.SIGHUP)
        await wait_until(lambda: ready(server.target), timeout_s=30)
        for _ in range(6):
            assert await ready(server.target)
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("flag", ["--port", "--http-port"])
async def test_a_second_server_on_the_same_port_refuses_to_start(repo, log, flag) -> None:
    """As one process does. Both supervisors bind with SO_REUSEPORT, which the kernel allows:
    the second used to start, and new connections were split between two servers."""
    server = start(repo, log)
    try:
        taken = server.port if flag == "--port" else server.http_port
        command = [
            sys.executable, "-m", "server.main", "--model-repo", str(repo), "--workers", "2",
            "--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--metrics-port", "-1",
            flag, str(taken),
        ]  # fmt: skip
        second = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert f"cannot start: {flag}: cannot listen on 127.0.0.1:{taken}" in second.stderr
        assert f"another fashion-serve --workers server holds port {taken}" in second.stderr
        assert await ready(server.target)
    finally:
        assert server.stop() == 0


async def test_a_dead_workers_triton_statistics_stay_counted(repo, log) -> None:
    """As its /metrics counters do (before, ModelStatistics dropped what a dead worker had
    counted, while /metrics kept it)."""
    server = start(repo, log)
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    body = json.dumps(
        {"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8",
                     "data": [0] * 784}]}
    )  # fmt: skip

    async def statistics() -> oip.ModelStatistics:
        async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
            reply = await oip_grpc.GRPCInferenceServiceStub(ch).ModelStatistics(
                oip.ModelStatisticsRequest(name="fashion")
            )
        (only,) = reply.model_stats
        return only

    try:
        for _ in range(10):  # one connection: all on the worker that accepted it
            connection.request("POST", "/v2/models/fashion/infer", body=body)
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()
        victim = accepted_by(server, connection)
        scrape(server)  # the supervisor reads every worker's counts (as it does every 2 s)
        assert (await statistics()).inference_count == 10
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: restarts(server) == 1)
        await wait_until(lambda: scrape(server)["fashion_server_ready{}"] == 1)
        after = await statistics()
        assert after.inference_count == 10
        assert after.inference_stats.success.count == after.inference_stats.queue.count == 10
    finally:
        connection.close()
        assert server.stop() == 0


def ended(pid: int) -> bool:
    """Exited (gone, or a zombie left for whoever adopted it)."""
    return state(pid) in ("", "Z")


async def test_workers_holding_a_prepared_change_end_when_the_supervisor_is_gone(
    repo, log, model_repo
) -> None:
    """A worker ends when its supervisor is gone (killed outright: the OOM killer, kill -9).
    One that had prepared a change the supervisor never committed nor aborted kept the plan,
    and with it its manager's control lock: its shutdown waited for that lock for ever, and
    the process (its model sessions, its REST parse worker) lived on unseen."""
    publish(model_repo, repo, "other", 1)
    server = start(repo, log, "--model-control-mode", "explicit", "--load-model", "fashion")
    workers = workers_of(server)
    try:
        # The change waits for the stopped peer: the forwarder holds its plan.
        async with a_load_whose_peer_is_stopped(server, "other") as held:
            await wait_until(lambda: "loaded model 'other'" in log.read_text())
            os.kill(server.pid, signal.SIGKILL)
            held.resume_peer()
            # Told the server is going away (UNAVAILABLE), not INTERNAL with a traceback logged.
            assert await held.load == "503"
        await wait_until(lambda: all(ended(pid) for pid in workers), timeout_s=30)
        assert log.read_text().count("the supervisor is gone: stopping") == 2
    finally:
        for pid in workers:
            if not ended(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        server.stop()


async def index_rows(target: str) -> list[tuple[str, str, str, str]]:
    """RepositoryIndex on a connection of its own (whichever worker the kernel picks)."""
    async with grpc.aio.insecure_channel(target, options=OWN_CONNECTION) as ch:
        index = await oip_grpc.GRPCInferenceServiceStub(ch).RepositoryIndex(
            oip.RepositoryIndexRequest(), timeout=10
        )
    return [(m.name, m.version, m.state, m.reason) for m in index.models]


async def test_a_restarted_worker_reports_the_repository_as_its_peers_do(
    repo, log, model_repo
) -> None:
    """A restarted worker loads what its peers serve; it must also know what they refused
    and why. It did not: after a refused load, the peers' index said the version was
    refused, the restarted worker's "not loaded (... load it through the API)", and a
    request for the model was told the refusal by one worker and not by the other."""
    broken = publish(model_repo, repo, "broken", 1)
    meta = json.loads((broken / "metadata.json").read_text())
    (broken / "metadata.json").write_text(json.dumps({**meta, "model_sha256": "0" * 64}))
    server = start(repo, log, "--model-control-mode", "explicit", "--load-model", "fashion")
    try:
        async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await oip_grpc.GRPCInferenceServiceStub(ch).RepositoryModelLoad(
                    oip.RepositoryModelLoadRequest(model_name="broken"), timeout=20
                )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        before = await index_rows(server.target)
        assert ("broken", "1", "UNAVAILABLE") == before[0][:3]
        assert before[0][3].startswith("refused"), before
        os.kill(workers_of(server)[0], signal.SIGKILL)
        await wait_until(lambda: restarts(server) == 1)
        await wait_until(lambda: scrape(server)["fashion_server_ready{}"] == 1)
        answers = set()
        for _ in range(12):  # fresh connections: both workers, the restarted one too
            assert await index_rows(server.target) == before
            async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.PredictionServiceStub(ch).Predict(
                        pb.PredictRequest(images=[IMAGE], model_name="broken"), timeout=10
                    )
            answers.add((info.value.code(), info.value.details()))
        assert len(answers) == 1, answers
    finally:
        assert server.stop() == 0


async def test_a_restarted_worker_does_not_refuse_again_what_its_peers_refused(
    repo, log, model_repo
) -> None:
    """Poll mode: a version both workers refused is not tried (loaded, refused, logged and
    counted) again by a worker restarted since, at the next poll, nor reported otherwise."""
    broken = publish(model_repo, repo, "fashion", 2)
    meta = json.loads((broken / "metadata.json").read_text())
    (broken / "metadata.json").write_text(json.dumps({**meta, "model_sha256": "0" * 64}))
    server = start(repo, log)
    refused = "fashion_model_loads_total{model=fashion,result=refused}"
    try:
        before = await index_rows(server.target)
        assert before[1][:3] == ("fashion", "2", "UNAVAILABLE") and "refused" in before[1][3]
        counted = scrape(server)[refused]
        os.kill(workers_of(server)[0], signal.SIGKILL)
        await wait_until(lambda: restarts(server) == 1)
        await wait_until(lambda: scrape(server)["fashion_server_ready{}"] == 1)
        publish(model_repo, repo, "other", 1)  # says when the poll is done
        server.process.send_signal(signal.SIGHUP)  # a poll in every worker
        await wait_until(lambda: log.read_text().count("model 'other' serves version 1") == 2)
        for _ in range(12):
            rows = await index_rows(server.target)
            assert [row for row in rows if row[0] == "fashion"] == before
        assert log.read_text().count("refusing model 'fashion' version 2") == 2  # once each
        assert scrape(server)[refused] == counted
    finally:
        assert server.stop() == 0


def listens(pid: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN for c in psutil.Process(pid).net_connections("tcp"))


async def test_a_load_before_every_worker_is_up_is_refused_as_retryable(repo, log) -> None:
    """A worker opens the shared port before its peers have: a load it takes then cannot
    reach every worker. It was refused FAILED_PRECONDITION (HTTP 400: do not retry) saying
    "no worker is running", by a worker that was; it is UNAVAILABLE, saying why."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    command = [
        sys.executable, "-m", "server.main", "--model-repo", str(repo), "--workers", "2",
        "--host", "127.0.0.1", "--port", str(port), "--http-port", "-1", "--metrics-port", "-1",
        "--model-control-mode", "explicit", "--load-model", "fashion", "--poll-interval-s", "0",
    ]  # fmt: skip
    process = spawn(command, log)
    late = None
    try:
        while late is None:  # stopped before it imports grpc: it opens the port last
            children = psutil.Process(process.pid).children()
            if len(children) == 2:
                late = children[1].pid
                os.kill(late, signal.SIGSTOP)
            assert process.poll() is None
        target = f"127.0.0.1:{port}"

        async def first_listens() -> bool:
            return any(listens(pid) for pid in set(workers_of_pid(process.pid)) - {late})

        await wait_until(first_listens)
        if listens(late):
            pytest.skip("the second worker opened its port before it could be stopped")
        async with grpc.aio.insecure_channel(target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await oip_grpc.GRPCInferenceServiceStub(ch).RepositoryModelLoad(
                    oip.RepositoryModelLoadRequest(model_name="fashion"), timeout=10
                )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        assert "not all started yet" in info.value.details(), info.value
        os.kill(late, signal.SIGCONT)
        late = None
        await wait_until(lambda: ready(target))
        async with grpc.aio.insecure_channel(target) as ch:  # and once they are, it is taken
            await oip_grpc.GRPCInferenceServiceStub(ch).RepositoryModelLoad(
                oip.RepositoryModelLoadRequest(model_name="fashion"), timeout=10
            )
    finally:
        if late is not None:
            os.kill(late, signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def spawn(command: list[str], log: Path, *, new_session: bool = False) -> subprocess.Popen[bytes]:
    with log.open("a") as stderr:
        return subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=new_session
        )


def workers_of_pid(pid: int) -> list[int]:
    return sorted(children_by_parent().get(pid, []))


async def test_ctrl_c_while_the_first_models_load_ends_quietly(repo, log) -> None:
    """Ctrl-C reaches the supervisor and every worker at once (the terminal's process group).
    Workers already draining were then told to start serving once the first load ended in
    all of them: `control request 'start' failed` and a traceback in their log."""
    command = [
        sys.executable, "-m", "server.main", "--model-repo", str(repo), "--workers", "2",
        "--host", "127.0.0.1", "--port", "0", "--http-port", "-1", "--metrics-port", "-1",
        "--poll-interval-s", "0", "--log-level", "info",
    ]  # fmt: skip
    process = spawn(command, log, new_session=True)
    try:
        await wait_until(lambda: log.read_text().count("INFO server.app: listening on") == 2)
        slow = workers_of_pid(process.pid)[1]
        os.kill(slow, signal.SIGSTOP)  # a slow first load: the change waits for it
        await wait_until(lambda: "loaded model 'fashion'" in log.read_text())
        os.killpg(process.pid, signal.SIGINT)
        await asyncio.sleep(0.5)  # the others take it first (the slow one on SIGCONT)
        os.kill(slow, signal.SIGCONT)
        assert await asyncio.to_thread(process.wait, 30) == 0
        text = log.read_text()
        assert "Traceback" not in text and "ERROR" not in text, text
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


async def test_a_load_that_races_a_publish_is_made_not_refused(repo, log, model_repo) -> None:
    """Each worker reads the repository when it prepares a change: a version published in
    between (training publishes whenever it ends) made them disagree, and the load was
    refused, FAILED_PRECONDITION (HTTP 400), blaming "the versions that failed" when none
    had; a poll alike logged an error and changed nothing. The change is prepared again."""
    publish(model_repo, repo, "other", 1)
    server = start(repo, log, "--model-control-mode", "explicit", "--load-model", "fashion")
    try:
        async with a_load_whose_peer_is_stopped(server, "other") as held:
            await wait_until(lambda: "loaded model 'other' version 1" in log.read_text())
            publish(model_repo, repo, "other", 2)  # after the forwarder read, before its peer
            held.resume_peer()
            assert await held.load == "200"
        for _ in range(12):  # whichever worker a connection reaches serves version 2
            async with grpc.aio.insecure_channel(server.target, options=OWN_CONNECTION) as ch:
                reply = await pb_grpc.PredictionServiceStub(ch).Predict(
                    pb.PredictRequest(images=[IMAGE], model_name="other"), timeout=10
                )
            assert reply.model_version == 2
    finally:
        assert server.stop() == 0


async def test_sigterm_while_the_workers_start_is_a_clean_stop(repo, log) -> None:
    """SIGTERM to the supervisor (a rollout, a scale-down) while its workers are still
    importing: a worker has no handler yet and ends by the signal itself, having listened on
    nothing. That is not a failure: exit 0, no ERROR (before: exit 1 and `worker exit codes:
    [-15, -15]` at ERROR, a pod that "failed" for being stopped)."""
    command = [
        sys.executable, "-m", "server.main", "--model-repo", str(repo), "--workers", "2",
        "--host", "127.0.0.1", "--port", "0", "--http-port", "-1", "--metrics-port", "-1",
        "--log-level", "info",
    ]  # fmt: skip
    process = spawn(command, log, new_session=True)
    try:
        await wait_until(lambda: len(workers_of_pid(process.pid)) == 2, timeout_s=30)
        process.send_signal(signal.SIGTERM)  # the workers are still importing
        assert await asyncio.to_thread(process.wait, 30) == 0
        text = log.read_text()
        assert "ERROR" not in text, text
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
