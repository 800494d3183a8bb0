"""Open Inference Protocol tensors <-> numpy. Pure functions; bad input is InvalidInput.

The model takes ``images`` uint8 [N, 28, 28]. Accepted on the wire:

* datatype UINT8 (native) or FP32 holding ``pixel / 255`` (converted back exactly:
  every value must be a multiple of 1/255 in [0, 1], anything else is refused
  rather than silently rounded);
* shape [N, 28, 28] or [N, 28, 28, 1];
* the data in ``raw_input_contents`` (the fast path, zero-copy) or in typed
  ``contents`` (``uint_contents`` for UINT8, ``fp32_contents`` for FP32), never both.
"""

from __future__ import annotations

import numpy as np

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server.contract import IMAGE_SHAPE, INPUT_NAME, MODEL_NAME, NUM_CLASSES, OUTPUT_NAME
from server.errors import InvalidInput, TooLarge, VersionNotFound
from server.model import LoadedModel
from server.repository import parse_version_number

_DTYPES: dict[str, np.dtype[np.generic]] = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4")}
_TYPED_FIELD = {"UINT8": "uint_contents", "FP32": "fp32_contents"}
# float32(k / 255) * 255 lands within a few ulps of k; 1e-3 is far below the
# 1/255 spacing, so only true multiples of 1/255 pass.
_FP32_TOLERANCE = 1e-3
# Triton clients (perf_analyzer on every request) ask for an empty final response, which
# only a decoupled model (many responses per request) ever sends: this model answers each
# request with exactly one, final response, so the request is already met either way.
TRITON_FINAL_RESPONSE = frozenset({"triton_enable_empty_final_response"})


