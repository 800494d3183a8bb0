"""Health transitions, reflection, and graceful shutdown of a real `fashion-serve` process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bench import serverproc
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.app import READINESS_SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The server must import and serve where TensorFlow cannot even be imported.
NO_TENSORFLOW = (
    "import sys\n"
    "for name in ('tensorflow', 'keras', 'tf2onnx', 'training.train', 'training.export'):\n"
    "    sys.modules[name] = None\n"
    "from server.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


async def check(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return response.status


async def test_health_not_serving_until_warm_then_serving_then_not_serving(start_app) -> None:
    app = await start_app(load=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=READINESS_SERVICE)
        )
        assert (await watch.read()).status == NOT_SERVING
        assert await check(channel, "") == NOT_SERVING
        await app.load()
        assert (await watch.read()).status == SERVING
        assert await check(channel, "") == SERVING
        assert await check(channel, READINESS_SERVICE) == SERVING
        stopping = asyncio.create_task(app.stop(grace_s=2.0))
        assert (await watch.read()).status == NOT_SERVING
        await stopping


async def test_reflection_lists_the_services(app, channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
        break
    assert {"fashion.v1.PredictionService", "grpc.health.v1.Health"} <= names


def start_process(model_repo: Path, *extra: str) -> tuple[subprocess.Popen[str], int, int]:
    """A `fashion-serve` process with TensorFlow unimportable -> (process, port, metrics port)."""
    command = [
        sys.executable,
        "-c",
        NO_TENSORFLOW,
        "--model-repo",
        str(model_repo),
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--http-port",
        "0",
        "--grace-s",
        "10",
        *extra,
    ]
    server = serverproc.start_process(command, serverproc.READY_MARK, timeout_s=60)
    return server.process, server.port, server.metrics_port


def queued_images(metrics_port: int) -> float:
    """Images queued in every model version's batcher (the gauge is per model version)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return sum(
            float(line.split()[-1])
            for line in response.read().decode().splitlines()
            if line.startswith("fashion_queue_depth_images{")
        )


async def test_sigterm_loses_no_in_flight_request(model_repo) -> None:
    process, port, metrics_port = start_process(
        model_repo, "--max-batch-size", "8", "--max-queue", "8192", "--threads", "1"
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            request = pb.PredictRequest(
                images=[pb.Image(raw=bytes(range(256)) * 3 + bytes(16))] * 64
            )
            waiting = [asyncio.ensure_future(stub.Predict(request, timeout=30)) for _ in range(64)]
            # SIGTERM only once most requests are inside the server, queued.
            while await asyncio.to_thread(queued_images, metrics_port) < 32 * 64:
                assert not all(w.done() for w in waiting), "server finished before SIGTERM"
            in_server = await asyncio.to_thread(queued_images, metrics_port) // 64
            process.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*waiting, return_exceptions=True)
            ok = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, BaseException)]
            # Every request accepted before shutdown completed, with all its predictions.
            assert len(ok) >= in_server
            assert all(len(r.predictions) == 64 for r in ok)
            # Anything else was explicitly refused as retryable, never cancelled or lost.
            assert all(r.code() == grpc.StatusCode.UNAVAILABLE for r in refused), refused[:3]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Predict(pb.PredictRequest(images=[pb.Image(raw=bytes(784))]), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def run_until_exit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the TF-free server with ``args`` when it is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cuda_without_cuda_refuses_to_start(model_repo) -> None:
    result = run_until_exit(
        "--model-repo", str(model_repo), "--port", "0", "--metrics-port", "-1", "--http-port", "-1",
        "--device", "cuda",
    )  # fmt: skip
    assert result.returncode == 1
    assert "CUDAExecutionProvider" in result.stderr and "--device" in result.stderr


def test_invalid_setting_exits_2_with_the_name(model_repo) -> None:
    result = run_until_exit(
        "--model-repo", str(model_repo), env={**os.environ, "FASHION_PORT": "x"}
    )
    assert result.returncode == 2
    assert "FASHION_PORT must be an integer" in result.stderr


def test_empty_repository_exits_1_with_advice(tmp_path) -> None:
    result = run_until_exit(
        "--model-repo", str(tmp_path), "--port", "0", "--metrics-port", "-1", "--http-port", "-1"
    )
    assert result.returncode == 1
    assert "no model version" in result.stderr and "fashion-train" in result.stderr


def test_port_in_use_is_a_clear_error(model_repo) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for flag in ("--port", "--metrics-port", "--http-port"):
            others = [f for f in ("--port", "--metrics-port", "--http-port") if f != flag]
            free = [x for f in others for x in (f, "0")]
            result = run_until_exit("--model-repo", str(model_repo), flag, str(port), *free)
            assert result.returncode == 1, result.stderr
            assert f"{flag}: cannot listen on 127.0.0.1:{port}" in result.stderr
            assert "Traceback" not in result.stderr
