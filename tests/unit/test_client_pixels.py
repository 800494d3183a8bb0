"""The client's pixel conversion and file-size check agree with what the server accepts."""

from __future__ import annotations

import numpy as np
import pytest

from client.cli import MAX_ENCODED_BYTES
from client.pixels import as_pixels
from server import codec, tensor
from server.contract import IMAGE_BYTES, INPUT_NAME
from server.errors import InvalidInput


def server_fp32(values: np.ndarray) -> np.ndarray | None:
    """What the server makes of FP32 pixels over the Open Inference Protocol; None: refused."""
    header = tensor.check_input([INPUT_NAME], "FP32", [len(values), 28, 28], (), len(values))
    try:
        return tensor.pixels_from_values(values.ravel(), header)
    except InvalidInput:
        return None


def client_float(values: np.ndarray) -> np.ndarray | None:
    try:
        return as_pixels(values)
    except ValueError:
        return None


def test_float_pixels_are_converted_or_refused_exactly_as_the_server_does() -> None:
    every = np.arange(256, dtype=np.float64)
    near_misses = every + 0.002  # 0.002 of a level off: as wrong as 0.5, by the same rule
    out_of_range = np.array([-1.0, 256.0, np.inf, np.nan])
    for scaled in (every, near_misses, every - 0.002, out_of_range):
        for dtype in (np.float32, np.float64):
            # One value per image (the rest exact), so each is accepted or refused on its own.
            images = np.zeros((len(scaled), IMAGE_BYTES), dtype)
            images[:, 100] = scaled / 255
            images = images.reshape(-1, 28, 28)
            for image in images:
                ours, theirs = client_float(image[np.newaxis]), server_fp32(image[np.newaxis])
                assert (ours is None) == (theirs is None), image.ravel()[100] * 255
                if ours is not None:
                    np.testing.assert_array_equal(ours, theirs)
    assert client_float((every / 255).reshape(1, 16, 16)) is None  # shape refused, not re-cut


def test_uint8_pixels_pass_unchanged_and_contiguous() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for form in (images, images[..., np.newaxis], np.asfortranarray(images)):
        out = as_pixels(form)
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("shape", [(0, 28, 28), (3, 28, 28), (3, 28, 28, 1)])
def test_a_batch_keeps_its_length(shape: tuple[int, ...]) -> None:
    assert as_pixels(np.zeros(shape, np.uint8)).shape == (shape[0], 28, 28)


def test_the_clients_file_size_limit_is_the_servers() -> None:
    assert MAX_ENCODED_BYTES == codec.MAX_ENCODED_BYTES
