"""PredictStream: pipelined requests on one stream, answered in order, batched, errors end it."""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np
import pytest

from server._proto.fashion.v1 import prediction_pb2 as pb
from tests.e2e.conftest import scrape

GOOD = pb.PredictRequest(images=[pb.Image(raw=bytes(784))])
STREAM_PATH = "/fashion.v1.PredictionService/PredictStream"


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


async def test_unexpected_error_in_stream_is_internal_without_details(app, stub, faults) -> None:
    faults.fail("secret stream detail")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.PredictStream(
            iter([pb.PredictRequest(images=[pb.Image(raw=bytes(784))])])
        ):
            pass
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in info.value.details()
    assert "internal error" in info.value.details()


async def wait_for_sample(app, name: str, timeout_s: float = 10.0) -> dict[str, float]:
    """Scrape until ``name`` appears: the server counts a cancelled call after the client left."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while name not in (metrics := await scrape(app)):
        assert loop.time() < give_up, f"{name} never appeared: {metrics}"
        await asyncio.sleep(0.02)
    return metrics


async def test_cancelled_stream_counts_as_cancelled(app, stub, faults) -> None:
    faults.hold()
    call = stub.PredictStream(iter([GOOD]))
    await asyncio.to_thread(faults.entered.wait, 5)  # the request is in the model
    call.cancel()
    metrics = await wait_for_sample(
        app, "fashion_requests_total{code=CANCELLED,method=PredictStream}"
    )
    faults.release.set()
    assert metrics["fashion_requests_total{code=CANCELLED,method=PredictStream}"] == 1
    assert "fashion_requests_total{code=OK,method=PredictStream}" not in metrics
    assert len((await stub.Predict(GOOD, timeout=5)).predictions) == 1


async def test_unexpected_error_in_stream_is_logged_with_traceback(
    app, stub, faults, caplog
) -> None:
    faults.extra_class()  # the encoder finds no name for class 10: an IndexError
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.PredictStream(iter([GOOD]), timeout=10):
            pass
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in info.value.details()
    assert "internal error" in info.value.details()
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "PredictStream failed with an unexpected error" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], IndexError)
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{code=INTERNAL,method=PredictStream}"] == 1


async def test_malformed_message_ends_the_stream_promptly(app, channel) -> None:
    """One valid request, then bytes that are no protobuf (0f 00), then half-close."""
    raw_stream = channel.stream_stream(STREAM_PATH)  # no serializers: bytes on the wire
    call = raw_stream(timeout=20)
    await call.write(GOOD.SerializeToString())
    first = pb.PredictResponse.FromString(await call.read())
    assert len(first.predictions) == 1
    await call.write(bytes.fromhex("0f00"))
    await call.done_writing()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "not a valid fashion.v1.PredictRequest message" in info.value.details()
    assert loop.time() - started < 5  # promptly, not at the client's deadline
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{code=OK,method=PredictStream}"] == 1
    assert metrics["fashion_requests_total{code=INVALID_ARGUMENT,method=PredictStream}"] == 1


async def stream_for(app, seconds: float) -> tuple[int, grpc.StatusCode | None]:
    """One stream sending a message every 0.1 of a second for ``seconds``: (answers, the
    status it ended with, None when it was not ended by the server)."""
    from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = pb_grpc.PredictionServiceStub(channel).PredictStream()
        answers = 0
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                await call.write(GOOD)
                await call.read()
                answers += 1
                await asyncio.sleep(0.1)
            await call.done_writing()
            return answers, None
        except grpc.aio.AioRpcError as exc:
            return answers, exc.code()
        except (grpc.aio.UsageError, asyncio.InvalidStateError):  # written after its end
            return answers, await call.code()


async def test_a_stream_outlives_its_connections_max_age(start_app) -> None:
    """--max-connection-age-s recycles connections so that new calls rebalance; a stream in
    progress is not ended by it unless --max-connection-age-grace-s says so (before, the
    shutdown grace, --grace-s, bounded it: a busy stream was cut with UNAVAILABLE)."""
    app = await start_app(max_connection_age_s=1.0, grace_s=0.5)
    answers, ended = await stream_for(app, 3.0)
    assert ended is None and answers >= 10, (answers, ended)


async def test_max_connection_age_grace_bounds_a_stream_when_set(start_app) -> None:
    app = await start_app(max_connection_age_s=1.0, max_connection_age_grace_s=0.5)
    answers, ended = await stream_for(app, 5.0)
    assert ended == grpc.StatusCode.UNAVAILABLE, (answers, ended)
