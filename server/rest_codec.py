"""Open Inference Protocol REST bodies <-> numpy, protobuf -> JSON. Pure; bad input is InvalidInput.

An inference body is JSON (KServe v2 REST), optionally followed by binary tensor
data (Triton's binary-tensor extension): the ``Inference-Header-Content-Length``
header then says how many leading bytes are JSON, and an input whose
``parameters.binary_data_size`` is set takes its bytes, in input order, from the
rest. The tensor rules are the gRPC ones (:mod:`server.oip_codec`): ``images`` as
UINT8 or FP32 ``pixel / 255``, shape [N, 28, 28] or [N, 28, 28, 1]; JSON ``data``
is flat (row-major) or nested exactly as the shape. After these checks the
tensor goes through the same decoder as a gRPC request, so both protocols refuse
and convert the same values the same way.

Responses carry ``probabilities`` as JSON numbers, or as raw little-endian FP32
after the JSON when the request asks for binary output (``binary_data_output``,
or ``binary_data`` on the requested output).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server.contract import INPUT_NAME, MODEL_NAME, NUM_CLASSES, OUTPUT_NAME
from server.errors import InvalidInput
from server.model import LoadedModel
from server.oip_codec import decode_infer_request, image_count, parse_version

HEADER_LENGTH = "Inference-Header-Content-Length"
_ITEM_BYTES = {"UINT8": 1, "FP32": 4}
# model_name / model_version are not in the KServe v2 request schema, but KServe's own
# client sends them: accepted when they agree with the path.
_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs", "model_name", "model_version"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
# Request parameters understood here; any other is refused, never silently ignored.
# "timeout" is Triton's per-request timeout in microseconds (a deadline).
_REQUEST_PARAMETERS = frozenset({"binary_data_output", "timeout"})
# A shape longer than this is refused before it is echoed in a message.
_MAX_RANK = 8
_INT64_MAX = 2**63 - 1


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True, slots=True)
class InferBody:
    """One parsed inference request: the path's model and version plus the body's parts."""

    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]] | None
    binary: bytes

    @property
    def timeout_s(self) -> float | None:
        """Triton's ``timeout`` parameter (microseconds) in seconds, or None."""
        value = self.parameters.get("timeout")
        return None if value is None else value / 1e6


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    """A response body; ``header_length`` is set when binary data follows the JSON."""

    body: bytes
    header_length: int | None


def _type_name(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else "null"
    )


