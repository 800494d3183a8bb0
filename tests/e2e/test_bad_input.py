"""Every bad input gets its own status and an actionable message; the server keeps serving."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from tests.e2e.conftest import queued_images, scrape
from tests.e2e.test_predict import png

OK_IMAGE = pb.Image(raw=bytes(784))
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def assert_status(call, code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert fragment in info.value.details()


async def assert_still_serving(stub) -> None:
    response = await stub.Predict(pb.PredictRequest(images=[OK_IMAGE]), timeout=5)
    assert len(response.predictions) == 1


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (pb.PredictRequest(), INVALID, "no images"),
        (
            pb.PredictRequest(images=[pb.Image(raw=bytes(783))]),
            INVALID,
            "raw image has 783 bytes, expected 784",
        ),
        (
            pb.PredictRequest(images=[pb.Image(raw=bytes(784), encoded=b"x")]),
            INVALID,
            "exactly one of raw or encoded",
        ),
        (pb.PredictRequest(images=[OK_IMAGE, pb.Image()]), INVALID, "image 1: empty"),
        (
            pb.PredictRequest(images=[pb.Image(encoded=b"GIF89a or anything else")]),
            INVALID,
            "not a PNG or JPEG file",
        ),
        (
            pb.PredictRequest(
                images=[
                    pb.Image(
                        encoded=png(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8))[
                            :100
                        ]
                    )
                ]
            ),
            INVALID,
            "cannot decode as PNG or JPEG (image file is truncated)",
        ),
        (
            pb.PredictRequest(images=[pb.Image(encoded=png(np.zeros((64, 64), np.uint8)))]),
            INVALID,
            "PNG is 64x64, expected 28x28",
        ),
        (pb.PredictRequest(images=[OK_IMAGE] * 9), INVALID, "at most 8 per request"),
        (pb.PredictRequest(images=[OK_IMAGE], top_k=11), INVALID, "top_k is 11"),
        (
            pb.PredictRequest(images=[OK_IMAGE], model_version=99),
            grpc.StatusCode.NOT_FOUND,
            "model 'fashion' version 99 is not served; it serves version 1",
        ),
        (
            pb.PredictRequest(images=[OK_IMAGE], model_version=-5),
            INVALID,
            "model_version is -5; send 0 (the model's default version) or a positive version",
        ),
    ],
    ids=[
        "empty",
        "raw-length",
        "both",
        "neither",
        "undecodable",
        "corrupt-png",
        "not-28x28",
        "too-many",
        "top-k",
        "unknown-version",
        "negative-version",
    ],
)
async def test_bad_request_gets_precise_status(start_app, request_, code, fragment) -> None:
    app = await start_app(max_images_per_request=8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        await assert_status(stub.Predict(request_, timeout=5), code, fragment)
        await assert_still_serving(stub)
    assert (await scrape(app))[f"fashion_requests_total{{code={code.name},method=Predict}}"] == 1


async def test_message_above_limit_is_refused_by_size(start_app) -> None:
    app = await start_app(max_message_bytes=64 * 1024)
    options = [("grpc.max_send_message_length", 16 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options) as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        big = pb.PredictRequest(images=[OK_IMAGE] * 100)  # ~79 KiB
        await assert_status(
            stub.Predict(big, timeout=5), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"
        )
        await assert_still_serving(stub)


async def test_not_ready_is_unavailable_then_serves(start_app) -> None:
    app = await start_app(load=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        await assert_status(
            stub.Predict(pb.PredictRequest(images=[OK_IMAGE]), timeout=5),
            grpc.StatusCode.UNAVAILABLE,
            "still loading",
        )
        await assert_status(
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5),
            grpc.StatusCode.UNAVAILABLE,
            "still loading",  # the readiness state's words, whichever method asks
        )
        await app.load()
        await assert_still_serving(stub)


async def test_full_queue_is_resource_exhausted(start_app, faults) -> None:
    app = await start_app(max_queue=4, max_images_per_request=4)
    faults.hold()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        running = asyncio.ensure_future(stub.Predict(pb.PredictRequest(images=[OK_IMAGE])))
        await asyncio.to_thread(faults.entered.wait, 5)
        queued = asyncio.ensure_future(stub.Predict(pb.PredictRequest(images=[OK_IMAGE] * 3)))
        while queued_images(app) < 3:
            await asyncio.sleep(0.001)
        await assert_status(
            stub.Predict(pb.PredictRequest(images=[OK_IMAGE] * 2), timeout=5),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "queue full",
        )
        faults.release.set()
        assert len((await running).predictions) == 1
        assert len((await queued).predictions) == 3
    assert (await scrape(app))["fashion_rejected_requests_total{reason=queue_full}"] == 1


async def test_deadline_passed_in_queue_is_not_computed(start_app, faults) -> None:
    app = await start_app()
    faults.hold()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        running = asyncio.ensure_future(stub.Predict(pb.PredictRequest(images=[OK_IMAGE])))
        await asyncio.to_thread(faults.entered.wait, 5)
        await assert_status(
            stub.Predict(pb.PredictRequest(images=[OK_IMAGE] * 2), timeout=0.2),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline",
        )
        faults.release.set()
        await running
        await assert_still_serving(stub)
    metrics = await scrape(app)
    # The expired 2-image request never reached the model: 1 + 1 images computed.
    assert metrics["fashion_images_total{}"] == 2
    assert (
        metrics.get("fashion_rejected_requests_total{reason=deadline}", 0)
        + metrics.get("fashion_rejected_requests_total{reason=cancelled}", 0)
        == 1
    )


async def test_one_slow_batch_does_not_refuse_every_later_deadline(start_app, faults) -> None:
    """The batcher refuses a request whose deadline is closer than its estimate of the work
    ahead. One slow batch (a CPU-throttled pod, a pause) set that estimate to a second per
    image; after it every request with a shorter deadline was refused at once as
    unmeetable, on an idle server, and for good: nothing was computed any more to correct
    the estimate."""
    app = await start_app()
    faults.hold()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        slow = asyncio.ensure_future(stub.Predict(pb.PredictRequest(images=[OK_IMAGE])))
        await asyncio.to_thread(faults.entered.wait, 5)
        await asyncio.sleep(1.0)  # the batch is held: the estimate will say >= 1 s per image
        faults.clear()
        assert len((await slow).predictions) == 1
        for _ in range(3):  # the batcher is idle: nothing ahead, computed at once
            response = await stub.Predict(pb.PredictRequest(images=[OK_IMAGE]), timeout=0.5)
            assert len(response.predictions) == 1
    metrics = await scrape(app)
    assert "fashion_rejected_requests_total{reason=deadline_unmeetable}" not in metrics


async def test_unexpected_error_is_internal_without_details(start_app, faults, caplog) -> None:
    app = await start_app()
    faults.fail("secret internal detail")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Predict(pb.PredictRequest(images=[OK_IMAGE]), timeout=5)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in info.value.details()
        assert "internal error" in info.value.details()
        faults.clear()
        await assert_still_serving(stub)
    assert "secret internal detail" in caplog.text
