"""fashion.v1.PredictionService: protobuf in, a data-plane call, protobuf out.

No policy here: errors, metrics and admission are the data plane's, status
codes and request parsing are :mod:`server.grpc_binding`'s (see :func:`add_service`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.codec import PREDICT, encode_model_info
from server.config import Settings
from server.dataplane import DataPlane
from server.grpc_binding import deadline_of

SERVICE = pb.DESCRIPTOR.services_by_name["PredictionService"]
SERVICE_NAME = SERVICE.full_name


class PredictionServicer(pb_grpc.PredictionServiceServicer):
    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.settings = settings

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        return await self.plane.infer(PREDICT, request, deadline_of(context))

    def PredictStream(
        self, requests: AsyncIterator[pb.PredictRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PredictResponse]:
        """Pipelined: each request is submitted as it arrives, responses go out in order."""
        return self.plane.stream("PredictStream", PREDICT, requests, deadline_of(context))

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return encode_model_info(self.plane.model(), self.settings)
