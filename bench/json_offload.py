"""``python -m bench.json_offload``: where REST JSON should be parsed (docs/PERFORMANCE.md).

1. Parsers: ``json.loads`` against ``orjson.loads`` on KServe v2 bodies (best of 7).
2. Event-loop lag: a 10 ms heartbeat beside two clients that parse 4 MiB bodies back to
   back, in a thread or in a worker process, with either parser.
3. The worker's round trip (:class:`server.rest_worker.ParseWorker`) against parsing and
   decoding in process, by body size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson

from server.rest_codec import parse_and_decode
from server.rest_worker import ParseWorker

MIB = 1024 * 1024


def body(kind: str, images: int) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (images, 28, 28))
    datatype = "UINT8"
    data: Any = pixels.ravel().tolist()
    if kind == "fp32":
        datatype, data = "FP32", (pixels.astype(np.float32) / np.float32(255)).ravel().tolist()
    elif kind == "nested":
        data = pixels.tolist()
    tensor = {"name": "images", "shape": [images, 28, 28], "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def parsers() -> None:
    for kind in ("uint8", "fp32", "nested"):
        for images in (1, 16, 64, 256):
            text = body(kind, images)
            times = {}
            for name, loads in (("json", json.loads), ("orjson", orjson.loads)):
                best = float("inf")
                for _ in range(7):
                    t0 = time.perf_counter()
                    loads(text)
                    best = min(best, time.perf_counter() - t0)
                times[name] = best
            print(
                f"{kind:7s} {images:4d} images {len(text) / 1024:8.1f} KiB: json "
                f"{times['json'] * 1e3:7.2f} ms, orjson {times['orjson'] * 1e3:7.2f} ms "
                f"({times['json'] / times['orjson']:.1f}x)"
            )


LAG_BODIES = {
    "arrays": b'{"inputs":[{"data":[' + b"[0]," * (MIB - 256) + b"[0]]}]}",
    "floats": b'{"inputs":[{"data":[' + b"0.123456," * (4 * MIB // 9) + b"0]}]}",
}


def _parse_json(text: bytes) -> int:
    return len(json.loads(text)["inputs"])


def _parse_orjson(text: bytes) -> int:
    return len(orjson.loads(text)["inputs"])


async def lag(where: str, parse: Callable[[bytes], int], text: bytes, seconds: float) -> str:
    loop = asyncio.get_running_loop()
    executor: Executor = (
        ThreadPoolExecutor(1)
        if where == "thread"
        else ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    )
    await loop.run_in_executor(executor, parse, b'{"inputs":[]}')  # started
    lags: list[float] = []
    done = 0
    stop = time.monotonic() + seconds

    async def beat() -> None:
        while time.monotonic() < stop:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t0 - 0.01)

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await loop.run_in_executor(executor, parse, text)
            done += 1

    await asyncio.gather(beat(), client(), client())
    executor.shutdown()
    ms = np.percentile(np.array(lags) * 1000, [50, 99, 100])
    return (
        f"{done / seconds:5.1f} parses/s, loop lag p50 {ms[0]:7.1f} ms, p99 {ms[1]:7.1f} ms, "
        f"max {ms[2]:7.1f} ms"
    )


async def round_trips() -> None:
    worker = ParseWorker(max_pending_bytes=1 << 30, count_rejected=print)
    for images in (16, 64, 256):
        text = body("uint8", images)
        call: dict[str, Any] = {"model_name": "fashion", "model_version": "", "max_images": 256}
        await worker.parse(text, None, **call)
        here, there = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            parse_and_decode(text, None, **call)
            here.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await worker.parse(text, None, **call)
            there.append(time.perf_counter() - t0)
        print(
            f"{images:4d} UINT8 images, {len(text) // 1024} KiB: in process "
            f"{np.median(here) * 1e3:.2f} ms, through the worker {np.median(there) * 1e3:.2f} ms"
        )
    await worker.close()


async def main_async(seconds: float) -> None:
    for kind, text in LAG_BODIES.items():
        for where in ("thread", "process"):
            for name, parse in (("json", _parse_json), ("orjson", _parse_orjson)):
                print(f"{kind:7s} {where:8s} {name:7s}", await lag(where, parse, text, seconds))
    await round_trips()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.json_offload", description=__doc__)
    p.add_argument("--seconds", type=float, default=4.0, help="per event-loop lag point")
    args = p.parse_args(argv)
    parsers()
    asyncio.run(main_async(args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
