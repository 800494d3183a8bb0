"""--wait-for-model (issue #14 item 3): a first deploy waits for the training Job.

Live (health "") at once, ready (fashion.v1.PredictionService) only once a first
valid version is published; Predict meanwhile gets UNAVAILABLE with the reason.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import serverproc
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.app import READINESS_SERVICE
from server.main import READY_LINE, WAITING_LINE
from tests.e2e.conftest import default_model
from tests.e2e.test_lifecycle import NO_TENSORFLOW
from tests.repos import publish

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
IMAGE = pb.Image(raw=bytes(784))


async def wait_for_status(channel: grpc.aio.Channel, service: str, wanted: int) -> None:
    """Follow health Watch until ``service`` reports ``wanted`` (no sleeping)."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=service), timeout=30
    )
    async for response in watch:
        if response.status == wanted:
            watch.cancel()
            return


async def check(channel: grpc.aio.Channel, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return (await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)).status


async def test_waits_live_but_not_ready_until_a_version_is_published(
    start_app, model_repo, tmp_path
) -> None:
    repo = tmp_path / "repo"
    (repo / "fashion").mkdir(parents=True)
    app = await start_app(repo, load=False, wait_for_model=True, poll_interval_s=0.05)
    loading = asyncio.create_task(app.load())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        await wait_for_status(channel, "", SERVING)
        assert await check(channel, READINESS_SERVICE) == NOT_SERVING
        stub = pb_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Predict(pb.PredictRequest(images=[IMAGE]), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == f"waiting for a model in {repo}; retry shortly"
        assert not loading.done()
        publish(model_repo, repo)
        await wait_for_status(channel, READINESS_SERVICE, SERVING)
        assert (await stub.Predict(pb.PredictRequest(images=[IMAGE]), timeout=5)).model_version == 1
    await loading


async def test_an_invalid_first_version_is_refused_and_waiting_goes_on(
    start_app, model_repo, tmp_path, caplog
) -> None:
    repo = tmp_path / "repo"
    (repo / "fashion" / "1").mkdir(parents=True)  # no files: refused, remembered
    app = await start_app(repo, load=False, wait_for_model=True, poll_interval_s=0.05)
    loading = asyncio.create_task(app.load())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        await wait_for_status(channel, "", SERVING)
        publish(model_repo, repo, version=2)
        await wait_for_status(channel, READINESS_SERVICE, SERVING)
    await loading
    assert default_model(app).version == 2
    assert caplog.text.count("refusing model 'fashion' version 1") == 1


async def test_an_unreadable_repository_on_the_first_look_is_waited_out(
    start_app, model_repo, tmp_path, caplog
) -> None:
    """A volume not readable yet (here a symlink loop, which stops root too) when the pod
    starts: logged and looked at again, as on every later look, not a start-up failure."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "fashion").symlink_to(repo / "fashion")
    app = await start_app(repo, load=False, wait_for_model=True, poll_interval_s=0.05)
    loading = asyncio.create_task(app.load())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        await wait_for_status(channel, "", SERVING)
        assert not loading.done()
        (repo / "fashion").unlink()
        (repo / "fashion").mkdir()
        publish(model_repo, repo)
        await wait_for_status(channel, READINESS_SERVICE, SERVING)
    await loading
    # Logged, then looked at again (its config.json is the first thing read of a model).
    assert "fashion/config.json is unreadable: Too many levels" in caplog.text


def test_without_the_flag_an_empty_repository_is_still_an_error(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TENSORFLOW,
            "--model-repo",
            str(tmp_path),
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--http-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no model version" in result.stderr and "--wait-for-model" in result.stderr


def start_waiting(repo: Path, *extra: str) -> serverproc.ServerProcess:
    command = [
        sys.executable,
        "-c",
        NO_TENSORFLOW,
        "--model-repo",
        str(repo),
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--http-port",
        "0",
        "--wait-for-model",
        *extra,
    ]
    mark = WAITING_LINE.split("{")[0]
    return serverproc.start_process(command, mark, timeout_s=60)


async def test_the_process_waits_then_serves_after_sighup(model_repo, tmp_path) -> None:
    repo = tmp_path / "repo"
    server = start_waiting(repo, "--poll-interval-s", "0")  # the repository does not exist yet
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            assert await check(channel, "") == SERVING
            assert await check(channel, READINESS_SERVICE) == NOT_SERVING
            (repo / "fashion").mkdir(parents=True)
            publish(model_repo, repo)
            server.process.send_signal(signal.SIGHUP)  # polling is off: SIGHUP looks now
            line = await asyncio.to_thread(server.process.stdout.readline)
            assert line.startswith(READY_LINE.split("{")[0]), line
            await wait_for_status(channel, READINESS_SERVICE, SERVING)
            stub = pb_grpc.PredictionServiceStub(channel)
            assert (await stub.Predict(pb.PredictRequest(images=[IMAGE]), timeout=5)).model_version
        assert server.stop() == 0
    finally:
        server.stop()


def test_sigterm_while_waiting_exits_0_at_once(tmp_path) -> None:
    server = start_waiting(tmp_path, "--poll-interval-s", "3600")
    try:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    finally:
        server.stop()
