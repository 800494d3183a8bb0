"""Open Inference Protocol REST bodies <-> numpy, protobuf -> JSON. Pure; bad input is InvalidInput.

An inference body is JSON (KServe v2 REST), optionally followed by binary tensor
data (Triton's binary-tensor extension): the ``Inference-Header-Content-Length``
header then says how many leading bytes are JSON, and an input whose
``parameters.binary_data_size`` is set takes its bytes, in input order, from the
rest. JSON ``data`` is flat (row-major) or nested exactly as the shape. This
module reads that layout only; names, datatype, shape, parameters and values are
checked by the one tensor decoder (:mod:`server.tensor`) that the gRPC binding
shares, so both protocols refuse and convert the same values with the same words.

JSON is parsed by orjson (3-10x faster than the standard library on these bodies,
docs/PERFORMANCE.md). A large body is parsed *and* decoded by :func:`parse_and_decode`
in a worker process (:mod:`server.rest_worker`): only the images come back, and a
decoding error is kept to be raised where a small body's would be.

Responses carry ``probabilities`` as JSON numbers, or as raw little-endian FP32
after the JSON when the request asks for binary output (``binary_data_output``,
or ``binary_data`` on the requested output).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson

from server.contract import INPUT_NAME, NUM_CLASSES, OUTPUT_DATATYPE, OUTPUT_NAME
from server.errors import InvalidInput
from server.request_context import check_request_id
from server.target import Target
from server.tensor import (
    BINARY_DATA_OUTPUT,
    BINARY_DATA_SIZE,
    TIMEOUT,
    Header,
    RequestOptions,
    check_input,
    check_value_count,
    names,
    pixels_from_bytes,
    pixels_from_values,
    request_options,
    shown,
    type_name,
)

if TYPE_CHECKING:  # not imported at run time: the parse worker must not load onnxruntime
    from server.model import LoadedModel

HEADER_LENGTH = "Inference-Header-Content-Length"
# model_name / model_version are not in the KServe v2 request schema, but KServe's own
# client sends them: accepted when they agree with the path.
_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs", "model_name", "model_version"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
# Request parameters understood here; any other is refused, never silently ignored.
SUPPORTED_PARAMETERS = frozenset({BINARY_DATA_OUTPUT, TIMEOUT})


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
    options: RequestOptions
    # Set by parse_and_decode: the images already decoded, or why they cannot be.
    images: np.ndarray | None = None
    decode_error: InvalidInput | None = None


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    """A response body; ``header_length`` is set when binary data follows the JSON."""

    body: bytes
    header_length: int | None


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
    document = _loads(head)
    if not isinstance(document, dict):
        raise InvalidInput(f"the request body must be a JSON object, got {type_name(document)}")
    unknown = sorted(k for k in document if k not in _REQUEST_KEYS)
    if unknown:
        raise InvalidInput(
            f"unknown request fields {names(unknown)}; expected {sorted(_REQUEST_KEYS)}"
        )
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {type_name(request_id)}")
    for key, in_path in (("model_name", model_name), ("model_version", model_version)):
        named = document.get(key, in_path)
        if not isinstance(named, str):
            raise InvalidInput(f"{key!r} must be a string, got {type_name(named)}")
        named = named or in_path  # "" is not given, as gRPC reads it
        if named != in_path and (key == "model_name" or in_path):
            raise InvalidInput(
                f"the body's {key} {named[:32]!r} differs from the path's {in_path[:32]!r}"
            )
        if key == "model_version" and not in_path:
            model_version = named  # a version named only in the body is the one asked for
    parameters = _parameters(document.get("parameters", {}), "request")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise InvalidInput("'inputs' must be an array of tensor objects")
    outputs = document.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not all(isinstance(t, dict) for t in outputs)
    ):
        raise InvalidInput("'outputs' must be an array of objects")
    requested = []
    for output in outputs or ():
        unknown = sorted(k for k in output if k not in _OUTPUT_KEYS)
        if unknown:
            raise InvalidInput(f"unknown output fields {names(unknown)}; expected name, parameters")
        requested.append((output.get("name"), _parameters(output.get("parameters", {}), "output")))
    options = request_options(parameters, requested, supported=SUPPORTED_PARAMETERS)
    return InferBody(
        model_name, model_version, request_id, parameters, inputs, outputs, binary, options
    )


def _loads(text: bytes) -> Any:
    """JSON -> Python (NaN and Infinity are not JSON, nor is anything but UTF-8)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        reason = "nested too deeply" if "depth limit" in str(exc) else str(exc)
        raise InvalidInput(f"the request body is not valid JSON: {reason}") from None


def parse_and_decode(
    body: bytes, header_length: str | None, *, model_name: str, model_version: str, max_images: int
) -> InferBody:
    """:func:`parse_infer_body`, then :func:`decode_images`: the images (or why they cannot be
    decoded) in place of the inputs, so a worker process sends back only what is needed."""
    parsed = parse_infer_body(
        body, header_length, model_name=model_name, model_version=model_version
    )
    try:
        images, error = decode_images(parsed, max_images), None
    except InvalidInput as exc:
        images, error = None, detached(exc)
    return dataclasses.replace(parsed, inputs=[], binary=b"", images=images, decode_error=error)


E = TypeVar("E", bound=BaseException)


def detached(error: E) -> E:
    """``error`` without what holds the request: its traceback's frames (and those of the
    error it was raised from, kept as its context even ``from None``) hold the parsed body,
    all its numbers as Python objects; an error kept beyond its frame (sent back from the
    parse worker, or returned from this frame, a reference cycle) would keep them too."""
    error.__context__ = error.__cause__ = None
    return error.with_traceback(None)


