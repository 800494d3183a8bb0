"""The committed sample images are what examples/README.md says they are: real test-set images."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import CLASS_NAMES, load_test_split

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROW = re.compile(
    r"^\| `(?P<file>[^`]+\.png)` \| (?P<index>\d+) \| (?P<label>\d) (?P<name>[^|]+) \|$"
)


def listed() -> list[tuple[str, int, int, str]]:
    rows = []
    for line in (EXAMPLES / "README.md").read_text().splitlines():
        if match := ROW.match(line):
            rows.append(
                (match["file"], int(match["index"]), int(match["label"]), match["name"].strip())
            )
    return rows


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    images, labels, _ = load_test_split()
    return images, labels


def test_every_png_in_examples_is_listed_once() -> None:
    files = [row[0] for row in listed()]
    assert len(files) == len(set(files)) == len(CLASS_NAMES)
    assert sorted(files) == sorted(p.name for p in EXAMPLES.glob("*.png"))


def test_each_example_is_its_test_set_image_unchanged(test_split) -> None:
    images, labels = test_split
    for file, index, label, name in listed():
        with Image.open(EXAMPLES / file) as picture:
            assert (picture.format, picture.mode, picture.size) == ("PNG", "L", (28, 28)), file
            pixels = np.asarray(picture)
        np.testing.assert_array_equal(pixels, images[index], err_msg=file)
        assert int(labels[index]) == label and CLASS_NAMES[label] == name, file
        # "the first image of its class", as the README says
        assert int(np.argmax(labels == label)) == index, file
