"""inference.GRPCInferenceService (Open Inference Protocol): adapters over the data plane.

This class is the registration point of the whole service: Triton's extensions
(ModelConfig, ModelStatistics, ModelStreamInfer, RepositoryIndex, ...) are
methods here or in a subclass; any method of the service it lacks answers
UNIMPLEMENTED with its name (:func:`server.grpc_binding.add_service`). Answers
that are not inference come from :class:`server.catalog.Catalog`, as REST's do.
"""

from __future__ import annotations

import grpc

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.catalog import Catalog
from server.dataplane import DataPlane
from server.errors import VersionNotFound
from server.grpc_binding import deadline_of
from server.oip_codec import INFER

SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, catalog: Catalog) -> None:
        self.plane = plane
        self.catalog = catalog

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=self.catalog.live())

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self.catalog.ready())

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        try:
            ready, _ = self.catalog.model_ready(request.name, request.version)
        except VersionNotFound:
            # Not served is not ready: an answer, not an error, as Triton gives it
            # (InferenceServer::ModelIsReady) and as REST's 404 reads to HTTP clients.
            # tritonclient.grpc's is_model_ready raises on an error status.
            ready = False
        return oip.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return self.catalog.server_metadata()

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        return self.catalog.model_metadata(request.name, request.version)

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        return await self.plane.infer(INFER, request, deadline_of(context))
