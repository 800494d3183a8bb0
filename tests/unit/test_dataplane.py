"""The data plane alone: a plain codec and a fake model manager behind a real batcher.

What every front end relies on: admission by readiness, streams answered in
order with each message counted once, failures in-band or ending the stream,
and the bound on encoded images waiting to be decoded.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from server.dataplane import DataPlane, Failure, Refused
from server.errors import Code, InvalidInput, ModelNotReady, Overloaded
from server.metrics import Metrics
from server.served import ServedVersion
from server.target import Target


class Model:
    """A model whose output row is the image's first ten pixels; records its threads."""

    name = "fashion"
    version = 1
    class_names = tuple(str(i) for i in range(10))
    provider, architecture, variant = "CPUExecutionProvider", "fake", "float"
    inline_max_images = 4  # batches of 1-4 images run on the event loop, as a real model's do

    def __init__(self) -> None:
        self.threads: list[int] = []

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        return images.reshape(len(images), -1)[:, :10].astype(np.float32)


class Manager:
    """Serves one version of one model (a real ServedVersion: batcher, drain)."""

    def __init__(self, metrics: Metrics) -> None:
        model: Any = Model()
        self.served = ServedVersion(
            model, metrics.version(model), max_batch_size=64, max_wait_s=0.002,
            max_queue=1024, concurrency=1,
        )  # fmt: skip
        self.routes: dict[str, Any] = {}

    async def start(self) -> None:
        await self.served.start()
        self.routes["fashion"] = object()

    def resolve(self, target: Target) -> ServedVersion:
        return self.served

    async def stop(self) -> None:
        await self.served.drain()


class Slow:
    """A deferred decode of ``images`` images (never run in these tests)."""

    def __init__(self, images: int) -> None:
        self.images = images

    def __call__(self) -> np.ndarray:
        return np.zeros((self.images, 28, 28), np.uint8)


class IntCodec:
    """Request n >= 0: one image of pixel value n, answered with that value; n < 0 is bad."""

    def target(self, request: Any) -> Target:
        return Target("fashion")

    def decode(self, request: Any, max_images: int) -> Any:
        if isinstance(request, Slow):
            return request
        if request < 0:
            raise InvalidInput(f"bad request {request}")
        return np.full((1, 28, 28), request, np.uint8)

    def encode(self, request: Any, probabilities: np.ndarray, model: Any) -> int:
        return int(probabilities[0, 0])


CODEC = IntCodec()


@pytest.fixture
async def plane() -> AsyncIterator[DataPlane]:
    metrics = Metrics(CollectorRegistry())
    manager = Manager(metrics)
    await manager.start()
    plane = DataPlane(manager, metrics, max_images_per_request=8)  # type: ignore[arg-type]
    await plane.start()
    yield plane
    await plane.begin_shutdown()
    await plane.stop()


async def requests(items: Iterable[Any], broken_after: int | None = None) -> AsyncIterator[Any]:
    for i, item in enumerate(items):
        if i == broken_after:
            raise InvalidInput("message 2 is not a valid request")
        yield item


def counted(plane: DataPlane, code: str, model: str = "fashion", version: str = "1") -> float:
    """Stream messages counted with ``code``; those that reached no version have no labels."""
    value = plane.metrics.registry.get_sample_value(
        "fashion_requests_total",
        {"method": "Stream", "code": code, "model": model, "version": version},
    )
    return value or 0.0


def in_band(request: int, failure: Failure) -> tuple[int, Failure]:
    """A failed request's answer: the request it was about, and how it failed."""
    return request, failure


async def test_failures_travel_in_band_and_the_stream_goes_on(plane) -> None:
    outcomes = plane.stream_outcomes("Stream", CODEC, requests([7, -1, 9]), None, in_band)
    got = [a async for a in outcomes]
    assert got == [7, (-1, Failure(Code.INVALID_ARGUMENT, "bad request -1")), 9]
    assert (counted(plane, "OK"), counted(plane, "INVALID_ARGUMENT")) == (2, 1)


async def test_the_first_failure_ends_a_stream_with_its_status(plane) -> None:
    got = []
    with pytest.raises(Refused) as info:
        async for answer in plane.stream("Stream", CODEC, requests([7, -1, 9]), None):
            got.append(answer)
    assert got == [7]
    assert info.value.failure == Failure(Code.INVALID_ARGUMENT, "bad request -1")
    assert (counted(plane, "OK"), counted(plane, "INVALID_ARGUMENT")) == (1, 1)


async def test_a_broken_request_stream_is_answered_in_order_and_ends_it(plane) -> None:
    """Even where failures travel in-band, a broken request stream ends the stream with
    its status (issue #28 item 9): ending OK would tell the client all was read."""
    outcomes = plane.stream_outcomes(
        "Stream", CODEC, requests([1, 2, 3], broken_after=2), None, in_band
    )
    got = []
    with pytest.raises(Refused) as info:
        async for answer in outcomes:
            got.append(answer)
    assert got == [1, 2]
    assert info.value.failure == Failure(Code.INVALID_ARGUMENT, "message 2 is not a valid request")
    # The broken message never reached a model version: counted without one.
    assert (counted(plane, "OK"), counted(plane, "INVALID_ARGUMENT", "", "")) == (2, 1)


async def test_an_abandoned_stream_counts_its_unanswered_messages_as_cancelled(plane) -> None:
    outcomes = plane.stream_outcomes("Stream", CODEC, requests(range(1, 6)), None, in_band)
    assert await anext(outcomes) == 1
    await outcomes.aclose()  # the client went away after the first answer
    assert counted(plane, "OK") == 1
    assert counted(plane, "CANCELLED") >= 1  # the ones already read, never answered


async def test_no_admission_unless_ready() -> None:
    metrics = Metrics(CollectorRegistry())
    manager = Manager(metrics)
    plane = DataPlane(manager, metrics, max_images_per_request=8)  # type: ignore[arg-type]
    with pytest.raises(ModelNotReady, match="still loading"):
        await plane.infer(CODEC, 1, None)
    await plane.wait_for_model()
    assert plane.readiness.live and not plane.readiness.ready
    await manager.start()
    await plane.start()
    assert await plane.infer(CODEC, 3, None) == 3
    await plane.begin_shutdown()
    with pytest.raises(ModelNotReady, match="shutting down"):
        await plane.infer(CODEC, 1, None)
    await plane.stop()


async def test_encoded_images_beyond_the_decode_bound_are_refused(plane) -> None:
    # The bound is at least one request's worth (8 here): 1025 images can never wait.
    with pytest.raises(Overloaded, match="waiting to be decoded"):
        await plane.infer(CODEC, Slow(1025), None)
    assert (
        plane.metrics.registry.get_sample_value(
            "fashion_rejected_requests_total",
            {"reason": "decode_queue_full", "model": "", "version": ""},  # before any version
        )
        == 1
    )


async def test_a_lone_request_runs_on_the_loop_and_a_stream_s_messages_off_it(plane) -> None:
    """A stream's pipelined messages go to the inference thread, where the loop reads the next
    ones while a batch computes (they then share one); a unary request's small batch runs on
    the loop (server.batcher)."""
    model = plane.manager.served.model
    assert await plane.infer(CODEC, 5, None) == 5
    assert model.threads == [threading.get_ident()]
    model.threads.clear()
    got = [a async for a in plane.stream("Stream", CODEC, requests(range(20)), None)]
    assert got == list(range(20))
    assert model.threads and threading.get_ident() not in model.threads
