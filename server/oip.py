"""inference.GRPCInferenceService (Open Inference Protocol) over the same batcher and model."""

from __future__ import annotations

from importlib import metadata as package_metadata

import grpc

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.errors import VersionNotFound
from server.model import TensorSpec
from server.oip_codec import decode_infer_request, encode_infer_response, requested_outputs
from server.repository import MODEL_NAME
from server.servicer import ServicerBase, Serving, deadline_of
from server.status import rpc

SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PLATFORM = "onnxruntime_onnx"
_DATATYPES = {"uint8": "UINT8", "float32": "FP32"}


def _server_version() -> str:
    try:
        return package_metadata.version("fashion-serving")
    except package_metadata.PackageNotFoundError:
        return "0+unknown"


def _tensor_metadata(spec: TensorSpec) -> oip.ModelMetadataResponse.TensorMetadata:
    return oip.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=_DATATYPES[spec.dtype], shape=spec.shape
    )


def parse_version(name: str, version: str) -> int:
    """Model name and version string -> version number (0 = the served one)."""
    if name != MODEL_NAME:
        raise VersionNotFound(f"unknown model {name!r}; this server serves {MODEL_NAME!r}")
    if not version:
        return 0
    if not version.isdigit() or int(version) < 1:
        raise VersionNotFound(
            f"unknown version {version!r} of model {MODEL_NAME!r}; versions are positive integers"
        )
    return int(version)


class InferenceServicer(ServicerBase, oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, serving: Serving) -> None:
        super().__init__(serving)
        self._version = _server_version()

    def _ready(self) -> bool:
        return self.gate.open and not self.gate.shutting_down

    @rpc("ServerLive")
    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    @rpc("ServerReady")
    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._ready())

    @rpc("ModelReady")
    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        wanted = parse_version(request.name, request.version)
        if not self.manager.loaded:
            return oip.ModelReadyResponse(ready=False)
        served = self.manager.current.version
        if wanted and wanted != served:
            if wanted not in self.manager.versions_on_disk():
                raise VersionNotFound(f"model {MODEL_NAME!r} has no version {wanted}")
            return oip.ModelReadyResponse(ready=False)  # on disk, but not the one served
        return oip.ModelReadyResponse(ready=self._ready())

    @rpc("ServerMetadata")
    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name="fashion-serving", version=self._version, extensions=[]
        )

    @rpc("ModelMetadata")
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        model = self.manager.resolve(parse_version(request.name, request.version))
        return oip.ModelMetadataResponse(
            name=MODEL_NAME,
            versions=[str(model.version)],
            platform=PLATFORM,
            inputs=[_tensor_metadata(model.input_spec)],
            outputs=[_tensor_metadata(model.output_spec)],
        )

    @rpc("ModelInfer")
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        self.gate.check()
        wanted = parse_version(request.model_name, request.model_version)
        self.manager.resolve(wanted)
        requested_outputs(request)
        images = decode_infer_request(request, self.settings.max_images_per_request)
        probabilities, model = await self.batcher.submit(images, deadline=deadline_of(context))
        self.manager.confirm(wanted, model)
        return encode_infer_response(
            probabilities, model_name=MODEL_NAME, version=model.version, request_id=request.id
        )
