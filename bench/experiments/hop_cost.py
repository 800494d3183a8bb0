"""What a thread hop costs against the batch it carries: one small batch, in-process.

    python -m bench.experiments.hop_cost --model-repo R [--calls 3000] [--images 1] [--rounds 2]

An event loop awaits one batch at a time (concurrency 1, nothing else running), computed
three ways by the server's own one-thread session (``LoadedModel.predict``):

* ``inline``: on the event loop itself (what the batcher does with batches of at most
  ``inline_max_images`` images);
* ``executor``: handed to a one-thread executor that posts the result back with
  ``call_soon_threadsafe`` (what the batcher does with every other batch);
* ``run_async``: onnxruntime's own ``InferenceSession.run_async``, whose intra-op thread calls
  back (a hop without a Python executor; needs a session with an intra-op pool).

Per call: the p50 wall time and the process's CPU. The difference between ``executor`` and
``inline`` is the hop's price on this machine; docs/PERFORMANCE.md ("Small batches on the
event loop") has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from server.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME
from server.model import LoadedModel, create_session
from server.repository import latest_version, read_version

MODES = ("inline", "executor", "run_async")


async def _measure(mode: str, submit: Callable[[asyncio.Future[Any]], None], calls: int) -> dict:
    loop = asyncio.get_running_loop()

    async def one() -> None:
        future: asyncio.Future[Any] = loop.create_future()
        submit(future)
        await future

    for _ in range(200):  # warm: arenas, thread start, caches
        await one()
    latencies = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        await one()
        latencies.append(time.perf_counter() - t0)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    latencies.sort()
    return {
        "mode": mode,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "wall_ms_per_call": round(wall / calls * 1000, 3),
        "cpu_ms_per_call": round(cpu / calls * 1000, 3),
    }


async def _run(mode: str, model: LoadedModel, pooled: Any, images: np.ndarray, calls: int) -> dict:
    loop = asyncio.get_running_loop()

    def deliver(future: asyncio.Future[Any], value: Any) -> None:
        if not future.done():
            future.set_result(value)

    if mode == "inline":
        return await _measure(mode, lambda f: f.set_result(model.predict(images)), calls)
    if mode == "executor":
        with ThreadPoolExecutor(1) as executor:

            def compute(future: asyncio.Future[Any]) -> None:
                loop.call_soon_threadsafe(deliver, future, model.predict(images))

            def hand_off(future: asyncio.Future[Any]) -> None:
                executor.submit(compute, future)

            return await _measure(mode, hand_off, calls)

    def callback(outputs: Any, future: asyncio.Future[Any], error: str) -> None:
        loop.call_soon_threadsafe(deliver, future, error or outputs[0])

    def run_async(future: asyncio.Future[Any]) -> None:
        pooled.run_async([OUTPUT_NAME], {INPUT_NAME: images}, callback, future)

    return await _measure(mode, run_async, calls)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.hop_cost", description=__doc__)
    p.add_argument("--model-repo", type=Path, default=Path("models"))
    p.add_argument("--model-name", default="fashion")
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--images", type=int, default=1, help="images per batch")
    p.add_argument("--rounds", type=int, default=2, help="every mode, in turns, this many times")
    args = p.parse_args(argv)
    number = latest_version(args.model_repo, args.model_name)
    if number is None:
        p.error(f"no version of model {args.model_name!r} in {args.model_repo}")
    version = read_version(args.model_repo, number, args.model_name)
    model = LoadedModel(version, threads=2)  # its one-thread session computes small batches
    pooled = create_session(version.model_path, "cpu", 2)  # run_async needs an intra-op pool
    images = np.zeros((args.images, *IMAGE_SHAPE), dtype=np.uint8)
    results = [
        asyncio.run(_run(mode, model, pooled, images, args.calls))
        for _ in range(args.rounds)
        for mode in MODES
    ]
    for r in results:
        print(
            f"{r['mode']:10s} p50 {r['p50_ms']:.3f} ms, wall {r['wall_ms_per_call']:.3f} ms, "
            f"CPU {r['cpu_ms_per_call']:.3f} ms per call",
            file=sys.stderr,
        )
    print(json.dumps({"images": args.images, "calls": args.calls, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
