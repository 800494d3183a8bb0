"""The hand-made convolution and pooling of the course notes, checked by hand arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.filters import (
    HORIZONTAL_LINE_FILTER,
    NOTES_FILTER,
    NOTES_NEIGHBOURHOOD,
    VERTICAL_LINE_FILTER,
    convolve3x3,
    max_pool2x2,
    render_filters_demo,
    worked_example_text,
)


def test_notes_pixel_192_is_the_sum_of_neighbours_times_filter_weights() -> None:
    # The notes' formula, written out term by term.
    by_hand = (
        (-1 * 0) + (0 * 64) + (-2 * 128)
        + (0.5 * 48) + (4.5 * 192) + (-1.5 * 144)
        + (1.5 * 142) + (2 * 226) + (-3 * 168)
    )  # fmt: skip
    assert by_hand == 577
    assert convolve3x3(NOTES_NEIGHBOURHOOD, NOTES_FILTER).tolist() == [[577.0]]
    assert worked_example_text().endswith("= 577")


def test_every_output_pixel_is_its_own_neighbourhood_times_the_filter() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 7)).astype(np.uint8)
    out = convolve3x3(image, NOTES_FILTER)
    assert out.shape == (4, 5)
    for y in range(4):
        for x in range(5):
            patch = image[y : y + 3, x : x + 3].astype(np.float64)
            assert out[y, x] == pytest.approx(float((patch * NOTES_FILTER).sum()))


def test_valid_convolution_shrinks_28_to_26() -> None:
    assert convolve3x3(np.zeros((28, 28), np.uint8), VERTICAL_LINE_FILTER).shape == (26, 26)


def test_vertical_filter_finds_vertical_lines_and_horizontal_filter_horizontal_lines() -> None:
    vertical = np.zeros((8, 8))
    vertical[:, 4:] = 255  # a vertical edge
    horizontal = vertical.T.copy()  # the same edge, lying down
    assert np.abs(convolve3x3(vertical, VERTICAL_LINE_FILTER)).max() == 4 * 255
    assert np.abs(convolve3x3(vertical, HORIZONTAL_LINE_FILTER)).max() == 0
    assert np.abs(convolve3x3(horizontal, HORIZONTAL_LINE_FILTER)).max() == 4 * 255
    assert np.abs(convolve3x3(horizontal, VERTICAL_LINE_FILTER)).max() == 0


def test_max_pooling_keeps_the_biggest_of_each_2x2_block() -> None:
    image = np.array(
        [[0, 64, 128, 1], [48, 192, 144, 2], [142, 226, 168, 3], [5, 6, 7, 250]], dtype=np.uint8
    )
    assert max_pool2x2(image).tolist() == [[192, 144], [226, 250]]
    assert max_pool2x2(np.zeros((26, 26))).shape == (13, 13)
    assert max_pool2x2(np.zeros((11, 11))).shape == (5, 5)  # floor, as in Keras


def test_kernel_and_image_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="kernel must be 3x3"):
        convolve3x3(np.zeros((5, 5)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="at least 3x3"):
        convolve3x3(np.zeros((2, 5)), NOTES_FILTER)


def test_filters_demo_renders_a_png(tmp_path: Path) -> None:
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 10:18] = 200
    out = tmp_path / "filters.png"
    render_filters_demo(image, out, title="tiny")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
