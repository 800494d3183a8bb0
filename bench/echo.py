"""The floor of Python gRPC on this machine: a grpc.aio server that answers Predict and
ModelInfer with canned, valid responses (no decode, no batcher, no model, no metrics).

Driven by the same load generator as the real server, it shows how much of a served
request's cost is grpc.aio itself. ``python -m bench.echo`` prints
``bench-echo: serving on port N`` and runs until SIGTERM. :func:`serve` takes a wait to
await before each answer, for experiments that price one piece of a real server's request
path alone (``bench.experiments.echo_wait``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
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


# Awaited with the call's context before each answer.
Wait = Callable[[Any], Awaitable[None]]


def _handler(api: str, wait: Wait | None) -> grpc.RpcMethodHandler:
    cache: dict[int, bytes] = {}  # request length -> response (sizes are fixed per point)

    async def answer(request: bytes, context: Any) -> bytes:
        response = cache.get(len(request))
        if response is None:
            response = cache[len(request)] = _canned(api, request)
        if wait is not None:
            await wait(context)
        return response

    if api == "stream":

        async def answer_stream(requests: Any, context: Any) -> Any:
            async for request in requests:
                yield await answer(request, context)

        return grpc.stream_stream_rpc_method_handler(answer_stream)
    return grpc.unary_unary_rpc_method_handler(answer)  # bytes in, bytes out


async def serve(wait: Wait | None = None) -> None:
    """Serve until SIGTERM/SIGINT; each request awaits ``wait()`` (if given) before its answer."""
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 * 2**20)]
    )
    handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for api, path in METHOD.items():
        service, method = path.strip("/").split("/")
        handlers.setdefault(service, {})[method] = _handler(api, wait)
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
    asyncio.run(serve())
