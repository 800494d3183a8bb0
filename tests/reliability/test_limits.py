"""Concurrency limits (issue #17 item 9): idle streams cannot pile up without bound.

``--max-concurrent-streams`` caps the RPCs in progress on one connection (HTTP/2
SETTINGS_MAX_CONCURRENT_STREAMS: further calls wait in the client), and
``--max-concurrent-rpcs`` caps them on the whole server (RESOURCE_EXHAUSTED beyond).
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc

IMAGE = pb.Image(raw=bytes(784))


def connection(port: int) -> grpc.aio.Channel:
    # Its own subchannel pool: a new TCP connection even to the same target.
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


async def open_idle_streams(channel: grpc.aio.Channel, count: int) -> list:
    """PredictStream calls that send nothing: each one holds a stream and an RPC."""
    stub = pb_grpc.PredictionServiceStub(channel)
    calls = []
    for _ in range(count):
        call = stub.PredictStream()
        await call.write(pb.PredictRequest(images=[IMAGE]))
        await call.read()  # the server has it: the RPC is in progress
        calls.append(call)
    return calls


async def predict(channel: grpc.aio.Channel, timeout: float = 5.0) -> int:
    stub = pb_grpc.PredictionServiceStub(channel)
    return (await stub.Predict(pb.PredictRequest(images=[IMAGE]), timeout=timeout)).model_version


async def test_one_connection_cannot_hold_more_than_max_concurrent_streams(start_app) -> None:
    app = await start_app(max_concurrent_streams=4)
    async with connection(app.port) as busy, connection(app.port) as other:
        streams = await open_idle_streams(busy, 4)
        # The fifth call on that connection never reaches the server while four are open.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await predict(busy, timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Another connection is served as usual.
        assert await predict(other) == 1
        for call in streams:
            await call.done_writing()
        assert await predict(busy) == 1


async def test_the_server_refuses_rpcs_beyond_max_concurrent_rpcs(start_app) -> None:
    app = await start_app(max_concurrent_rpcs=6, max_concurrent_streams=100)
    async with contextlib.AsyncExitStack() as stack:
        channels = [await stack.enter_async_context(connection(app.port)) for _ in range(3)]
        streams = [call for ch in channels for call in await open_idle_streams(ch, 2)]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await predict(channels[0])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "calls in progress (at most 6)" in info.value.details()
        # Health checks are not counted (issue #28 item 6): liveness and readiness still answer.
        health = health_pb2_grpc.HealthStub(channels[2])
        for service in ("", "fashion.v1.PredictionService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        streams.pop().cancel()
        # A freed slot is taken again.
        for _ in range(100):
            with contextlib.suppress(grpc.aio.AioRpcError):
                assert await predict(channels[1]) == 1
                break
            await asyncio.sleep(0.01)  # the cancellation reaches the server
        else:
            pytest.fail("the freed slot was never available")
        for call in streams:
            call.cancel()
