"""Open Inference Protocol over gRPC: ``ModelInferRequest`` <-> numpy. Bad input is InvalidInput.

This module knows the gRPC message's layout only — the data is in
``raw_input_contents`` (the fast path, zero-copy) or in the typed ``contents``
(``uint_contents`` for UINT8, ``fp32_contents`` for FP32), never both — and hands
everything else to the one tensor decoder (:mod:`server.tensor`), which the REST
binding shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server.contract import INPUT_NAME, NUM_CLASSES, OUTPUT_DATATYPE, OUTPUT_NAME
from server.errors import InvalidInput
from server.model import LoadedModel
from server.request_context import MAX_REQUEST_ID_CHARS, check_request_id, id_problem
from server.target import Target
from server.tensor import (
    BINARY_DATA_SIZE,
    EMPTY_FINAL_RESPONSE,
    TIMEOUT,
    check_input,
    check_value_count,
    pixels_from_bytes,
    pixels_from_values,
    request_options,
)

_TYPED_FIELD = {"UINT8": "uint_contents", "FP32": "fp32_contents"}
_WIDE_DTYPE = {"UINT8": np.uint32, "FP32": np.float32}
# Request parameters this binding accepts (Triton's names).
SUPPORTED_PARAMETERS = frozenset({TIMEOUT, EMPTY_FINAL_RESPONSE})
# Triton sets this on every ModelStreamInfer response: whether it is its request's last.
# This model is not decoupled (one response per request), so each one is, and Triton sends
# no empty final response for such a model even when the request asks for one
# (stream_infer_handler.cc: only "!iresponse && is_decoupled_"). Clients that asked for
# one (tritonclient's enable_empty_final_response, PyTriton) read until they see this.
FINAL_RESPONSE = "triton_final_response"


def parameter_values(parameters: Mapping[str, Any]) -> dict[str, object]:
    """Protobuf parameters (``InferParameter``, ``ModelRepositoryParameter``) -> plain values
    (bool, int, str, float, bytes), as JSON would carry them."""
    values: dict[str, object] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = None if choice is None else getattr(parameter, choice)
    return values


def infer_target(request: oip.ModelInferRequest) -> Target:
    """Model, version and timeout; the id, request parameters and requested outputs are
    checked."""
    check_request_id(request.id)
    if not request.parameters and not request.outputs:
        # The common request: no parameters, every output (nothing more to check).
        return Target(request.model_name, request.model_version, request_id=request.id)
    options = request_options(
        parameter_values(request.parameters),
        [(output.name, parameter_values(output.parameters)) for output in request.outputs],
        supported=SUPPORTED_PARAMETERS,
    )
    return Target(
        request.model_name, request.model_version, options.timeout_us, request_id=request.id
    )


def decode_infer_request(request: oip.ModelInferRequest, max_images: int) -> np.ndarray:
    """The request's ``images`` tensor -> uint8 [N, 28, 28]."""
    tensors = request.inputs
    tensor = tensors[0] if tensors else oip.ModelInferRequest.InferInputTensor()
    # binary_data_size is the one input parameter accepted (checked below): KServe's client
    # sends it with raw_input_contents, as its REST form needs it.
    header = check_input(
        [t.name for t in tensors], tensor.datatype, list(tensor.shape),
        [k for k in tensor.parameters if k != BINARY_DATA_SIZE], max_images,
    )  # fmt: skip
    has_typed = tensor.HasField("contents") and any(
        len(getattr(tensor.contents, f.name)) for f in tensor.contents.DESCRIPTOR.fields
    )
    has_raw = len(request.raw_input_contents) > 0
    if has_raw and has_typed:
        raise InvalidInput("send the input either in raw_input_contents or in contents, not both")
    if BINARY_DATA_SIZE in tensor.parameters and not has_raw:
        raise InvalidInput(
            f"input {INPUT_NAME!r} sets {BINARY_DATA_SIZE}, which describes raw_input_contents; "
            "send the bytes there, or drop the parameter"
        )
    if has_raw:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(
                f"raw_input_contents has {len(request.raw_input_contents)} entries; expected 1 "
                "(one per input)"
            )
        raw = request.raw_input_contents[0]
        if BINARY_DATA_SIZE in tensor.parameters:
            _check_binary_data_size(tensor.parameters[BINARY_DATA_SIZE], len(raw))
        return pixels_from_bytes("raw_input_contents[0]", raw, header)
    if not has_typed:
        raise InvalidInput(
            f"input {INPUT_NAME!r} has no data; fill raw_input_contents (fast) or contents"
        )
    field = _TYPED_FIELD[header.datatype]
    typed = getattr(tensor.contents, field)
    others = [
        f.name
        for f in tensor.contents.DESCRIPTOR.fields
        if f.name != field and len(getattr(tensor.contents, f.name))
    ]
    if others:
        raise InvalidInput(f"{header.datatype} data goes in contents.{field}, not {others}")
    check_value_count(f"contents.{field}", len(typed), header)
    return pixels_from_values(np.asarray(typed, dtype=_WIDE_DTYPE[header.datatype]), header)


