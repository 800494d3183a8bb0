"""PredictStream: pipelined requests on one stream, answered in order, batched, errors end it."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from server._proto.fashion.v1 import prediction_pb2 as pb
from server.model import LoadedModel
from tests.e2e.conftest import scrape


def request_for(images: np.ndarray) -> pb.PredictRequest:
    return pb.PredictRequest(images=[pb.Image(raw=a.tobytes()) for a in images])


async def test_pipelined_stream_answers_in_order_and_equals_predict(app, stub, test_set) -> None:
    images = test_set[0][:200]
    requests = [request_for(images[i : i + 2]) for i in range(0, 200, 2)]
    # All 100 requests are written before any response is read: they pipeline and batch.
    responses = [r async for r in stub.PredictStream(iter(requests))]
    assert len(responses) == 100
    streamed = [p.label for r in responses for p in r.predictions]
    unary = await stub.Predict(request_for(images[:200]))
    assert streamed == [p.label for p in unary.predictions]
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{code=OK,method=PredictStream}"] == 100
    assert metrics["fashion_batch_size_images_count{}"] < 101  # 100 stream messages + 1 unary


async def test_bad_message_ends_the_stream_with_its_status(app, stub) -> None:
    good = pb.PredictRequest(images=[pb.Image(raw=bytes(784))])
    bad = pb.PredictRequest(images=[pb.Image(raw=bytes(10))])
    call = stub.PredictStream(iter([good, good, bad, good]))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for response in call:
            received.append(response)
    assert len(received) == 2
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw image has 10 bytes" in info.value.details()
    assert len((await stub.Predict(good)).predictions) == 1  # still serving


async def test_unexpected_error_in_stream_is_internal_without_details(
    app, stub, monkeypatch
) -> None:
    def broken(model: LoadedModel, images: np.ndarray) -> np.ndarray:
        raise RuntimeError("secret stream detail")

    monkeypatch.setattr(LoadedModel, "predict", broken)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.PredictStream(
            iter([pb.PredictRequest(images=[pb.Image(raw=bytes(784))])])
        ):
            pass
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in info.value.details()
