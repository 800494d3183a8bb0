"""Server reflection as grpcurl uses it: grpcio-reflection's servicer, also resolving methods.

``grpcurl describe fashion.v1.PredictionService.Predict`` asks for the file containing
the symbol ``fashion.v1.PredictionService.Predict``. grpc-go's reflection knows method
names as symbols; grpcio-reflection looks the name up in protobuf's descriptor pool,
which (upb) knows services and messages but not methods, so it answered NOT_FOUND and
grpcurl printed ``Symbol not found``. A method is answered with its service's file.
"""

from __future__ import annotations

from grpc_reflection.v1alpha import reflection, reflection_pb2


class ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    def _file_containing_symbol(
        self, request: reflection_pb2.ServerReflectionRequest, fully_qualified_name: str
    ) -> reflection_pb2.ServerReflectionResponse:
        answer = super()._file_containing_symbol(request, fully_qualified_name)
        service, _, method = fully_qualified_name.rpartition(".")
        if not answer.HasField("error_response") or service not in self._service_names:
            return answer
        try:
            found = self._pool.FindServiceByName(service)
        except KeyError:
            return answer
        if method not in found.methods_by_name:
            return answer
        return super()._file_containing_symbol(request, service)
