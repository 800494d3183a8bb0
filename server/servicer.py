"""fashion.v1.PredictionService: protobuf in, a data-plane call, protobuf out.

No policy here: errors, metrics and admission are the data plane's, status
codes and request parsing are :mod:`server.grpc_binding`'s (see :func:`add_service`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.catalog import Catalog
from server.codec import PredictCodec, encode_model_info, predict_target
from server.config import Settings
from server.dataplane import DataPlane
from server.grpc_binding import deadline_of

SERVICE = pb.DESCRIPTOR.services_by_name["PredictionService"]
SERVICE_NAME = SERVICE.full_name


class PredictionServicer(pb_grpc.PredictionServiceServicer):
    def __init__(self, plane: DataPlane, catalog: Catalog, settings: Settings) -> None:
        self.plane = plane
        self.catalog = catalog
        self.settings = settings
        self._codec = PredictCodec(settings.default_model)

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        return await self.plane.infer(self._codec, request, deadline_of(context))

    def PredictStream(
        self, requests: AsyncIterator[pb.PredictRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PredictResponse]:
        """Pipelined: each request is submitted as it arrives, responses go out in order."""
        return self.plane.stream("PredictStream", self._codec, requests, deadline_of(context))

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        target = predict_target(
            self.settings.default_model,
            request.model_name,
            request.model_version,
            request.version_label,
        )
        served, route = self.catalog.describe(target)
        return encode_model_info(served.model, route, self.settings)
