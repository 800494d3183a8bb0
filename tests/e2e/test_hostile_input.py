"""Hostile input (issue #17): crafted images, bytes that are no protobuf, odd version strings.

Each answer is precise and cheap, is counted, logs at most one line, and the
server (health above all) keeps answering while it happens.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import zlib

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.codec import MAX_ENCODED_BYTES
from server.request_context import MAX_REQUEST_ID_CHARS
from tests.e2e.conftest import scrape
from tests.e2e.test_bad_input import assert_status

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
GOOD = pb.PredictRequest(images=[pb.Image(raw=bytes(784))])


def _pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)


def _chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def padded_png(size: int) -> bytes:
    """A valid 28x28 PNG grown to ``size`` bytes with empty ancillary chunks (slow to parse)."""
    buffer = io.BytesIO()
    Image.fromarray(_pixels()).save(buffer, format="PNG")
    base = buffer.getvalue()
    head, tail = base[:33], base[33:]  # signature + IHDR, then the rest
    empty = _chunk(b"prVt")  # ancillary, private, safe to copy: decoders skip it
    count, spare = divmod(size - len(base), len(empty))
    filler = _chunk(b"prVt", bytes(spare - 12)) if spare >= 12 else b""
    data = head + empty * count + filler + tail
    assert len(data) <= size
    return data


def padded_jpeg(size: int) -> bytes:
    """A valid 28x28 JPEG grown to ``size`` bytes with 0xFF fill bytes after SOI (slow)."""
    buffer = io.BytesIO()
    Image.fromarray(_pixels()).save(buffer, format="JPEG")
    base = buffer.getvalue()
    return base[:2] + b"\xff" * (size - len(base)) + base[2:]


async def test_encoded_image_above_the_cap_is_refused_at_once(app, stub) -> None:
    big = padded_png(MAX_ENCODED_BYTES + 100)
    assert Image.open(io.BytesIO(big)).size == (28, 28)  # a valid image, only too large
    await assert_status(
        stub.Predict(pb.PredictRequest(images=[GOOD.images[0], pb.Image(encoded=big)]), timeout=5),
        INVALID,
        f"image 1: encoded image has {len(big)} bytes; this server accepts at most "
        f"{MAX_ENCODED_BYTES}",
    )
    # At the cap a crafted file is slow but legal: it is decoded (off the event loop).
    at_cap = pb.PredictRequest(images=[pb.Image(encoded=padded_jpeg(MAX_ENCODED_BYTES))])
    assert len((await stub.Predict(at_cap, timeout=30)).predictions) == 1


async def test_health_and_raw_pixels_stay_fast_while_slow_images_decode(start_app) -> None:
    """Two clients each send 30 cap-sized crafted JPEGs (seconds of Pillow work per request).

    Decoded on the event loop (as before), each request held every other call for
    2.7 s or more; off the loop, a health check answers well within half the
    liveness probe's 5 s timeout even on a loaded machine.
    """
    app = await start_app()
    slow = pb.PredictRequest(images=[pb.Image(encoded=padded_jpeg(MAX_ENCODED_BYTES))] * 30)
    options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options) as channel:
        predict = channel.unary_unary(
            "/fashion.v1.PredictionService/Predict",
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictResponse.FromString,
        )
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="fashion.v1.PredictionService")
        attackers = [asyncio.ensure_future(predict(slow, timeout=120)) for _ in range(2)]
        loop = asyncio.get_running_loop()
        worst = 0.0
        probes = 0
        while not all(a.done() for a in attackers):
            started = loop.time()
            answer = await health.Check(check, timeout=2.5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert len((await predict(GOOD, timeout=2.5)).predictions) == 1
            worst = max(worst, loop.time() - started)
            probes += 1
        for attacker in attackers:
            assert len((await attacker).predictions) == 30
    assert probes >= 3, "the crafted images decoded too fast to test anything"
    assert worst < 2.5


MALFORMED = bytes.fromhex("0f00")  # field 1 with wire type 7: no such wire type


@pytest.mark.parametrize(
    ("path", "method", "message"),
    [
        ("/fashion.v1.PredictionService/Predict", "Predict", "fashion.v1.PredictRequest"),
        (
            "/fashion.v1.PredictionService/GetModelInfo",
            "GetModelInfo",
            "fashion.v1.GetModelInfoRequest",
        ),
        ("/inference.GRPCInferenceService/ModelInfer", "ModelInfer", "inference.ModelInferRequest"),
        (
            "/inference.GRPCInferenceService/ModelMetadata",
            "ModelMetadata",
            "inference.ModelMetadataRequest",
        ),
    ],
)
async def test_malformed_protobuf_is_invalid_argument_counted_and_quiet(
    app, channel, caplog, path, method, message
) -> None:
    caplog.set_level(logging.INFO)
    before = len(caplog.records)
    await assert_status(
        channel.unary_unary(path)(MALFORMED, timeout=5),
        INVALID,
        f"the request is not a valid {message} message (protobuf parsing failed)",
    )
    assert len(caplog.records) - before <= 1
    assert not [r for r in caplog.records if r.exc_info]
    metrics = await scrape(app)
    assert metrics[f"fashion_requests_total{{code=INVALID_ARGUMENT,method={method}}}"] == 1


# Digits str.isdigit() and int() accept that are not ASCII, a zero-padded 1, and a
# string past Python's int() limit: none of them is a version.
ODD_VERSIONS = [
    "\u00b2",  # superscript two
    "\u2460",  # circled digit one
    "\u0661",  # Arabic-Indic digit one
    "\uff11",  # full-width digit one
    "01",
    "1" * 4301,
    "+1",
    " 1",
    "1_0",
    "9" * 20,  # above int64
]


@pytest.mark.parametrize("version", ODD_VERSIONS, ids=lambda v: repr(v)[:12])
async def test_odd_version_strings_are_not_found_without_a_traceback(
    app, channel, caplog, version
) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    calls = [
        stub.ModelInfer(infer_request(np.zeros((1, 28, 28), np.uint8), model_version=version)),
        stub.ModelMetadata(oip.ModelMetadataRequest(name="fashion", version=version)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == NOT_FOUND, info.value.details()
        assert "versions are positive integers" in info.value.details()
        assert len(info.value.details()) < 300  # a 4,301-digit version is not echoed back
    # ModelReady answers (as Triton does): a version that is not served is not ready.
    ready = await stub.ModelReady(oip.ModelReadyRequest(name="fashion", version=version))
    assert ready.ready is False
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    ok = await stub.ModelInfer(infer_request(np.zeros((1, 28, 28), np.uint8), model_version="1"))
    assert ok.model_version == "1"


async def test_a_long_echoed_string_is_still_invalid_argument(app, channel) -> None:
    """A 20,000-character datatype is quoted, cut, in the message; gRPC refuses trailing
    metadata over 16 KiB, so an uncut message reached the client as RESOURCE_EXHAUSTED
    (retryable). The one tensor decoder cuts what it quotes (the REST binding's rule too)."""
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    request = infer_request(np.zeros((1, 28, 28), np.uint8))
    request.inputs[0].datatype = "X" * 20_000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = info.value.details()
    assert "has datatype 'XXXX" in details and "... (20000 characters)" in details
    assert len(details) < 300
    ok = await stub.ModelInfer(infer_request(np.zeros((1, 28, 28), np.uint8)), timeout=5)
    assert ok.model_version == "1"


# grpc's own servicers, served from raw bytes like ours (issue #28 item 9).
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def test_malformed_protobuf_to_health_and_reflection_is_invalid_argument_and_quiet(
    app, channel, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        await assert_status(
            channel.unary_unary(HEALTH_CHECK)(MALFORMED, timeout=5),
            INVALID,
            "not a valid grpc.health.v1.HealthCheckRequest message (protobuf parsing failed)",
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in channel.unary_stream(HEALTH_WATCH)(MALFORMED, timeout=5):
                pass
        assert info.value.code() == INVALID, info.value.details()
        call = channel.stream_stream(REFLECTION)(timeout=5)
        await call.write(MALFORMED)
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == INVALID, info.value.details()
        assert "ServerReflectionRequest message" in info.value.details()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    # The servicers still answer well-formed calls, their own statuses included.
    health = health_pb2_grpc.HealthStub(channel)
    ready = health_pb2.HealthCheckRequest(service="fashion.v1.PredictionService")
    answer = await health.Check(ready, timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert info.value.code() == NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


async def test_reflection_still_lists_the_services(app, channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(timeout=5)
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    answer = await call.read()
    await call.done_writing()
    names = {s.name for s in answer.list_services_response.service}
    assert {"fashion.v1.PredictionService", "inference.GRPCInferenceService"} <= names


async def test_model_stream_infer_cut_by_a_malformed_message_does_not_end_ok(app, channel) -> None:
    """Answers before the bad message arrive in-band; then the stream ends INVALID_ARGUMENT
    (it ended OK, as if every message had been read)."""
    call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(timeout=20)
    await call.write(infer_request(np.zeros((1, 28, 28), np.uint8), id="a").SerializeToString())
    first = oip.ModelStreamInferResponse.FromString(await call.read())
    assert first.infer_response.id == "a" and not first.error_message
    await call.write(MALFORMED)
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == INVALID, info.value.details()
    assert "not a valid inference.ModelInferRequest message" in info.value.details()
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{code=OK,method=ModelStreamInfer}"] == 1
    assert metrics["fashion_requests_total{code=INVALID_ARGUMENT,method=ModelStreamInfer}"] == 1


async def test_request_ids_longer_than_the_limit_are_refused(app, channel) -> None:
    """An id is echoed in the response: one of 4 MB doubled what a stream held (issue #28)."""
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    images = np.zeros((1, 28, 28), np.uint8)
    ok = await stub.ModelInfer(infer_request(images, id="i" * MAX_REQUEST_ID_CHARS), timeout=5)
    assert ok.id == "i" * MAX_REQUEST_ID_CHARS
    await assert_status(
        stub.ModelInfer(infer_request(images, id="i" * (MAX_REQUEST_ID_CHARS + 1)), timeout=5),
        INVALID,
        f"the request id has {MAX_REQUEST_ID_CHARS + 1} characters; at most {MAX_REQUEST_ID_CHARS}",
    )
    # In a stream the refusal travels in-band and the stream goes on.
    stream = stub.ModelStreamInfer(timeout=10)
    await stream.write(infer_request(images, id="x" * 100_000))
    await stream.write(infer_request(images, id="b"))
    await stream.done_writing()
    answers = [answer async for answer in stream]
    assert "the request id has 100000 characters" in answers[0].error_message
    assert answers[1].infer_response.id == "b"
