"""fashion.v1.PredictionService: decode -> batcher -> encode. Thin by design."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.batcher import DynamicBatcher
from server.codec import check_top_k, decode_images, encode_predictions
from server.config import Settings
from server.errors import ModelNotReady, ServingError
from server.manager import ModelManager
from server.metrics import Metrics
from server.model import LoadedModel
from server.status import GENERIC_INTERNAL, rpc, status_for

logger = logging.getLogger(__name__)

# Requests of one stream submitted ahead of the response being written.
STREAM_PIPELINE_DEPTH = 64
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PredictionService"].full_name


class Gate:
    """Whether new RPCs are admitted: closed until warm, closed again at shutdown."""

    def __init__(self) -> None:
        self.open = False
        self.shutting_down = False

    def check(self) -> None:
        if self.shutting_down:
            raise ModelNotReady("the server is shutting down; retry on another replica")
        if not self.open:
            raise ModelNotReady("the model is still loading; retry shortly")


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC deadline as a ``loop.time()`` instant, or None."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


@dataclass(frozen=True)
class Serving:
    """What every servicer works with; both APIs share one of these (one batcher, one model)."""

    manager: ModelManager
    batcher: DynamicBatcher[LoadedModel]
    metrics: Metrics
    settings: Settings
    gate: Gate


class ServicerBase:
    def __init__(self, serving: Serving) -> None:
        self.manager = serving.manager
        self.batcher = serving.batcher
        self.metrics = serving.metrics  # read by the @rpc wrapper
        self.settings = serving.settings
        self.gate = serving.gate


class PredictionServicer(ServicerBase, pb_grpc.PredictionServiceServicer):
    async def _predict(
        self, request: pb.PredictRequest, deadline: float | None
    ) -> pb.PredictResponse:
        self.gate.check()
        check_top_k(request.top_k)
        self.manager.resolve(request.model_version)
        images = decode_images(request, self.settings.max_images_per_request)
        probabilities, model = await self.batcher.submit(images, deadline=deadline)
        self.manager.confirm(request.model_version, model)
        return encode_predictions(
            probabilities,
            model.class_names,
            version=model.version,
            include_probabilities=request.include_probabilities,
            top_k=request.top_k,
        )

    @rpc("Predict")
    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        return await self._predict(request, deadline_of(context))

    async def PredictStream(
        self,
        requests: AsyncIterator[pb.PredictRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.PredictResponse]:
        """Pipelined: a reader submits each request at once, responses go out in order."""
        deadline = deadline_of(context)
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue[tuple[asyncio.Future[pb.PredictResponse], float] | None] = (
            asyncio.Queue(maxsize=STREAM_PIPELINE_DEPTH)
        )

        async def read() -> None:
            async for request in requests:
                future = asyncio.ensure_future(self._predict(request, deadline))
                await pending.put((future, loop.time()))
            await pending.put(None)

        reader = asyncio.create_task(read())
        outstanding: list[asyncio.Future[pb.PredictResponse]] = []
        try:
            while (item := await pending.get()) is not None:
                future, started = item
                outstanding = [future]
                code = "OK"
                try:
                    response = await future
                except ServingError as exc:
                    status, message = status_for(exc)
                    code = status.name
                    await context.abort(status, message)
                except Exception:
                    code = "INTERNAL"
                    logger.exception("PredictStream failed with an unexpected error")
                    await context.abort(grpc.StatusCode.INTERNAL, GENERIC_INTERNAL)
                finally:
                    self.metrics.observe_rpc("PredictStream", code, loop.time() - started)
                yield response
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            for future in outstanding:
                future.cancel()
            while not pending.empty():
                if (item := pending.get_nowait()) is not None:
                    item[0].cancel()

    @rpc("GetModelInfo")
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        model = self.manager.current
        s = self.settings
        return pb.ModelInfo(
            name="fashion",
            version=model.version,
            class_names=model.class_names,
            inputs=[
                pb.TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape)
                for t in (model.input_spec,)
            ],
            outputs=[
                pb.TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape)
                for t in (model.output_spec,)
            ],
            execution_provider=model.provider,
            test_accuracy=model.test_accuracy,
            architecture=model.architecture,
            model_sha256=model.model_sha256,
            model_variant=model.variant,
            batching=pb.BatchingInfo(
                max_batch_size=s.max_batch_size,
                max_batch_delay_ms=s.max_batch_delay_ms,
                max_queue_images=s.max_queue,
                max_images_per_request=s.max_images_per_request,
                concurrency=s.batch_concurrency,
            ),
        )
