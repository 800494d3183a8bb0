"""fashion-inspect on a small real trained model (the session's model_repo fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from server.repository import read_version
from training.data import DEBIAN_DIR
from training.inspect import main, trace

PNG = b"\x89PNG\r\n\x1a\n"
needs_data = pytest.mark.skipif(
    not (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def test_course_cnn_journey_has_the_notes_shapes(model_repo: Path) -> None:
    model = onnx.load(str(read_version(model_repo, 1).model_path))
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 8:20] = 180
    journey = trace(model, image)
    assert [(label, maps.shape) for label, maps in journey.maps] == [
        ("conv 1", (26, 26, 64)),
        ("max pool 1", (13, 13, 64)),
        ("conv 2", (11, 11, 64)),
        ("max pool 2", (5, 5, 64)),
    ]
    assert journey.filters.shape == (64, 3, 3)
    assert all(maps.min() >= 0 for _, maps in journey.maps)  # after ReLU
    assert journey.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


@needs_data
def test_cli_renders_feature_maps_for_a_test_index(model_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.png"
    assert main(["--model-repo", str(model_repo), "--index", "3", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


def test_cli_renders_feature_maps_for_a_png(model_repo: Path, tmp_path: Path) -> None:
    from PIL import Image

    picture = tmp_path / "shirt.png"
    Image.fromarray(np.full((56, 56), 128, np.uint8)).save(picture)  # resized to 28x28
    out = tmp_path / "maps.png"
    argv = ["--model-repo", str(model_repo), "--version", "1", "--image", str(picture)]
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


@needs_data
def test_cli_filters_demo_needs_no_model(tmp_path: Path) -> None:
    out = tmp_path / "filters.png"
    assert main(["--filters", "--index", "0", "--out", str(out), "--model-repo", "/nowhere"]) == 0
    assert out.read_bytes()[:8] == PNG


def test_missing_version_is_one_clear_error(
    model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model-repo", str(model_repo), "--version", "99", "--image", "x.png"]
    assert main([*argv, "--out", str(tmp_path / "o.png")]) == 1
    assert capsys.readouterr().err.startswith("fashion-inspect: error:")
