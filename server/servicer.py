"""fashion.v1.PredictionService: decode -> batcher -> encode. Thin by design."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.batcher import DynamicBatcher
from server.codec import check_top_k, decode_images, encode_predictions
from server.config import Settings
from server.errors import ModelNotReady
from server.manager import ModelManager
from server.metrics import Metrics
from server.model import LoadedModel
from server.status import rpc

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
    @rpc("Predict")
    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        self.gate.check()
        check_top_k(request.top_k)
        self.manager.resolve(request.model_version)
        images = decode_images(request, self.settings.max_images_per_request)
        probabilities, model = await self.batcher.submit(images, deadline=deadline_of(context))
        self.manager.confirm(request.model_version, model)
        return encode_predictions(
            probabilities,
            model.class_names,
            version=model.version,
            include_probabilities=request.include_probabilities,
            top_k=request.top_k,
        )

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