def _shown(value: object) -> str:
    """Client JSON for a message: strings cut, containers by type, never echoed whole."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 32 else f"{value[:32]!r}... ({len(value)} characters)"
    if value is None or isinstance(value, bool | int | float):
        text = repr(value)
        return text if len(text) <= 32 else f"{text[:32]}..."
    return _type_name(value)


def _names(keys: list[str]) -> str:
    """Up to eight client field names, each cut, as a list for a message."""
    return "[" + ", ".join(_shown(k) for k in keys[:8]) + (", ...]" if len(keys) > 8 else "]")


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header -> how many leading bytes are JSON."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise InvalidInput(f"{HEADER_LENGTH} must be a byte count, got {value[:32]!r}")
    length = int(text)
    if length > body_length:
        raise InvalidInput(f"{HEADER_LENGTH} is {length} but the body has only {body_length} bytes")
    return length


def parse_infer_body(
    body: bytes, header_length: str | None, *, model_name: str, model_version: str
) -> InferBody:
    """The raw HTTP body (and header) -> :class:`InferBody`. Checks structure, not tensors."""
    length = parse_header_length(header_length, len(body))
    head, binary = (body, b"") if length is None else (body[:length], body[length:])
    try:
        document = json.loads(head, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput("the request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"the request body must be a JSON object, got {_type_name(document)}")
    unknown = sorted(k for k in document if k not in _REQUEST_KEYS)
    if unknown:
        raise InvalidInput(
            f"unknown request fields {_names(unknown)}; expected {sorted(_REQUEST_KEYS)}"
        )
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {_type_name(request_id)}")
    for key, in_path in (("model_name", model_name), ("model_version", model_version)):
        named = document.get(key, in_path)
        if not isinstance(named, str):
            raise InvalidInput(f"{key!r} must be a string, got {_type_name(named)}")
        if named != in_path and (key == "model_name" or in_path):
            raise InvalidInput(
                f"the body's {key} {named[:32]!r} differs from the path's {in_path[:32]!r}"
            )
        if key == "model_version" and not in_path:
            model_version = named  # a version named only in the body is the one asked for
    parameters = _parameters(document.get("parameters", {}), "request")
    _check_request_parameters(parameters)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise InvalidInput("'inputs' must be an array of tensor objects")
    outputs = document.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not all(isinstance(t, dict) for t in outputs)
    ):
        raise InvalidInput("'outputs' must be an array of objects")
    return InferBody(model_name, model_version, request_id, parameters, inputs, outputs, binary)


def _parameters(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} 'parameters' must be an object, got {_type_name(value)}")
    return value


def _check_request_parameters(parameters: dict[str, Any]) -> None:
    unsupported = sorted(k for k in parameters if k not in _REQUEST_PARAMETERS)
    if unsupported:
        raise InvalidInput(
            f"request parameters {_names(unsupported)} are not supported "
            f"(supported: {sorted(_REQUEST_PARAMETERS)})"
        )
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise InvalidInput("request parameter 'binary_data_output' must be a boolean")
    timeout = parameters.get("timeout")
    if timeout is not None and (type(timeout) is not int or not 0 < timeout <= _INT64_MAX):
        raise InvalidInput("request parameter 'timeout' must be a positive integer (microseconds)")


def _check_outputs(body: InferBody) -> bool:
    """Only ``probabilities`` exists; True when it is to be sent as binary data."""
    binary: bool = body.parameters.get("binary_data_output", False)
    for output in body.outputs or ():
        unknown = sorted(k for k in output if k not in _OUTPUT_KEYS)
        if unknown:
            raise InvalidInput(
                f"unknown output fields {_names(unknown)}; expected name, parameters"
            )
        name = output.get("name")
        if name != OUTPUT_NAME:
            raise InvalidInput(
                f"unknown output {_shown(name)}; this model has one output {OUTPUT_NAME!r}"
            )
        parameters = _parameters(output.get("parameters", {}), "output")
        if "classification" in parameters:
            raise InvalidInput(
                "the classification extension is not supported; ask for 'probabilities' "
                "and take the top classes on the client"
            )
        unsupported = sorted(k for k in parameters if k != "binary_data")
        if unsupported:
            raise InvalidInput(f"output parameters {_names(unsupported)} are not supported")
        wanted = parameters.get("binary_data", binary)
        if not isinstance(wanted, bool):
            raise InvalidInput("output parameter 'binary_data' must be a boolean")
        binary = wanted
    return binary


def _flatten(data: object, shape: list[int]) -> list[Any]:
    """``data`` flat, or nested exactly as ``shape`` -> a flat list (values unchecked)."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {INPUT_NAME!r} 'data' must be an array, got {_type_name(data)}")
    if not data or not isinstance(data[0], list):
        return data
    level: list[Any] = data
    for depth in range(len(shape) - 1):
        size = shape[depth + 1]
        if len(level) != math.prod(shape[: depth + 1]) or not all(
            isinstance(item, list) and len(item) == size for item in level
        ):
            raise InvalidInput(
                f"input {INPUT_NAME!r} 'data' is nested but not as shape {shape}; "
                "send it flat (row-major) or nested exactly as the shape"
            )
        level = [value for item in level for value in item]
    return level


def _json_values(data: object, datatype: str, shape: list[int], count: int) -> bytes:
    values = _flatten(data, shape)
    if len(values) != count:
        raise InvalidInput(
            f"input {INPUT_NAME!r} has {len(values)} values in 'data'; shape {shape} needs {count}"
        )
    if datatype == "UINT8":
        if not all(type(v) is int for v in values):
            raise InvalidInput("UINT8 'data' must hold integers between 0 and 255")
        try:
            return bytes(values)
        except ValueError:
            raise InvalidInput("UINT8 values must be between 0 and 255") from None
    if not all(type(v) is float or type(v) is int for v in values):
        raise InvalidInput("FP32 'data' must hold numbers (pixel values divided by 255)")
    try:
        return np.asarray(values, dtype="<f4").tobytes()
    except OverflowError:
        raise InvalidInput("FP32 pixels must be uint8 values divided by 255") from None


