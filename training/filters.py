"""Hand-made convolutions and max pooling, in numpy, exactly as the course notes explain them.

A 3x3 convolution replaces each pixel by the sum of its neighbourhood multiplied element-wise
by the filter weights (what Keras' Conv2D computes: no kernel flip). With "valid" borders the
output loses one pixel on each side (28x28 -> 26x26). 2x2 max pooling keeps the largest of
each 2x2 block (26x26 -> 13x13, a trailing odd row/column is dropped as in Keras).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The notes' worked example: the pixel 192 with its eight neighbours, and the filter.
NOTES_NEIGHBOURHOOD = np.array([[0, 64, 128], [48, 192, 144], [142, 226, 168]], dtype=np.float64)
NOTES_FILTER = np.array([[-1, 0, -2], [0.5, 4.5, -1.5], [1.5, 2, -3]], dtype=np.float64)

# Vertical lines respond to a left-right change of brightness, horizontal lines to a
# top-bottom change (the course lab's filters).
VERTICAL_LINE_FILTER = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
HORIZONTAL_LINE_FILTER = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float64)


def convolve3x3(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Valid 3x3 convolution: ``out[y, x] = sum(image[y:y+3, x:x+3] * kernel)``, float64."""
    if kernel.shape != (3, 3):
        raise ValueError(f"kernel must be 3x3, got {kernel.shape}")
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim != 2 or min(pixels.shape) < 3:
        raise ValueError(f"image must be 2-D and at least 3x3, got {pixels.shape}")
    rows, cols = pixels.shape[0] - 2, pixels.shape[1] - 2
    out = np.zeros((rows, cols), dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            out += kernel[dy, dx] * pixels[dy : dy + rows, dx : dx + cols]
    return out


def max_pool2x2(image: np.ndarray) -> np.ndarray:
    """2x2 max pooling with stride 2 (floor: an odd last row/column is dropped)."""
    rows, cols = image.shape[0] // 2, image.shape[1] // 2
    blocks = np.asarray(image)[: rows * 2, : cols * 2].reshape(rows, 2, cols, 2)
    pooled: np.ndarray = blocks.max(axis=(1, 3))
    return pooled


def to_display(response: np.ndarray) -> np.ndarray:
    """Clip a filter response to 0..255, as the course lab does before showing it."""
    clipped: np.ndarray = np.clip(response, 0, 255)
    return clipped


def worked_example_text() -> str:
    terms = " + ".join(
        f"({w:g}x{int(p)})"
        for w, p in zip(NOTES_FILTER.ravel(), NOTES_NEIGHBOURHOOD.ravel(), strict=True)
    )
    value = float((NOTES_NEIGHBOURHOOD * NOTES_FILTER).sum())
    return f"new pixel = {terms}\n= {value:g}"


def render_filters_demo(image: np.ndarray, path: Path, *, title: str = "") -> None:
    """Input, then for each hand-made filter: weights, response (26x26), pooled (13x13)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 6.4))
    axes = figure.subplots(2, 4)
    rows = (("vertical-line", VERTICAL_LINE_FILTER), ("horizontal-line", HORIZONTAL_LINE_FILTER))
    for row, (name, kernel) in enumerate(rows):
        response = to_display(convolve3x3(image, kernel))
        pooled = max_pool2x2(response)
        axes[row, 1].imshow(kernel, cmap="coolwarm", vmin=-2, vmax=2)
        for (y, x), weight in np.ndenumerate(kernel):
            axes[row, 1].text(x, y, f"{weight:g}", ha="center", va="center")
        axes[row, 1].set_title(f"{name} filter (3x3)")
        axes[row, 2].imshow(response, cmap="gray", vmin=0, vmax=255)
        axes[row, 2].set_title(f"convolved {response.shape[0]}x{response.shape[1]}")
        axes[row, 3].imshow(pooled, cmap="gray", vmin=0, vmax=255)
        axes[row, 3].set_title(f"2x2 max pooled {pooled.shape[0]}x{pooled.shape[1]}")
    axes[0, 0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0, 0].set_title(f"input {image.shape[0]}x{image.shape[1]}")
    axes[1, 0].text(
        0.0,
        0.5,
        "The notes' example (pixel 192):\n" + worked_example_text().replace(" + ", " +\n"),
        fontsize=7,
        va="center",
        family="monospace",
    )
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    axes[1, 0].axis("off")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=110, bbox_inches="tight")
