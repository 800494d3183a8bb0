"""The one Open Inference Protocol tensor decoder, for every binding. Bad input is InvalidInput.

Both bindings (gRPC ``ModelInferRequest`` in :mod:`server.oip_codec`, REST JSON and
Triton's binary tensors in :mod:`server.rest_codec`) read their own wire layout —
which field or which part of the body holds the data — and hand the rest here:
names, datatype, shape, parameters, the data's length and its values are checked
once, in one order, with one set of messages. So the same bad tensor gets the very
same message whichever binding carried it.

Accepted for ``images`` (uint8 [N, 28, 28] in the model):

* datatype UINT8 (native) or FP32 holding ``pixel / 255`` (converted back exactly:
  every value must be a multiple of 1/255 in [0, 1]; anything else is refused
  rather than silently rounded);
* shape [N, 28, 28] or [N, 28, 28, 1], 1 <= N <= the per-request limit.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from server.contract import IMAGE_SHAPE, INPUT_NAME, OIP_ITEM_BYTES, OUTPUT_NAME
from server.errors import InvalidInput, TooLarge

_NUMPY_DTYPE: dict[str, np.dtype[np.generic]] = {"UINT8": np.dtype("u1"), "FP32": np.dtype("<f4")}
# float32(k / 255) * 255 lands within a few ulps of k; 1e-3 is far below the
# 1/255 spacing, so only true multiples of 1/255 pass.
_FP32_TOLERANCE = 1e-3
# A shape longer than this is refused before it is echoed in a message.
_MAX_RANK = 8
INT64_MAX = 2**63 - 1

# Request parameters: "timeout" is Triton's per-request timeout in microseconds (a deadline);
# 0, Triton's default, is no timeout.
TIMEOUT = "timeout"
# REST only (Triton's binary tensor extension): send the outputs as binary data.
BINARY_DATA_OUTPUT = "binary_data_output"
# Triton clients (perf_analyzer on every request) ask for an empty final response, which
# only a decoupled model (many responses per request) ever sends: this model answers each
# request with exactly one, final response, so the request is already met either way.
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
_BOOLEAN_PARAMETERS = frozenset({BINARY_DATA_OUTPUT, EMPTY_FINAL_RESPONSE})
# The input parameter of Triton's binary tensor extension: how many bytes the input has
# outside the JSON (REST). KServe's client keeps it over gRPC too, for raw_input_contents.
BINARY_DATA_SIZE = "binary_data_size"


def shown(value: object, limit: int = 32) -> str:
    """Client text or JSON for a message: strings cut, containers by type, never echoed whole."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    if value is None or isinstance(value, bool | int | float):
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}..."
    return type_name(value)


def type_name(value: object) -> str:
    """``value``'s JSON type, as a message names it ("an array", "a string", ...)."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else "null"
    )


def names(keys: Iterable[object]) -> str:
    """Up to eight client field names, each cut, as a list for a message."""
    listed = list(keys)
    more = ", ...]" if len(listed) > 8 else "]"
    return "[" + ", ".join(shown(k) for k in listed[:8]) + more


# -- the request: parameters and requested outputs ------------------------------------


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What a request's parameters and requested outputs ask for, checked."""

    timeout_s: float | None = None  # Triton's "timeout" parameter, in seconds
    timeout_us: int | None = None  # the same, as sent (for the message when it passes)
    binary_output: bool = False  # REST: the output as binary data after the JSON


def request_options(
    parameters: Mapping[str, object],
    outputs: Sequence[tuple[object, Mapping[str, object]]],
    *,
    supported: Collection[str],
) -> RequestOptions:
    """Check the request's parameters (those in ``supported``) and requested outputs.

    ``outputs``: (name, parameters) of each requested output. Only ``probabilities``
    exists; its one parameter is ``binary_data`` (when ``binary_data_output`` is
    supported, i.e. over REST).
    """
    unknown = sorted(k for k in parameters if k not in supported)
    if unknown:
        raise InvalidInput(
            f"request parameters {names(unknown)} are not supported "
            f"(supported: {sorted(supported)})"
        )
    for key in _BOOLEAN_PARAMETERS & parameters.keys():
        if not isinstance(parameters[key], bool):
            raise InvalidInput(f"request parameter {key!r} must be a boolean")
    timeout = parameters.get(TIMEOUT)
    # gRPC's uint64_param arrives here as an int too: Triton takes only int64_param, but a
    # uint64 number of microseconds cannot mean anything else (and JSON has one integer type).
    if timeout is not None and (type(timeout) is not int or not 0 <= timeout <= INT64_MAX):
        raise InvalidInput(
            f"request parameter {TIMEOUT!r} must be a non-negative integer (microseconds; 0: none)"
        )
    if timeout == 0:
        timeout = None
    binary = bool(parameters.get(BINARY_DATA_OUTPUT, False))
    binary_allowed = BINARY_DATA_OUTPUT in supported
    for name, output_parameters in outputs:
        if name != OUTPUT_NAME:
            raise InvalidInput(
                f"unknown output {shown(name)}; this model has one output {OUTPUT_NAME!r}"
            )
        if "classification" in output_parameters:
            raise InvalidInput(
                "the classification extension is not supported; ask for "
                f"{OUTPUT_NAME!r} and take the top classes on the client"
            )
        allowed = {"binary_data"} if binary_allowed else set()
        unsupported = sorted(k for k in output_parameters if k not in allowed)
        if unsupported:
            raise InvalidInput(f"output parameters {names(unsupported)} are not supported")
        wanted = output_parameters.get("binary_data", binary)
        if not isinstance(wanted, bool):
            raise InvalidInput("output parameter 'binary_data' must be a boolean")
        binary = wanted
    return RequestOptions(
        timeout_s=None if timeout is None else timeout / 1e6,
        timeout_us=timeout,
        binary_output=binary,
    )


