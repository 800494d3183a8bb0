"""The floor of Python gRPC on this machine: a grpc.aio server that answers Predict and
ModelInfer with canned, valid responses (no decode, no batcher, no model, no metrics).

Driven by the same load generator as the real server, it shows how much of a served
request's cost is grpc.aio itself. ``python -m bench.echo`` prints
``bench-echo: serving on port N`` and runs until SIGTERM.

``--wait`` adds one piece of a real server's request path before the canned answer, to
price it alone (``python -m bench.peers.unary hops``): ``yield`` (one extra event-loop
turn), ``executor`` (a no-op run in a one-thread executor per request: the thread hop and
the self-pipe wake-up) or ``batched`` (one such hop per batch of whatever queued while
the previous one ran, as the dynamic batcher does).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from bench.payload import METHOD
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.inference import grpc_predict_v2_pb2 as oip
from server.contract import MODEL_NAME, NUM_CLASSES, OUTPUT_DATATYPE, OUTPUT_NAME

READY_MARK = "bench-echo: serving on port "


def _canned(api: str, request: bytes) -> bytes:
    if api in ("predict", "stream"):
        n = len(pb.PredictRequest.FromString(request).images)
        return bytes(
            pb.PredictResponse(
                model_version=1,
                predictions=[pb.Prediction(label=0, class_name="T-shirt/top", confidence=1.0)] * n,
            ).SerializeToString()
        )
    n = oip.ModelInferRequest.FromString(request).inputs[0].shape[0]
    return bytes(
        oip.ModelInferResponse(
            model_name=MODEL_NAME,
            model_version="1",
            outputs=[
                oip.ModelInferResponse.InferOutputTensor(
                    name=OUTPUT_NAME, datatype=OUTPUT_DATATYPE, shape=[n, NUM_CLASSES]
                )
            ],
            raw_output_contents=[np.zeros((n, NUM_CLASSES), "<f4").tobytes()],
        ).SerializeToString()
    )


WAITS = ("none", "yield", "executor", "batched")


def _noop() -> None:
    return None


class _Hops:
    """The waits of ``--wait``: each request awaits one before its answer."""

    def __init__(self, wait: str) -> None:
        self.wait = wait
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="echo")
        self._waiting: list[asyncio.Future[None]] = []
        self._busy = False

    async def __call__(self) -> None:
        if self.wait == "yield":
            await asyncio.sleep(0)
        elif self.wait == "executor":
            await asyncio.get_running_loop().run_in_executor(self._pool, _noop)
        elif self.wait == "batched":
            future = asyncio.get_running_loop().create_future()
            self._waiting.append(future)
            if not self._busy:
                self._run_batch()
            await future

    def _run_batch(self) -> None:
        self._busy = True
        batch, self._waiting = self._waiting, []
        done = asyncio.get_running_loop().run_in_executor(self._pool, _noop)
        done.add_done_callback(lambda _: self._deliver(batch))

    def _deliver(self, batch: list[asyncio.Future[None]]) -> None:
        for future in batch:
            if not future.done():
                future.set_result(None)
        self._busy = False
        if self._waiting:
            self._run_batch()


def _handler(api: str, hops: _Hops) -> grpc.RpcMethodHandler:
    cache: dict[int, bytes] = {}  # request length -> response (sizes are fixed per point)

    async def answer(request: bytes, context: Any) -> bytes:
        response = cache.get(len(request))
        if response is None:
            response = cache[len(request)] = _canned(api, request)
        if hops.wait != "none":
            await hops()
        return response

    if api == "stream":

        async def answer_stream(requests: Any, context: Any) -> Any:
            async for request in requests:
                yield await answer(request, context)

        return grpc.stream_stream_rpc_method_handler(answer_stream)
    return grpc.unary_unary_rpc_method_handler(answer)  # bytes in, bytes out


async def serve(wait: str = "none") -> None:
    hops = _Hops(wait)
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 * 2**20)]
    )
    handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for api, path in METHOD.items():
        service, method = path.strip("/").split("/")
        handlers.setdefault(service, {})[method] = _handler(api, hops)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(s, m) for s, m in handlers.items()]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"{READY_MARK}{port} metrics -1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--wait", choices=WAITS, default="none")
    asyncio.run(serve(parser.parse_args().wait))
