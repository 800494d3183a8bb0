"""Predict API: protobuf <-> numpy. Pure functions; every bad input is InvalidInput.

Encoded images (PNG/JPEG) are decoded by Pillow, partly in Python: a crafted file
padded with empty chunks or fill bytes decodes in seconds. So an encoded image
above :data:`MAX_ENCODED_BYTES` is refused before any parsing, and
:func:`prepare_images` hands decoding back as a deferred call that the data plane
runs off the event loop; raw pixels never leave the fast path.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from server._proto.fashion.v1 import prediction_pb2 as pb
from server.config import Settings
from server.contract import IMAGE_BYTES, IMAGE_SHAPE, MAX_ENCODED_BYTES, NUM_CLASSES
from server.errors import InvalidInput, TooLarge
from server.model import LoadedModel
from server.routing import Route
from server.target import Target

_ENCODED_FORMATS = {"PNG", "JPEG"}
# Modes with more than 8 bits per channel: converting them to 8-bit would silently
# rescale or clip the pixels, so they are refused instead.
_REFUSED_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# A PNG's bit depth (IHDR, right after the 8-byte signature): Pillow opens 16-bit colour
# PNGs in 8-bit modes (RGB, RGBA, LA) and drops each sample's low byte, so the mode
# alone cannot tell; only 16-bit gray becomes a refused mode.
_PNG_IHDR = slice(12, 16)
_PNG_BIT_DEPTH = 24


def decode_encoded(data: bytes, index: int) -> np.ndarray:
    """A PNG/JPEG of a 28x28 image -> uint8 [28, 28]."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(io.BytesIO(data))
            fmt = image.format
            if fmt not in _ENCODED_FORMATS:
                raise InvalidInput(f"image {index}: encoded image is {fmt}, expected PNG or JPEG")
            # Check the header's size before decoding any pixel data.
            if image.size != IMAGE_SHAPE[::-1]:
                raise InvalidInput(
                    f"image {index}: {fmt} is {image.size[0]}x{image.size[1]}, expected 28x28"
                )
            if fmt == "PNG":
                _check_png_bit_depth(data, index)
            if image.mode in _REFUSED_MODES:
                raise InvalidInput(
                    f"image {index}: {fmt} mode {image.mode} has more than 8 bits per pixel; "
                    "send an 8-bit grayscale image"
                )
            image.load()
            gray = image if image.mode == "L" else image.convert("L")
            return np.asarray(gray, dtype=np.uint8)
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        raise InvalidInput(f"image {index}: encoded bytes are not a PNG or JPEG file") from None
    except (
        OSError,
        ValueError,
        SyntaxError,
        PILImage.DecompressionBombError,
        PILImage.DecompressionBombWarning,
        EOFError,
    ) as exc:
        # PIL's messages describe the file, never our internals.
        raise InvalidInput(f"image {index}: cannot decode as PNG or JPEG ({exc})") from None


def _check_png_bit_depth(data: bytes, index: int) -> None:
    """Refuse a PNG whose IHDR (its first chunk, as the PNG spec requires) declares more
    than 8 bits per sample."""
    if data[_PNG_IHDR] != b"IHDR" or len(data) <= _PNG_BIT_DEPTH:
        raise InvalidInput(f"image {index}: cannot decode as PNG or JPEG (IHDR is not first)")
    depth = data[_PNG_BIT_DEPTH]
    if depth > 8:
        raise InvalidInput(
            f"image {index}: PNG has {depth}-bit samples (more than 8 bits per pixel); "
            "send an 8-bit grayscale image"
        )


class EncodedImages:
    """A deferred decode: fills ``out`` with the encoded images (blocking, CPU-bound), a
    slice at a time (:class:`server.decoder.SlicedDecode`)."""

    def __init__(self, out: np.ndarray, encoded: list[tuple[int, bytes]]) -> None:
        self.out = out
        self.encoded = encoded
        self.images = len(encoded)  # how many images the call decodes
        self._next = 0

    def decode_some(self, slice_s: float) -> np.ndarray | None:
        """Decode images for about ``slice_s`` (at least one); ``out`` once all are done."""
        until = time.perf_counter() + slice_s
        while self._next < len(self.encoded):
            i, data = self.encoded[self._next]
            self.out[i] = decode_encoded(data, i)
            self._next += 1
            if time.perf_counter() >= until:
                break
        return self.out if self._next == len(self.encoded) else None

    def __call__(self) -> np.ndarray:
        """Decode them all at once."""
        out = self.decode_some(math.inf)
        assert out is not None
        return out