# -- the input tensor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """An ``images`` tensor's checked description: what its data must be."""

    datatype: str
    shape: list[int]
    images: int

    @property
    def values(self) -> int:
        return self.images * IMAGE_SHAPE[0] * IMAGE_SHAPE[1]

    @property
    def bytes(self) -> int:
        return self.values * OIP_ITEM_BYTES[self.datatype]


def image_count(shape: list[int], max_images: int) -> int:
    """The batch size of an ``images`` tensor of ``shape``; the one shape rule."""
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


def check_input(
    input_names: Sequence[object],
    datatype: object,
    shape: object,
    parameters: Collection[str],
    max_images: int,
) -> Header:
    """The one input's name, datatype, shape and parameters (none is supported), in that order."""
    if len(input_names) != 1 or input_names[0] != INPUT_NAME:
        listed = ", ".join(shown(name) for name in input_names[:8])
        raise InvalidInput(f"expected exactly one input named {INPUT_NAME!r}, got [{listed}]")
    if not isinstance(datatype, str) or datatype not in OIP_ITEM_BYTES:
        raise InvalidInput(
            f"input {INPUT_NAME!r} has datatype {shown(datatype)}; expected UINT8 "
            "(or FP32 pixel values in [0, 1])"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_RANK
        or not all(type(d) is int and abs(d) <= INT64_MAX for d in shape)
    ):
        raise InvalidInput(
            f"input {INPUT_NAME!r} 'shape' must be an array of integers, e.g. [1, 28, 28]"
        )
    n = image_count(shape, max_images)
    if parameters:
        raise InvalidInput(f"input parameters {names(sorted(parameters))} are not supported")
    return Header(datatype, shape, n)


def check_value_count(where: str, count: int, header: Header) -> None:
    """``where`` (the field that holds the values) has as many values as the shape needs."""
    if count != header.values:
        raise InvalidInput(
            f"{where} has {count} values; shape {header.shape} needs {header.values}"
        )


def pixels_from_bytes(where: str, data: bytes, header: Header) -> np.ndarray:
    """Raw little-endian tensor bytes (from the field ``where``) -> uint8 [N, 28, 28]."""
    if len(data) != header.bytes:
        raise InvalidInput(
            f"{where} has {len(data)} bytes; shape {header.shape} of {header.datatype} "
            f"needs {header.bytes}"
        )
    return _images(np.frombuffer(data, dtype=_NUMPY_DTYPE[header.datatype]), header)


def pixels_from_values(values: np.ndarray, header: Header) -> np.ndarray:
    """Typed values, already counted (:func:`check_value_count`) -> uint8 [N, 28, 28].

    UINT8 values arrive wider than a byte (protobuf's uint32, JSON's integers).
    """
    if header.datatype == "UINT8":
        if values.size and (values.min() < 0 or values.max() > 255):
            raise InvalidInput("UINT8 values must be between 0 and 255")
        values = values.astype(np.uint8)
    else:
        values = values.astype(np.float32)
    return _images(values, header)


def _images(values: np.ndarray, header: Header) -> np.ndarray:
    if header.datatype == "FP32":
        values = _from_fp32(values)
    images: np.ndarray = values.reshape(header.images, *IMAGE_SHAPE)
    return images


def _from_fp32(values: np.ndarray) -> np.ndarray:
    pixels = exact_pixels(values)
    if pixels is None:
        raise InvalidInput(
            "FP32 pixels must be uint8 values divided by 255 (multiples of 1/255 in [0, 1]); "
            "send UINT8 to avoid the conversion"
        )
    return pixels


def exact_pixels(values: np.ndarray) -> np.ndarray | None:
    """Floats holding ``pixel / 255`` back as uint8 pixels, exactly; None unless every value
    is a multiple of 1/255 in [0, 1]. The server's FP32 input and the client's float arrays
    (client/pixels.py) are converted by this one rule."""
    scaled = values.astype(np.float64) * 255.0
    rounded = np.rint(scaled)
    if not (
        np.all(np.isfinite(scaled))
        and np.all((rounded >= 0) & (rounded <= 255))
        and np.all(np.abs(scaled - rounded) <= _FP32_TOLERANCE)
    ):
        return None
    return rounded.astype(np.uint8)
