"""numpy images -> the uint8 [n, 28, 28] pixels the Predict API carries, exactly or not at all.

A cast or a reshape would "work" on almost anything: float pixels in [0, 1] cast to uint8
become 0 and 1, and any array whose size divides by 784 re-cuts into other images. Both give
confident, wrong predictions and no error, so every conversion here is exact or refused.

Accepted (what a Keras or Pillow user holds):

* shapes ``(28, 28)`` (one image), ``(N, 28, 28)`` and ``(N, 28, 28, 1)`` (a trailing
  channel of 1, as Keras keeps it); ``(28, 28, 1)`` is one image with its channel;
* uint8 pixels as they are; other integer types when every value is in [0, 255];
* floats holding ``pixel / 255`` (multiples of 1/255 in [0, 1]), converted back exactly as
  the server converts the Open Inference Protocol's FP32 pixels (``server/tensor.py``).
"""

from __future__ import annotations

import numpy as np

from server.contract import IMAGE_SHAPE
from server.tensor import exact_pixels

_SIDE = "x".join(map(str, IMAGE_SHAPE))


def as_pixels(images: np.ndarray) -> np.ndarray:
    """``images`` -> uint8 ``[n, 28, 28]``, C-contiguous; ValueError saying why it cannot be."""
    array = np.asarray(images)
    if array.shape == IMAGE_SHAPE or array.shape == (*IMAGE_SHAPE, 1):
        array = array.reshape(1, *IMAGE_SHAPE)
    elif array.ndim == 4 and array.shape[1:] == (*IMAGE_SHAPE, 1):
        array = array[..., 0]
    elif not (array.ndim == 3 and array.shape[1:] == IMAGE_SHAPE):
        raise ValueError(
            f"images have shape {array.shape}; expected {IMAGE_SHAPE} (one image), "
            f"(N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}) or (N, {IMAGE_SHAPE[0]}, "
            f"{IMAGE_SHAPE[1]}, 1): {_SIDE} grayscale images"
        )
    return np.ascontiguousarray(_as_uint8(array))


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"{array.dtype} pixels range from {array.min()} to {array.max()}; "
                "expected 0 to 255 (uint8)"
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        pixels = exact_pixels(array)
        if pixels is not None:
            return pixels
        raise ValueError(
            f"{array.dtype} pixels must be uint8 values divided by 255 (multiples of 1/255 "
            "in [0, 1]), as the server reads FP32 pixels; these are not. Send uint8: for "
            "floats holding 0..255, np.rint(images).astype(np.uint8); for floats in [0, 1], "
            "np.rint(images * 255).astype(np.uint8)"
        )
    raise ValueError(f"images have dtype {array.dtype}; expected uint8 pixels (0 to 255)")