def _parameters(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} 'parameters' must be an object, got {type_name(value)}")
    return value


def _flatten(data: object, shape: list[int]) -> list[Any]:
    """``data`` flat, or nested exactly as ``shape`` -> a flat list (values unchecked)."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {INPUT_NAME!r} 'data' must be an array, got {type_name(data)}")
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


def _json_pixels(data: object, header: Header) -> np.ndarray:
    """JSON ``data`` (flat, or nested as the shape) -> uint8 [N, 28, 28]."""
    values = _flatten(data, header.shape)
    check_value_count(f"input {INPUT_NAME!r} 'data'", len(values), header)
    if header.datatype == "UINT8":
        if not all(type(v) is int for v in values):
            raise InvalidInput("UINT8 'data' must hold integers between 0 and 255")
        try:
            raw = bytes(values)  # C speed, and it refuses anything outside 0..255
        except ValueError:
            raise InvalidInput("UINT8 values must be between 0 and 255") from None
        return pixels_from_bytes(f"input {INPUT_NAME!r} 'data'", raw, header)
    if not all(type(v) is float or type(v) is int for v in values):
        raise InvalidInput("FP32 'data' must hold numbers (pixel values divided by 255)")
    try:
        array = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        raise InvalidInput("FP32 pixels must be uint8 values divided by 255") from None
    return pixels_from_values(array, header)


def decode_images(body: InferBody, max_images: int) -> np.ndarray:
    """The body's ``images`` tensor -> uint8 [N, 28, 28], through the one tensor decoder."""
    tensors = body.inputs
    tensor = tensors[0] if tensors else {}
    if len(tensors) == 1:
        unknown = sorted(k for k in tensor if k not in _INPUT_KEYS)
        if unknown:
            raise InvalidInput(
                f"unknown input fields {names(unknown)}; expected {sorted(_INPUT_KEYS)}"
            )
    parameters = _parameters(tensor.get("parameters", {}), "input")
    header = check_input(
        [t.get("name") for t in tensors],
        tensor.get("datatype"),
        tensor.get("shape"),
        [k for k in parameters if k != BINARY_DATA_SIZE],
        max_images,
    )
    size = parameters.get(BINARY_DATA_SIZE)
    if size is None:
        if body.binary:
            raise InvalidInput(
                f"the body has {len(body.binary)} bytes after the JSON but no input sets "
                f"{BINARY_DATA_SIZE}"
            )
        if "data" not in tensor:
            raise InvalidInput(
                f"input {INPUT_NAME!r} has no data: set 'data', or {BINARY_DATA_SIZE} and "
                f"send the bytes after the JSON ({HEADER_LENGTH})"
            )
        return _json_pixels(tensor["data"], header)
    if "data" in tensor:
        raise InvalidInput(f"input {INPUT_NAME!r} has both 'data' and {BINARY_DATA_SIZE}; send one")
    if type(size) is not int or size != header.bytes:
        raise InvalidInput(
            f"input {INPUT_NAME!r} {BINARY_DATA_SIZE} is {shown(size)}; shape {header.shape} of "
            f"{header.datatype} needs {header.bytes}"
        )
    if len(body.binary) != size:
        raise InvalidInput(
            f"the body has {len(body.binary)} bytes of binary data after the JSON "
            f"({HEADER_LENGTH}); {BINARY_DATA_SIZE} says {size}"
        )
    return pixels_from_bytes("the binary data", body.binary, header)


def encode_response(
    probabilities: np.ndarray, *, model_name: str, version: int, request_id: str, binary: bool
) -> EncodedResponse:
    n = len(probabilities)
    output: dict[str, Any] = {
        "name": OUTPUT_NAME,
        "datatype": OUTPUT_DATATYPE,
        "shape": [n, NUM_CLASSES],
    }
    document: dict[str, Any] = {"model_name": model_name, "model_version": str(version)}
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

    def target(self, request: InferBody) -> Target:
        check_request_id(request.id)
        return Target(
            request.model_name,
            request.model_version,
            request.options.timeout_us,
            request_id=request.id,
        )

    def decode(self, request: InferBody, max_images: int) -> np.ndarray:
        if request.decode_error is not None:
            raise request.decode_error
        if request.images is not None:
            return request.images
        return decode_images(request, max_images)

    def encode(
        self, request: InferBody, probabilities: np.ndarray, model: LoadedModel
    ) -> EncodedResponse:
        return encode_response(
            probabilities,
            model_name=model.name,
            version=model.version,
            request_id=request.id,
            binary=request.options.binary_output,
        )


REST_INFER = RestInferCodec()


def parse_index_body(body: bytes) -> bool:
    """Triton's repository index body ``{"ready": bool}`` (or none) -> ready."""
    if not body.strip():
        return False
    document = _loads(body)
    if not isinstance(document, dict) or not set(document) <= {"ready"}:
        raise InvalidInput('the repository index body is {"ready": true|false} or empty')
    ready = document.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("'ready' must be a boolean")
    return ready


def parse_control_body(body: bytes) -> dict[str, object]:
    """Triton's load/unload body ``{"parameters": {...}}`` (or none) -> the parameters."""
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput("the request body is not valid JSON") from None
    if not isinstance(document, dict) or not set(document) <= {"parameters"}:
        raise InvalidInput('the body is {"parameters": {...}} or empty')
    return _parameters(document.get("parameters", {}), "request")


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
