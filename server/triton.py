"""Triton's gRPC extensions of inference.GRPCInferenceService: adapters over the data plane.

Registered in place of :class:`server.oip.InferenceServicer` (it is one, plus
Triton's methods). Like every servicer here, protobuf in, a data-plane call,
protobuf out: readiness, version resolution, batching, metrics and the error
table are the data plane's (:mod:`server.dataplane`, :mod:`server.status`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server.dataplane import Failure
from server.errors import Unimplemented, VersionNotFound
from server.oip import InferenceServicer
from server.oip_codec import INFER, parse_version
from server.repository import MODEL_NAME
from server.status import deadline_of
from server.triton_codec import (
    EXTENSIONS,
    model_config,
    model_statistics,
    not_implemented_message,
    repository_index,
)


class TritonServicer(InferenceServicer):
    EXTENSIONS = EXTENSIONS

    def ModelStreamInfer(
        self, requests: AsyncIterator[oip.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[oip.ModelStreamInferResponse]:
        """Pipelined and batched with all other traffic; one answer per request, in order.

        A failed request is answered in ``error_message`` and the stream goes on, as
        Triton does; only a broken request stream ends it.
        """
        outcomes = self.plane.stream_outcomes(
            "ModelStreamInfer", INFER, requests, deadline_of(context)
        )
        return _stream_responses(outcomes)

    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelConfigResponse:
        model = self.plane.resolve(parse_version(request.name, request.version))
        return oip.ModelConfigResponse(config=model_config(model, self.settings))

    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        """Every version with traffic plus the served one, or the one asked for.

        An empty name means every model (this server has one).
        """
        wanted = parse_version(request.name or MODEL_NAME, request.version)
        statistics = self.plane.metrics.statistics
        known = set(statistics.versions())
        if self.plane.manager.loaded:
            known.add(self.plane.model().version)
        if wanted and wanted not in known:
            raise VersionNotFound(
                f"model {MODEL_NAME!r} version {wanted} has no statistics: it has not been "
                f"served (versions with statistics: {sorted(known) or 'none'})"
            )
        versions = [wanted] if wanted else sorted(known)
        return oip.ModelStatisticsResponse(
            model_stats=[model_statistics(statistics.of(v)) for v in versions]
        )

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryIndexResponse:
        manager = self.plane.manager
        return repository_index(
            manager.versions_on_disk(),
            served=manager.current.version if manager.loaded else None,
            ready=self.plane.readiness.ready,
            refused=(),  # ModelManager.refused_versions() is not committed yet
            pinned=self.settings.model_version,
            only_ready=request.ready,
        )

    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelLoadResponse:
        raise Unimplemented(not_implemented_message("RepositoryModelLoad"))

    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelUnloadResponse:
        raise Unimplemented(not_implemented_message("RepositoryModelUnload"))

    async def SystemSharedMemoryStatus(
        self, request: oip.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> oip.SystemSharedMemoryStatusResponse:
        raise Unimplemented(not_implemented_message("SystemSharedMemoryStatus"))

    async def SystemSharedMemoryRegister(
        self, request: oip.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> oip.SystemSharedMemoryRegisterResponse:
        raise Unimplemented(not_implemented_message("SystemSharedMemoryRegister"))

    async def SystemSharedMemoryUnregister(
        self, request: oip.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> oip.SystemSharedMemoryUnregisterResponse:
        raise Unimplemented(not_implemented_message("SystemSharedMemoryUnregister"))

    async def CudaSharedMemoryStatus(
        self, request: oip.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> oip.CudaSharedMemoryStatusResponse:
        raise Unimplemented(not_implemented_message("CudaSharedMemoryStatus"))

    async def CudaSharedMemoryRegister(
        self, request: oip.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> oip.CudaSharedMemoryRegisterResponse:
        raise Unimplemented(not_implemented_message("CudaSharedMemoryRegister"))

    async def CudaSharedMemoryUnregister(
        self, request: oip.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> oip.CudaSharedMemoryUnregisterResponse:
        raise Unimplemented(not_implemented_message("CudaSharedMemoryUnregister"))

    async def TraceSetting(
        self, request: oip.TraceSettingRequest, context: grpc.aio.ServicerContext
    ) -> oip.TraceSettingResponse:
        raise Unimplemented(not_implemented_message("TraceSetting"))

    async def LogSettings(
        self, request: oip.LogSettingsRequest, context: grpc.aio.ServicerContext
    ) -> oip.LogSettingsResponse:
        raise Unimplemented(not_implemented_message("LogSettings"))


async def _stream_responses(
    outcomes: AsyncIterator[oip.ModelInferResponse | Failure],
) -> AsyncIterator[oip.ModelStreamInferResponse]:
    try:
        async for outcome in outcomes:
            if isinstance(outcome, Failure):
                yield oip.ModelStreamInferResponse(error_message=outcome.message)
            else:
                yield oip.ModelStreamInferResponse(infer_response=outcome)
    finally:
        close = getattr(outcomes, "aclose", None)
        if close is not None:  # cancel what is still in flight at once
            await close()