def _quoted(text: str, limit: int = 32) -> str:
    """``repr`` of client text, cut: a 4,000-character name must not flood a message."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def parse_version(name: str, version: str) -> int:
    """Model name and version string -> version number (0 = the served one).

    Versions follow the repository's rule (:func:`server.repository.parse_version_number`):
    ASCII ``[1-9][0-9]*`` within int64, so ``01``, ``²`` or full-width digits are not
    quietly read as another number.
    """
    if name != MODEL_NAME:
        raise VersionNotFound(f"unknown model {_quoted(name)}; this server serves {MODEL_NAME!r}")
    if not version:
        return 0
    number = parse_version_number(version)
    if number is None:
        raise VersionNotFound(
            f"unknown version {_quoted(version)} of model {MODEL_NAME!r}; versions are "
            "positive integers in ASCII digits without leading zeros"
        )
    return number


def image_count(shape: list[int], max_images: int) -> int:
    """The batch size of an ``images`` tensor of ``shape``; the one shape rule (gRPC and REST)."""
    if len(shape) not in (3, 4) or shape[1:3] != list(IMAGE_SHAPE) or shape[3:] not in ([], [1]):
        raise InvalidInput(
            f"input {INPUT_NAME!r} has shape {shape}; expected [N, 28, 28] or [N, 28, 28, 1]"
        )
    n = int(shape[0])
    if n < 1:
        raise InvalidInput(f"input {INPUT_NAME!r} has batch size {n}; expected at least 1")
    if n > max_images:
        raise TooLarge(
            f"input {INPUT_NAME!r} has {n} images; this server accepts at most {max_images} "
            "per request"
        )
    return n


def _from_fp32(values: np.ndarray) -> np.ndarray:
    scaled = values.astype(np.float64) * 255.0
    rounded = np.rint(scaled)
    if not (
        np.all(np.isfinite(scaled))
        and np.all((rounded >= 0) & (rounded <= 255))
        and np.all(np.abs(scaled - rounded) <= _FP32_TOLERANCE)
    ):
        raise InvalidInput(
            "FP32 pixels must be uint8 values divided by 255 (multiples of 1/255 in [0, 1]); "
            "send UINT8 to avoid the conversion"
        )
    return rounded.astype(np.uint8)


def decode_infer_request(request: oip.ModelInferRequest, max_images: int) -> np.ndarray:
    """The request's ``images`` tensor -> uint8 [N, 28, 28]."""
    unsupported = sorted(k for k in request.parameters if k not in TRITON_FINAL_RESPONSE)
    if unsupported:
        raise InvalidInput(f"request parameters {unsupported} are not supported")
    for key in request.parameters:
        if request.parameters[key].WhichOneof("parameter_choice") != "bool_param":
            raise InvalidInput(f"request parameter {key!r} must be a bool")
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = [t.name for t in request.inputs]
        raise InvalidInput(f"expected exactly one input named {INPUT_NAME!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.parameters:
        raise InvalidInput(f"input parameters {sorted(tensor.parameters)} are not supported")
    dtype = _DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(
            f"input {INPUT_NAME!r} has datatype {tensor.datatype!r}; expected UINT8 "
            "(or FP32 pixel values in [0, 1])"
        )
    n = image_count(list(tensor.shape), max_images)
    count = n * IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    has_typed = tensor.HasField("contents") and any(
        len(getattr(tensor.contents, f.name)) for f in tensor.contents.DESCRIPTOR.fields
    )
    has_raw = len(request.raw_input_contents) > 0
    if has_raw and has_typed:
        raise InvalidInput("send the input either in raw_input_contents or in contents, not both")
    if has_raw:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(
                f"raw_input_contents has {len(request.raw_input_contents)} entries; expected 1 "
                "(one per input)"
            )
        raw = request.raw_input_contents[0]
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput(
                f"raw_input_contents[0] has {len(raw)} bytes; shape {list(tensor.shape)} of "
                f"{tensor.datatype} needs {count * dtype.itemsize}"
            )
        values = np.frombuffer(raw, dtype=dtype)
    elif has_typed:
        field = _TYPED_FIELD[tensor.datatype]
        typed = getattr(tensor.contents, field)
        others = [
            f.name
            for f in tensor.contents.DESCRIPTOR.fields
            if f.name != field and len(getattr(tensor.contents, f.name))
        ]
        if others:
            raise InvalidInput(f"{tensor.datatype} data goes in contents.{field}, not {others}")
        if len(typed) != count:
            raise InvalidInput(
                f"contents.{field} has {len(typed)} values; "
                f"shape {list(tensor.shape)} needs {count}"
            )
        if tensor.datatype == "UINT8":
            wide = np.asarray(typed, dtype=np.uint32)
            if wide.max(initial=0) > 255:
                raise InvalidInput("UINT8 values must be between 0 and 255")
            values = wide.astype(np.uint8)
        else:
            values = np.asarray(typed, dtype=np.float32)
    else:
        raise InvalidInput(
            f"input {INPUT_NAME!r} has no data; fill raw_input_contents (fast) or contents"
        )
    if tensor.datatype == "FP32":
        values = _from_fp32(values)
    images: np.ndarray = values.reshape(n, *IMAGE_SHAPE)
    return images


def requested_outputs(request: oip.ModelInferRequest) -> None:
    """Only ``probabilities`` exists; anything else is an error, not silently dropped."""
    for output in request.outputs:
        if output.name != OUTPUT_NAME:
            raise InvalidInput(
                f"unknown output {output.name!r}; this model has one output {OUTPUT_NAME!r}"
            )
        if output.parameters:
            raise InvalidInput(f"output parameters {sorted(output.parameters)} are not supported")


def encode_infer_response(
    probabilities: np.ndarray, *, model_name: str, version: int, request_id: str
) -> oip.ModelInferResponse:
    n = len(probabilities)
    return oip.ModelInferResponse(
        model_name=model_name,
        model_version=str(version),
        id=request_id,
        outputs=[
            oip.ModelInferResponse.InferOutputTensor(
                name=OUTPUT_NAME, datatype="FP32", shape=[n, NUM_CLASSES]
            )
        ],
        raw_output_contents=[np.ascontiguousarray(probabilities, dtype="<f4").tobytes()],
    )


class InferCodec:
    """ModelInfer for the data plane (see :class:`server.dataplane.RequestCodec`)."""

    def version(self, request: oip.ModelInferRequest) -> int:
        wanted = parse_version(request.model_name, request.model_version)
        requested_outputs(request)
        return wanted

    def decode(self, request: oip.ModelInferRequest, max_images: int) -> np.ndarray:
        return decode_infer_request(request, max_images)

    def encode(
        self, request: oip.ModelInferRequest, probabilities: np.ndarray, model: LoadedModel
    ) -> oip.ModelInferResponse:
        return encode_infer_response(
            probabilities, model_name=MODEL_NAME, version=model.version, request_id=request.id
        )


INFER = InferCodec()
