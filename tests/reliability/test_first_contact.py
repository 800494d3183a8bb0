"""First contact through standard tools: grpc_health_probe-style Check/Watch for every
service the server serves, and grpcurl-style reflection describing every method."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from server.oip import SERVICE as OIP_SERVICE
from server.servicer import SERVICE_NAME

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Each service a client can call: `grpc_health_probe -service=NAME` must know it.
SERVED = (SERVICE_NAME, OIP_SERVICE.full_name)


def describe_every_method(target: str) -> set[str]:
    """What grpcurl does for `describe` then a call: resolve each method's message types."""
    methods = set()
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        for name in database.get_services():
            for method in pool.FindServiceByName(name).methods:
                pool.FindMessageTypeByName(method.input_type.full_name)
                pool.FindMessageTypeByName(method.output_type.full_name)
                methods.add(f"{name}/{method.name}")
    return methods


async def test_reflection_describes_every_registered_service(app) -> None:
    methods = await asyncio.to_thread(describe_every_method, f"127.0.0.1:{app.port}")
    for method in (
        f"{SERVICE_NAME}/Predict",
        f"{OIP_SERVICE.full_name}/ModelInfer",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ):
        assert method in methods


async def test_reflection_resolves_methods_as_symbols(app) -> None:
    """`grpcurl describe fashion.v1.PredictionService.Predict` asks for the file containing
    the method's name (grpc-go's reflection knows methods): it got NOT_FOUND here."""
    methods = await asyncio.to_thread(describe_every_method, f"127.0.0.1:{app.port}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=10)
        for method in sorted(methods):
            symbol = method.replace("/", ".")
            await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
            answer = await call.read()
            assert answer.WhichOneof("message_response") == "file_descriptor_response", symbol
        for unknown in ("fashion.v1.PredictionService.NoSuchMethod", "no.such.Service.Method"):
            await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=unknown))
            answer = await call.read()
            assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_health_knows_every_served_service(app) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", *SERVED):
            request = health_pb2.HealthCheckRequest(service=service)
            assert (await stub.Check(request, timeout=5)).status == SERVING, service


async def test_health_watch_follows_load_and_drain_for_every_service(start_app) -> None:
    app = await start_app(load=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = {
            name: stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=30)
            for name in SERVED
        }
        # Before the first model: NOT_SERVING, not SERVICE_UNKNOWN.
        assert {name: (await w.read()).status for name, w in watches.items()} == dict.fromkeys(
            SERVED, NOT_SERVING
        )
        await app.load()
        assert {name: (await w.read()).status for name, w in watches.items()} == dict.fromkeys(
            SERVED, SERVING
        )
        stop = asyncio.create_task(app.stop(grace_s=1.0))
        assert {name: (await w.read()).status for name, w in watches.items()} == dict.fromkeys(
            SERVED, NOT_SERVING
        )
        for watch in watches.values():
            watch.cancel()
        await stop


async def test_health_watch_ends_at_shutdown_instead_of_holding_the_grace(start_app) -> None:
    """A Watch stream stayed open after NOT_SERVING, and `server.stop(--grace-s)` waited for
    it: one idle watcher held every shutdown for the whole grace (then CANCELLED it)."""
    app = await start_app(grace_s=60.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [
            stub.Watch(health_pb2.HealthCheckRequest(service=name))
            for name in ("", *SERVED, "no.such.Service")
        ]
        first = [(await watch.read()).status for watch in watches]
        assert first == [SERVING, SERVING, SERVING, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
        stop = asyncio.create_task(app.stop())
        for watch in watches[:-1]:
            assert (await watch.read()).status == NOT_SERVING
        # Each stream then ends, retryable, while the shutdown is still in its grace (a
        # guard, not a timing: the old code ended them only when the 60-second grace ran out).
        codes = await asyncio.wait_for(
            asyncio.gather(*(watch.code() for watch in watches)), timeout=20
        )
        assert codes == [grpc.StatusCode.UNAVAILABLE] * len(watches)
        assert "shutting down" in await watches[0].details()
        await stop
