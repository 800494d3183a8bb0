"""Triton's gRPC extensions of inference.GRPCInferenceService: adapters over the data plane.

Registered in place of :class:`server.oip.InferenceServicer` (it is one, plus
Triton's methods). Like every servicer here, protobuf in, a data-plane or
catalog call, protobuf out: readiness, version resolution, batching, metrics and
the error table are the data plane's (:mod:`server.dataplane`,
:mod:`server.grpc_binding`), the answers about models the catalog's
(:mod:`server.catalog`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server.catalog import Catalog
from server.control import AUTHORIZATION, ModelControl
from server.dataplane import DataPlane, Failure
from server.errors import InvalidInput, Unimplemented
from server.grpc_binding import deadline_of
from server.oip import InferenceServicer
from server.oip_codec import STREAM_INFER, encode_stream_failure, parameter_values
from server.triton_codec import NOT_IMPLEMENTED, not_implemented_message


class TritonServicer(InferenceServicer):
    def __init__(self, plane: DataPlane, catalog: Catalog, control: ModelControl) -> None:
        super().__init__(plane, catalog)
        self.control = control

    def ModelStreamInfer(
        self, requests: AsyncIterator[oip.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[oip.ModelStreamInferResponse]:
        """Pipelined and batched with all other traffic; one answer per request, in order,
        each marked final (:data:`server.oip_codec.FINAL_RESPONSE`).

        A failed request is answered in ``error_message`` and the stream goes on, as
        Triton does; only a broken request stream ends it. The binding closes the
        returned iterator when the call ends, which cancels what is still in flight.
        """
        return self.plane.stream_outcomes(
            "ModelStreamInfer", STREAM_INFER, requests, deadline_of(context), _answer_failure
        )

    async def ModelConfig(
        self, request: oip.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelConfigResponse:
        return oip.ModelConfigResponse(
            config=self.catalog.model_config(request.name, request.version)
        )

    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        return await self.catalog.model_statistics(request.name, request.version)

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryIndexResponse:
        _one_repository(request.repository_name)
        return self.catalog.repository_index(only_ready=request.ready)

    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelLoadResponse:
        """Load or reload a model (``--model-control-mode explicit``); it serves when this
        returns. A failure says why, and leaves what is served as it was."""
        _one_repository(request.repository_name)
        await self.control.load(
            request.model_name, parameter_values(request.parameters), _authorization(context)
        )
        return oip.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> oip.RepositoryModelUnloadResponse:
        """Unload a model: its in-flight requests finish first (this returns after them)."""
        _one_repository(request.repository_name)
        await self.control.unload(
            request.model_name, parameter_values(request.parameters), _authorization(context)
        )
        return oip.RepositoryModelUnloadResponse()


def _one_repository(name: str) -> None:
    if name:
        raise InvalidInput(
            f"repository {name[:64]!r}: this server has one model repository; leave "
            "repository_name empty"
        )


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION:
            return value if isinstance(value, str) else None
    return None


def _unimplemented(method: str) -> Callable[..., Awaitable[Any]]:
    """A handler that answers UNIMPLEMENTED with the reason this server gives for ``method``."""
    message = not_implemented_message(method)

    async def handler(self: TritonServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unimplemented(message)

    handler.__name__, handler.__qualname__ = method, f"TritonServicer.{method}"
    return handler


# Declared by Triton's service, not offered here: each says so, and why.
for _method in NOT_IMPLEMENTED:
    setattr(TritonServicer, _method, _unimplemented(_method))


def _answer_failure(
    request: oip.ModelInferRequest, failure: Failure
) -> oip.ModelStreamInferResponse:
    return encode_stream_failure(request, failure.message)
