"""Predict codec: request images -> uint8 arrays, probabilities -> responses."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from server._proto.fashion.v1 import prediction_pb2 as pb
from server.codec import encode_predictions, prepare_images
from server.errors import InvalidInput, TooLarge


def decode_images(request, max_images: int) -> np.ndarray:
    """The request's images, decoding encoded ones inline (the server defers them)."""
    prepared = prepare_images(request, max_images)
    return prepared if isinstance(prepared, np.ndarray) else prepared()


NAMES = [f"c{i}" for i in range(10)]


def encoded(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def test_raw_images_keep_order_and_values() -> None:
    images = [pixels(i) for i in range(3)]
    request = pb.PredictRequest(images=[pb.Image(raw=a.tobytes()) for a in images])
    np.testing.assert_array_equal(decode_images(request, 10), np.stack(images))


def test_png_is_lossless_and_mixes_with_raw() -> None:
    a, b = pixels(1), pixels(2)
    request = pb.PredictRequest(images=[pb.Image(encoded=encoded(a)), pb.Image(raw=b.tobytes())])
    np.testing.assert_array_equal(decode_images(request, 10), np.stack([a, b]))


def test_jpeg_and_rgb_png_become_grayscale() -> None:
    flat = np.full((28, 28), 120, dtype=np.uint8)
    request = pb.PredictRequest(
        images=[
            pb.Image(encoded=encoded(flat, "JPEG")),
            pb.Image(encoded=encoded(flat, "PNG", "RGB")),
        ]
    )
    out = decode_images(request, 10)
    assert out.shape == (2, 28, 28) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - 120).max() <= 2


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        ([], InvalidInput, "no images"),
        (
            [pb.Image(raw=b"x" * 700)],
            InvalidInput,
            "image 0: raw image has 700 bytes, expected 784",
        ),
        ([pb.Image(raw=b"x" * 784), pb.Image()], InvalidInput, "image 1: empty"),
        ([pb.Image(raw=b"x" * 784, encoded=b"png")], InvalidInput, "not both"),
        ([pb.Image(encoded=b"\x89PNG\r\n\x1a\nbroken")], InvalidInput, "not a PNG or JPEG file"),
        (
            [pb.Image(encoded=encoded(pixels(5))[:100])],
            InvalidInput,
            "cannot decode as PNG or JPEG (image file is truncated)",
        ),
        (
            [pb.Image(encoded=encoded(np.zeros((32, 32), np.uint8)))],
            InvalidInput,
            "PNG is 32x32, expected 28x28",
        ),
        (
            [pb.Image(encoded=encoded(np.zeros((28, 28), np.uint8), "GIF"))],
            InvalidInput,
            "encoded image is GIF, expected PNG or JPEG",
        ),
        ([pb.Image(raw=b"x" * 784)] * 5, TooLarge, "5 images; this server accepts at most 4"),
    ],
)
def test_bad_images_are_named(images, error, message) -> None:
    with pytest.raises(error) as info:
        decode_images(pb.PredictRequest(images=images), 4)
    assert message in str(info.value)


def png(bit_depth: int, color_type: int, channels: int) -> bytes:
    """A 28x28 PNG written by hand (Pillow writes no 16-bit colour PNG), every sample 0x1234."""
    sample = b"\x12\x34"[: bit_depth // 8] if bit_depth >= 8 else b"\x55"
    row_bytes = (28 * channels * bit_depth + 7) // 8
    row = b"\x00" + (sample * row_bytes)[:row_bytes]

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 28, 28, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * 28))
        + chunk(b"IEND", b"")
    )


def test_sixteen_bit_png_is_refused() -> None:
    data = encoded(np.zeros((28, 28), np.uint16) + 1000)
    with pytest.raises(InvalidInput, match="more than 8 bits"):
        decode_images(pb.PredictRequest(images=[pb.Image(encoded=data)]), 4)


@pytest.mark.parametrize(
    ("color_type", "channels"),
    [(0, 1), (2, 3), (4, 2), (6, 4)],
    ids=["gray", "rgb", "gray-alpha", "rgba"],
)
def test_every_sixteen_bit_png_is_refused_not_truncated(color_type, channels) -> None:
    """Pillow opens 16-bit colour PNGs as 8-bit modes (RGB, RGBA, LA), dropping the low byte
    of every sample: the PNG's own bit depth decides, not the mode Pillow picked."""
    data = png(16, color_type, channels)
    with pytest.raises(InvalidInput, match=r"image 0: PNG has 16-bit samples \(more than 8 bits"):
        decode_images(pb.PredictRequest(images=[pb.Image(encoded=data)]), 4)


def test_png_whose_first_chunk_is_not_ihdr_is_refused() -> None:
    """Pillow reads such a file; the bit depth check reads the IHDR where the spec puts it,
    so a 16-bit PNG with a chunk moved in front must not slip past it."""
    data = png(16, 2, 3)
    text = b"tEXt" + b"a\x00b"
    moved = data[:8] + struct.pack(">I", 3) + text + struct.pack(">I", zlib.crc32(text)) + data[8:]
    with pytest.raises(InvalidInput, match="IHDR is not first"):
        decode_images(pb.PredictRequest(images=[pb.Image(encoded=moved)]), 4)


@pytest.mark.parametrize(("bit_depth", "value"), [(1, 0), (2, 85), (4, 85), (8, 0x12)])
def test_grayscale_png_of_up_to_eight_bits_decodes(bit_depth, value) -> None:
    """Bit depths below 8 scale up exactly (0b01 of 2 bits is 85): nothing is lost."""
    out = decode_images(pb.PredictRequest(images=[pb.Image(encoded=png(bit_depth, 0, 1))]), 4)
    assert out.shape == (1, 28, 28)
    if bit_depth > 1:
        assert (out == value).all()


def test_encode_predictions_top_k_and_probabilities() -> None:
    probs = np.full((2, 10), 0.01, dtype=np.float32)
    probs[0, 3], probs[0, 5] = 0.6, 0.31
    probs[1, 9] = 0.91
    response = encode_predictions(probs, NAMES, version=7, include_probabilities=True, top_k=2)
    assert response.model_version == 7
    first, second = response.predictions
    assert (first.label, first.class_name) == (3, "c3")
    assert first.confidence == pytest.approx(0.6)
    assert [s.label for s in first.top_k] == [3, 5]
    assert list(first.probabilities) == pytest.approx(probs[0].tolist())
    assert second.label == 9 and second.top_k[0].class_name == "c9"
    plain = encode_predictions(probs, NAMES, version=7)
    assert not plain.predictions[0].probabilities and not plain.predictions[0].top_k