def decode_images(body: InferBody, max_images: int) -> np.ndarray:
    """The body's ``images`` tensor -> uint8 [N, 28, 28] (the gRPC decoder does the last step)."""
    if len(body.inputs) != 1 or body.inputs[0].get("name") != INPUT_NAME:
        names = ", ".join(_shown(t.get("name")) for t in body.inputs[:8])
        raise InvalidInput(f"expected exactly one input named {INPUT_NAME!r}, got [{names}]")
    tensor = body.inputs[0]
    unknown = sorted(k for k in tensor if k not in _INPUT_KEYS)
    if unknown:
        raise InvalidInput(
            f"unknown input fields {_names(unknown)}; expected {sorted(_INPUT_KEYS)}"
        )
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in _ITEM_BYTES:
        raise InvalidInput(
            f"input {INPUT_NAME!r} has datatype {_shown(datatype)}; expected UINT8 "
            "(or FP32 pixel values in [0, 1])"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_RANK
        or not all(type(d) is int and abs(d) <= _INT64_MAX for d in shape)
    ):
        raise InvalidInput(
            f"input {INPUT_NAME!r} 'shape' must be an array of integers, e.g. [1, 28, 28]"
        )
    image_count(shape, max_images)  # the gRPC shape rule, checked before the data
    count = math.prod(shape)
    parameters = _parameters(tensor.get("parameters", {}), "input")
    unsupported = sorted(k for k in parameters if k != "binary_data_size")
    if unsupported:
        raise InvalidInput(f"input parameters {_names(unsupported)} are not supported")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise InvalidInput(
                f"input {INPUT_NAME!r} has both 'data' and binary_data_size; send one"
            )
        needed = count * _ITEM_BYTES[datatype]
        if type(size) is not int or size != needed:
            raise InvalidInput(
                f"input {INPUT_NAME!r} binary_data_size is {_shown(size)}; shape {shape} of "
                f"{datatype} needs {needed}"
            )
        if len(body.binary) != size:
            raise InvalidInput(
                f"the body has {len(body.binary)} bytes of binary data after the JSON "
                f"({HEADER_LENGTH}); binary_data_size says {size}"
            )
        raw = body.binary
    else:
        if body.binary:
            raise InvalidInput(
                f"the body has {len(body.binary)} bytes after the JSON but no input sets "
                "binary_data_size"
            )
        if "data" not in tensor:
            raise InvalidInput(
                f"input {INPUT_NAME!r} has no data: set 'data', or binary_data_size and "
                f"send the bytes after the JSON ({HEADER_LENGTH})"
            )
        raw = _json_values(tensor["data"], datatype, shape, count)
    request = oip.ModelInferRequest(
        inputs=[
            oip.ModelInferRequest.InferInputTensor(name=INPUT_NAME, datatype=datatype, shape=shape)
        ],
        raw_input_contents=[raw],
    )
    return decode_infer_request(request, max_images)


def encode_response(
    probabilities: np.ndarray, *, version: int, request_id: str, binary: bool
) -> EncodedResponse:
    n = len(probabilities)
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [n, NUM_CLASSES]}
    document: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": str(version)}
    if request_id:
        document["id"] = request_id
    document["outputs"] = [output]
    if not binary:
        output["data"] = probabilities.ravel().tolist()
        return EncodedResponse(json.dumps(document, separators=(",", ":")).encode(), None)
    raw = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps(document, separators=(",", ":")).encode()
    return EncodedResponse(head + raw, len(head))


class RestInferCodec:
    """REST inference for the data plane (see :class:`server.dataplane.RequestCodec`)."""

    def version(self, request: InferBody) -> int:
        wanted = parse_version(request.model_name, request.model_version)
        _check_outputs(request)
        return wanted

    def decode(self, request: InferBody, max_images: int) -> np.ndarray:
        return decode_images(request, max_images)

    def encode(
        self, request: InferBody, probabilities: np.ndarray, model: LoadedModel
    ) -> EncodedResponse:
        return encode_response(
            probabilities,
            version=model.version,
            request_id=request.id,
            binary=_check_outputs(request),
        )


REST_INFER = RestInferCodec()


def parse_index_body(body: bytes) -> bool:
    """Triton's repository index body ``{"ready": bool}`` (or none) -> ready."""
    if not body.strip():
        return False
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput("the request body is not valid JSON") from None
    if not isinstance(document, dict) or not set(document) <= {"ready"}:
        raise InvalidInput('the repository index body is {"ready": true|false} or empty')
    ready = document.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("'ready' must be a boolean")
    return ready


# -- protobuf -> JSON, as Triton's REST API writes its messages ---------------


def message_json(message: Any) -> dict[str, Any]:
    """A protobuf message -> a JSON object with the proto field names.

    Like ``json_format.MessageToDict(preserving_proto_field_name=True,
    always_print_fields_with_no_presence=True)`` except that 64-bit integers stay
    numbers (Triton writes them so, and its clients read them as numbers), and
    unset sub-messages are left out (a present ``sequence_batching`` would make
    clients treat the model as a sequence model).
    """
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.has_presence and not message.HasField(field.name):
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {str(k): _json_value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_json_value(field, v) for v in value]
        else:
            out[field.name] = _json_value(field, value)
    return out


def _json_value(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        return message_json(value)
    if field.enum_type is not None:
        number = field.enum_type.values_by_number.get(value)
        return number.name if number is not None else value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value
