"""inference.GRPCInferenceService (Open Inference Protocol): adapters over the data plane.

This class is the registration point of the whole service: Triton's extensions
(ModelConfig, ModelStatistics, ModelStreamInfer, RepositoryIndex, ...) are
methods here or in a subclass; any method of the service it lacks answers
UNIMPLEMENTED with its name (:func:`server.status.add_service`).
"""

from __future__ import annotations

from importlib import metadata as package_metadata

import grpc

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.config import Settings
from server.contract import MODEL_NAME, PLATFORM, TensorSpec
from server.dataplane import DataPlane
from server.oip_codec import INFER, parse_version
from server.status import deadline_of

SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name


def _server_version() -> str:
    try:
        return package_metadata.version("fashion-serving")
    except package_metadata.PackageNotFoundError:
        return "0+unknown"


def _tensor_metadata(spec: TensorSpec) -> oip.ModelMetadataResponse.TensorMetadata:
    return oip.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    # The extensions this server implements, for ServerMetadata: a subclass that
    # adds Triton's RPCs lists them here.
    EXTENSIONS: tuple[str, ...] = ()

    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.settings = settings
        self._version = _server_version()

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=self.plane.readiness.live)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self.plane.readiness.ready)

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        ready = self.plane.model_ready(parse_version(request.name, request.version))
        return oip.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name="fashion-serving", version=self._version, extensions=list(self.EXTENSIONS)
        )

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        model = self.plane.resolve(parse_version(request.name, request.version))
        return oip.ModelMetadataResponse(
            name=MODEL_NAME,
            versions=[str(model.version)],
            platform=PLATFORM,
            inputs=[_tensor_metadata(model.input_spec)],
            outputs=[_tensor_metadata(model.output_spec)],
        )

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        return await self.plane.infer(INFER, request, deadline_of(context))
