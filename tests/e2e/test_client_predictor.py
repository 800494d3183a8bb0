"""PredictClient.predict with numpy pixels against a real server: exact, or refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.predictor import PredictClient
from tests.e2e.conftest import scrape

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def examples() -> np.ndarray:
    """The ten real test-set images in examples/, uint8 [10, 28, 28]."""
    return np.stack([np.asarray(Image.open(p)) for p in sorted(EXAMPLES.glob("*.png"))])


async def labels(port: int, images: np.ndarray) -> list[int]:
    def call() -> list[int]:
        with PredictClient(f"127.0.0.1:{port}", timeout_s=10) as client:
            return [p.label for p in client.predict(images).predictions]

    return await asyncio.to_thread(call)


async def test_every_accepted_form_of_the_same_pixels_gets_the_same_answers(
    app, examples: np.ndarray
) -> None:
    expected = await labels(app.port, examples)
    # One image per class: a model that tells any of them apart answers more than one class
    # (pixels cast to 0 and 1 would all look alike).
    assert len(expected) == 10 and len(set(expected)) > 1
    for same in (
        examples / 255,  # float64 in [0, 1]
        (examples / np.float32(255)).astype(np.float32),
        examples[..., np.newaxis],  # Keras's trailing channel
        examples.astype(np.int64),  # what np.array(list of ints) gives
    ):
        assert await labels(app.port, same) == expected
    assert await labels(app.port, examples[3]) == expected[3:4]  # one (28, 28) image
    assert await labels(app.port, examples[3][..., np.newaxis]) == expected[3:4]


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((49, 32, 32), np.uint8), "images have shape (49, 32, 32); expected (28, 28)"),
        (np.zeros((2, 784), np.uint8), "images have shape (2, 784)"),
        (np.zeros((2, 28, 28, 3), np.uint8), "images have shape (2, 28, 28, 3)"),
        (np.full((2, 28, 28), 37.0), "float64 pixels must be uint8 values divided by 255"),
        (np.full((2, 28, 28), 0.5, np.float32), "float32 pixels must be uint8 values divided"),
        (np.full((2, 28, 28), np.nan), "float64 pixels must be uint8 values divided by 255"),
        (np.full((2, 28, 28), 256), "int64 pixels range from 256 to 256; expected 0 to 255"),
        (np.zeros((2, 28, 28), bool), "images have dtype bool; expected uint8 pixels"),
    ],
    ids=["other-size", "flat", "rgb", "float-0-255", "float-between", "nan", "int-256", "bool"],
)
async def test_pixels_that_cannot_be_sent_exactly_are_refused_before_any_request(
    app, images: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        await labels(app.port, images)
    assert message in str(refused.value)
    assert (await scrape(app)).get("fashion_requests_total{method=Predict}", 0.0) == 0.0
