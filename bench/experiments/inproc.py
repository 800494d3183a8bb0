"""Our request path in-process, without grpc core: the CPU one request costs in our own code.

    python -m bench.experiments.inproc --model-repo R [--api oip|predict|stream]
        [--requests 20000] [--concurrency 1] [--constant-model] [--profile N]

The server is built as ``fashion-serve`` builds it (``create_app``, ``open``, ``load``); then
the gRPC binding's own handler for the method (:func:`server.grpc_binding.add_service`) is
called directly with the request's bytes and a stand-in call context (the peer, no metadata,
no deadline, trailing metadata dropped), ``--concurrency`` callers at a time on one event
loop, and each response is serialised as grpc would. ``stream``: PredictStream, each caller
one stream with one message in flight, as :mod:`bench.loadgen`'s stream clients send.

``--constant-model``: every version loads and warms up as usual (through the server's loader
seam), then its predict returns a constant, so what is measured is ours alone: binding, data
plane, codec, batcher, metrics and statistics. Beside a running server's CPU per request at
the same point (``python -m bench.experiments.unary hops``), the difference is what running
inside grpc.aio adds to the same code. ``--profile N``: cProfile's top N functions (by own
time) on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.payload import images, request_bytes
from server.app import OIP_PROBES, OIP_SERVICE, PREDICTION_SERVICE, TritonServicer, create_app
from server.config import load_settings
from server.contract import MODEL_NAME, NUM_CLASSES, OUTPUT_DTYPE
from server.grpc_binding import add_service
from server.model import LoadedModel
from server.repository import ModelVersion, latest_version
from server.servicer import PredictionServicer

APIS = {"oip": "ModelInfer", "predict": "Predict", "stream": "PredictStream"}


class ConstantModel(LoadedModel):
    """The real model through load and warm-up; then every batch's answer is a constant."""

    _answer = np.full((4096, NUM_CLASSES), 1.0 / NUM_CLASSES, dtype=OUTPUT_DTYPE)
    _warm = False

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        super().warm_up(batch_sizes)  # the inline limit is the real model's
        self._warm = True

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self._warm:
            return self._answer[: len(images)]
        return super().predict(images)


class _Handlers:
    """Stands in for the grpc server: keeps the handlers :func:`add_service` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: Any) -> None:
        self.handlers.update(handlers)


class _Call:
    """A call's context as the binding uses it; a stream's reads wait for the last answer."""

    def __init__(self, data: bytes = b"", messages: int = 0) -> None:
        self._data, self._left = data, messages
        self._answered = asyncio.Event()
        self._answered.set()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str, metadata: Any = ()) -> None:
        raise RuntimeError(f"the call failed: {code.name}: {details}")

    async def read(self) -> Any:
        await self._answered.wait()  # one message in flight
        self._answered.clear()
        if not self._left:
            return grpc.aio.EOF
        self._left -= 1
        return self._data

    async def write(self, response: Any) -> None:
        response.SerializeToString()
        self._answered.set()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    ports = ["--port", "0", "--metrics-port", "-1", "--http-port", "-1"]
    settings = load_settings(["--model-repo", str(args.model_repo), *ports], {})

    def constant(version: ModelVersion) -> LoadedModel:
        return ConstantModel(version, device=settings.device, threads=settings.threads)

    app = create_app(settings, loader=constant if args.constant_model else None)
    await app.open()
    try:
        await app.load()
        registry = _Handlers()
        if args.api == "oip":
            servicer: Any = TritonServicer(app.plane, app.catalog, app.control)
            add_service(registry, app.plane, servicer, OIP_SERVICE, app.limits, probes=OIP_PROBES)
        else:
            servicer = PredictionServicer(app.plane, app.catalog, settings)
            add_service(registry, app.plane, servicer, PREDICTION_SERVICE, app.limits)
        handler = registry.handlers[APIS[args.api]]
        data = request_bytes("predict" if args.api == "stream" else args.api, images(1, seed=1))
        each = max(1, args.requests // args.concurrency)

        async def caller(n: int) -> None:
            if args.api == "stream":
                await handler.stream_stream(None, _Call(data, n))
                return
            for _ in range(n):
                (await handler.unary_unary(data, _Call())).SerializeToString()

        await asyncio.gather(*(caller(50) for _ in range(args.concurrency)))  # warm
        profile = cProfile.Profile() if args.profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        await asyncio.gather(*(caller(each) for _ in range(args.concurrency)))
        if profile is not None:
            profile.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await app.stop(0)
    if profile is not None:
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)
    total = each * args.concurrency
    return {
        "api": args.api,
        "concurrency": args.concurrency,
        "requests": total,
        "constant_model": args.constant_model,
        "cpu_ms_per_request": round(1000 * cpu / total, 4),
        "wall_ms_per_request": round(1000 * wall / total, 4),
        "profiled": bool(args.profile),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repo", type=Path, default=Path("models"))
    p.add_argument("--api", choices=tuple(APIS), default="oip")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--constant-model", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="N")
    args = p.parse_args(argv)
    if latest_version(args.model_repo, MODEL_NAME) is None:
        p.error(f"{args.model_repo} has no version of {MODEL_NAME!r}; train or copy one first")
    print(json.dumps(asyncio.run(measure(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
