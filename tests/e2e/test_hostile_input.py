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
        stub.ModelReady(oip.ModelReadyRequest(name="fashion", version=version)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == NOT_FOUND, info.value.details()
        assert "versions are positive integers" in info.value.details()
        assert len(info.value.details()) < 300  # a 4,301-digit version is not echoed back
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