def _check_binary_data_size(parameter: oip.InferParameter, sent: int) -> None:
    """The input's ``binary_data_size`` (an integer) must be the byte count actually sent."""
    choice = parameter.WhichOneof("parameter_choice")
    size = getattr(parameter, choice) if choice in ("int64_param", "uint64_param") else None
    if size != sent:
        shown_size = "not an integer" if size is None else str(size)
        raise InvalidInput(
            f"input {INPUT_NAME!r} {BINARY_DATA_SIZE} is {shown_size} but "
            f"raw_input_contents[0] has {sent} bytes"
        )


def encode_infer_response(
    probabilities: np.ndarray, *, model_name: str, version: int, request_id: str
) -> oip.ModelInferResponse:
    response = oip.ModelInferResponse()
    _fill_response(response, probabilities, model_name, version, request_id)
    return response


def encode_stream_response(
    probabilities: np.ndarray, *, model_name: str, version: int, request_id: str
) -> oip.ModelStreamInferResponse:
    """:func:`encode_infer_response` inside a stream's response, marked final.

    Filled in place: building a ModelInferResponse and then wrapping it would copy it,
    which costs more than the flag (the stream path is benchmarked)."""
    streamed = oip.ModelStreamInferResponse()
    response = streamed.infer_response
    _fill_response(response, probabilities, model_name, version, request_id)
    response.parameters[FINAL_RESPONSE].bool_param = True
    return streamed


def _fill_response(
    response: oip.ModelInferResponse,
    probabilities: np.ndarray,
    model_name: str,
    version: int,
    request_id: str,
) -> None:
    response.model_name = model_name
    response.model_version = str(version)
    response.id = request_id
    response.outputs.add(name=OUTPUT_NAME, datatype=OUTPUT_DATATYPE).shape.extend(
        (len(probabilities), NUM_CLASSES)
    )
    response.raw_output_contents.append(np.ascontiguousarray(probabilities, dtype="<f4").tobytes())


def encode_stream_failure(
    request: oip.ModelInferRequest, message: str
) -> oip.ModelStreamInferResponse:
    """A failed request's answer in a stream: ``error_message``, and the request's id, model
    name and version as it sent them, so the client knows which request failed (Triton's
    EnqueueErrorResponse/StreamInferResponseComplete). A field that is too long to be one
    (e.g. the very id that was refused for its length) is left empty: echoing it would
    hold a hostile stream's requests twice."""
    streamed = oip.ModelStreamInferResponse(error_message=message)
    response = streamed.infer_response
    if request.id and not id_problem(request.id):
        response.id = request.id
    if len(request.model_name) <= MAX_REQUEST_ID_CHARS:
        response.model_name = request.model_name
    if len(request.model_version) <= MAX_REQUEST_ID_CHARS:
        response.model_version = request.model_version
    response.parameters[FINAL_RESPONSE].bool_param = True
    return streamed


class _InferRequests:
    """ModelInfer's requests for the data plane (see :class:`server.dataplane.RequestCodec`)."""

    def target(self, request: oip.ModelInferRequest) -> Target:
        return infer_target(request)

    def decode(self, request: oip.ModelInferRequest, max_images: int) -> np.ndarray:
        return decode_infer_request(request, max_images)


class InferCodec(_InferRequests):
    """ModelInfer: its answer is a ModelInferResponse."""

    def encode(
        self, request: oip.ModelInferRequest, probabilities: np.ndarray, model: LoadedModel
    ) -> oip.ModelInferResponse:
        return encode_infer_response(
            probabilities, model_name=model.name, version=model.version, request_id=request.id
        )


class StreamInferCodec(_InferRequests):
    """ModelStreamInfer: ModelInfer's checks; each answer is the stream's message itself."""

    def encode(
        self, request: oip.ModelInferRequest, probabilities: np.ndarray, model: LoadedModel
    ) -> oip.ModelStreamInferResponse:
        return encode_stream_response(
            probabilities, model_name=model.name, version=model.version, request_id=request.id
        )


INFER = InferCodec()
STREAM_INFER = StreamInferCodec()
