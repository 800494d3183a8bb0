"""Overload: bounded admission answers RESOURCE_EXHAUSTED at once and counts it; the queue
never grows past its bound, so admitted requests keep a bounded latency."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from tests.e2e.conftest import queued_images, scrape


async def test_overload_is_refused_fast_and_admitted_latency_stays_bounded(start_app) -> None:
    app = await start_app(max_queue=128, max_batch_size=32, max_images_per_request=32)
    request = pb.PredictRequest(images=[pb.Image(raw=bytes(784))] * 32)
    codes: dict[str, int] = {}
    admitted: list[float] = []
    refused: list[float] = []
    depth_seen = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        end = time.monotonic() + 3.0

        async def client() -> None:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    await stub.Predict(request, timeout=30)
                    admitted.append(time.perf_counter() - t0)
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.aio.AioRpcError as exc:
                    refused.append(time.perf_counter() - t0)
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                    await asyncio.sleep(0.001)

        async def watch_depth() -> None:
            nonlocal depth_seen
            while time.monotonic() < end:
                depth_seen = max(depth_seen, queued_images(app))
                await asyncio.sleep(0.0005)

        # 64 clients x 32 images = 2048 images wanted at once against a queue of 128.
        await asyncio.gather(watch_depth(), *(client() for _ in range(64)))
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > 0
    assert depth_seen <= 128
    metrics = await scrape(app)
    assert (
        metrics["fashion_rejected_requests_total{reason=queue_full}"] == codes["RESOURCE_EXHAUSTED"]
    )
    # Generous bounds (10x and more above what this machine shows): they catch an
    # unbounded queue, not a slow machine.
    assert float(np.percentile(admitted, 99)) < 2.0
    assert float(np.percentile(refused, 99)) < 1.0
