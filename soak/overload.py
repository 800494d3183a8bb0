"""``python -m soak.overload``: hold a server at a multiple of its measured capacity.

1. Capacity: closed-loop clients send 32-image Predict requests for a few seconds.
2. Overload: an open-loop generator sends requests at ``--factor`` x that rate (new
   requests do not wait for old ones, as real traffic does not), for a fixed time.
Reports admitted-request latency (it must stay bounded: the queue is bounded),
RESOURCE_EXHAUSTED count and how fast rejections come back, and any other error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from bench.serverproc import start_server
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.contract import IMAGE_BYTES


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else 0.0


async def measure(port: int, args: argparse.Namespace) -> dict[str, object]:
    request = pb.PredictRequest(images=[pb.Image(raw=bytes(IMAGE_BYTES))] * args.images)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        done = 0
        end = time.perf_counter() + args.capacity_s

        async def closed_loop() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await stub.Predict(request, timeout=30)
                done += 1

        await asyncio.gather(*(closed_loop() for _ in range(8)))
        capacity = done / args.capacity_s
        rate = capacity * args.factor
        admitted: list[float] = []
        refused: list[float] = []
        codes: Counter[str] = Counter()

        async def one() -> None:
            t0 = time.perf_counter()
            try:
                await stub.Predict(request, timeout=30)
                admitted.append(time.perf_counter() - t0)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused.append(time.perf_counter() - t0)

        tasks = []
        start = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - start < args.duration_s:
            due = int((now - start) * rate)
            for _ in range(due - sent):
                tasks.append(asyncio.create_task(one()))
            sent = due
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
    return {
        "images_per_request": args.images,
        "capacity_requests_per_s": round(capacity, 1),
        "offered_requests_per_s": round(rate, 1),
        "sent": sent,
        "codes": dict(codes),
        "admitted_latency_ms": {
            "p50": _ms(admitted, 50),
            "p99": _ms(admitted, 99),
            "max": _ms(admitted, 100),
        },
        "rejection_latency_ms": {"p50": _ms(refused, 50), "p99": _ms(refused, 99)},
        "unexpected_errors": sum(
            v for k, v in codes.items() if k not in ("OK", "RESOURCE_EXHAUSTED")
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m soak.overload", description=__doc__)
    p.add_argument("--model-repo", type=Path, required=True)
    p.add_argument("--factor", type=float, default=2.0, help="offered load / capacity")
    p.add_argument("--images", type=int, default=32, help="images per request")
    p.add_argument("--capacity-s", type=float, default=5.0)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--server-arg", action="append", default=[])
    args = p.parse_args(argv)
    server = start_server(args.model_repo, args.server_arg)
    try:
        report = asyncio.run(measure(server.port, args))
    finally:
        server.stop()
    print(json.dumps(report, indent=2))
    return 0 if report["unexpected_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