def prepare_images(request: pb.PredictRequest, max_images: int) -> np.ndarray | EncodedImages:
    """Check the request's images; uint8 [n, 28, 28] now, or a call that decodes them.

    Everything cheap (counts, sizes, raw pixels) is checked here, on the caller's
    thread. When the request holds encoded images the result is an
    :class:`EncodedImages` call that decodes them (run it off the event loop) and
    returns the array in request order.
    """
    images = request.images
    n = len(images)
    if n == 0:
        raise InvalidInput("the request has no images; send 1 or more")
    if n > max_images:
        raise TooLarge(
            f"the request has {n} images; this server accepts at most {max_images} per request"
        )
    raws = [image.raw for image in images]
    # Fast path: every image raw and the right size -> one join, one frombuffer.
    if all(len(r) == IMAGE_BYTES for r in raws) and not any(im.encoded for im in images):
        return np.frombuffer(b"".join(raws), dtype=np.uint8).reshape(n, *IMAGE_SHAPE)
    out = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    encoded: list[tuple[int, bytes]] = []
    for i, image in enumerate(images):
        if image.raw and image.encoded:
            raise InvalidInput(f"image {i}: set exactly one of raw or encoded, not both")
        if image.raw:
            if len(image.raw) != IMAGE_BYTES:
                raise InvalidInput(
                    f"image {i}: raw image has {len(image.raw)} bytes, expected "
                    f"{IMAGE_BYTES} (28x28 uint8, row-major)"
                )
            out[i] = np.frombuffer(image.raw, dtype=np.uint8).reshape(IMAGE_SHAPE)
        elif image.encoded:
            if len(image.encoded) > MAX_ENCODED_BYTES:
                raise TooLarge(
                    f"image {i}: encoded image has {len(image.encoded)} bytes; this server "
                    f"accepts at most {MAX_ENCODED_BYTES} (a 28x28 PNG/JPEG needs a few hundred)"
                )
            encoded.append((i, image.encoded))
        else:
            raise InvalidInput(
                f"image {i}: empty; set raw (784 bytes) or encoded (a PNG/JPEG file)"
            )
    if not encoded:
        return out
    return EncodedImages(out, encoded)


def check_top_k(top_k: int) -> None:
    if top_k > NUM_CLASSES:
        raise InvalidInput(f"top_k is {top_k}; it must be between 0 and {NUM_CLASSES}")


def encode_predictions(
    probabilities: np.ndarray,
    class_names: Sequence[str],
    *,
    version: int,
    include_probabilities: bool = False,
    top_k: int = 0,
) -> pb.PredictResponse:
    """float32 [n, 10] -> PredictResponse with one Prediction per row."""
    labels = probabilities.argmax(axis=1)
    confidences = probabilities[np.arange(len(labels)), labels].tolist()
    response = pb.PredictResponse(model_version=version)
    add = response.predictions.add
    if not include_probabilities and not top_k:
        for label, confidence in zip(labels.tolist(), confidences, strict=True):
            add(label=label, class_name=class_names[label], confidence=confidence)
        return response
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k] if top_k else None
    rows = probabilities.tolist()
    for i, (label, confidence) in enumerate(zip(labels.tolist(), confidences, strict=True)):
        prediction = add(label=label, class_name=class_names[label], confidence=confidence)
        if include_probabilities:
            prediction.probabilities.extend(rows[i])
        if order is not None:
            for k in order[i].tolist():
                prediction.top_k.add(label=k, class_name=class_names[k], probability=rows[i][k])
    return response


def predict_target(
    default_model: str, model_name: str, model_version: int, version_label: str
) -> Target:
    """The fields naming a model version in PredictRequest and GetModelInfoRequest."""
    if model_version < 0:
        raise InvalidInput(
            f"model_version is {model_version}; send 0 (the model's default version) or a "
            "positive version number"
        )
    if model_version and version_label:
        raise InvalidInput(
            f"set model_version ({model_version}) or version_label "
            f"({version_label[:64]!r}), not both"
        )
    return Target(
        model_name or default_model,
        str(model_version) if model_version else "",
        label=version_label,
    )


class PredictCodec:
    """fashion.v1 Predict for the data plane (see :class:`server.dataplane.RequestCodec`).

    ``default_model``: the model a request that names none gets (--default-model).
    """

    def __init__(self, default_model: str) -> None:
        self.default_model = default_model

    def target(self, request: pb.PredictRequest) -> Target:
        check_top_k(request.top_k)
        return predict_target(
            self.default_model, request.model_name, request.model_version, request.version_label
        )

    def decode(self, request: pb.PredictRequest, max_images: int) -> np.ndarray | EncodedImages:
        return prepare_images(request, max_images)

    def encode(
        self, request: pb.PredictRequest, probabilities: np.ndarray, model: LoadedModel
    ) -> pb.PredictResponse:
        response = encode_predictions(
            probabilities,
            model.class_names,
            version=model.version,
            include_probabilities=request.include_probabilities,
            top_k=request.top_k,
        )
        response.model_name = model.name
        return response


def encode_model_info(model: LoadedModel, route: Route, settings: Settings) -> pb.ModelInfo:
    """GetModelInfo: one loaded version, its model's versions and labels, and the batching
    settings every version runs under (the queue bound is per version)."""
    s = settings
    return pb.ModelInfo(
        name=model.name,
        version=model.version,
        class_names=model.class_names,
        inputs=[
            pb.TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape) for t in (model.input_spec,)
        ],
        outputs=[
            pb.TensorSpec(name=t.name, dtype=t.dtype, shape=t.shape) for t in (model.output_spec,)
        ],
        execution_provider=model.provider,
        test_accuracy=model.test_accuracy,
        architecture=model.architecture,
        model_sha256=model.model_sha256,
        model_variant=model.variant,
        batching=pb.BatchingInfo(
            max_batch_size=s.max_batch_size,
            max_batch_delay_ms=s.max_batch_delay_ms,
            max_queue_images=s.max_queue,
            max_images_per_request=s.max_images_per_request,
            concurrency=s.batch_concurrency,
        ),
        loaded_versions=route.version_numbers,
        version_labels=dict(route.labels),
        default_version=route.default,
    )
