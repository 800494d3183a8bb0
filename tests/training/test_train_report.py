"""End to end on real data: --arch bn_cnn --quantize int8 publishes the report and the variant."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest

from server.model import LoadedModel
from server.repository import list_versions, read_version
from training.data import DEBIAN_DIR
from training.quantize import INT8_FILE, accuracy_gate
from training.train import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
    pytest.mark.skipif(
        not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
        reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
    ),
]
REPORT_FILES = {"report.md", "learning_curves.png", "confusion_matrix.png", "misclassified.png"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bn_cnn and its recipe (cosine schedule, label smoothing, flips), two epochs on 1,500
    images, with the INT8 gate forced open (tiny model)."""
    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            "training.train.accuracy_gate",
            functools.partial(accuracy_gate, max_drop_points=100.0),
        )
        argv = ["--arch", "bn_cnn", "--quantize", "int8", "--limit", "1500", "--epochs", "2"]
        assert main([*argv, "--model-repo", str(root)]) == 0
    return root


def test_version_holds_report_int8_and_metadata(repo: Path) -> None:
    found = read_version(repo, 1)
    names = {path.name for path in found.path.iterdir()}
    assert REPORT_FILES | {"model.onnx", "metadata.json", INT8_FILE} == names
    meta = found.metadata
    assert meta["architecture"] == "bn_cnn" and meta["epochs_run"] == 2
    images = ["learning_curves.png", "confusion_matrix.png", "misclassified.png"]
    assert meta["report"] == {"file": "report.md", "images": images}
    assert set(meta["history"]) >= {"loss", "val_loss", "accuracy", "val_accuracy"}
    hyper = meta["hyperparameters"]
    assert hyper["distribution"] == "none"  # one CPU: no strategy
    assert (hyper["schedule"], hyper["augment"], hyper["label_smoothing"]) == (
        "cosine", "flip", 0.1,
    )  # fmt: skip
    assert hyper["lr_patience"] is None and hyper["learning_rate"] == 2e-3
    # The cosine schedule, logged per epoch: 1,350 training images in batches of 128 are
    # 11 steps per epoch, 22 in all; one warm-up step, then 21 of decay to exactly zero.
    first, last = meta["history"]["learning_rate"]
    assert first == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 10 / 21)), rel=1e-4)
    assert last == pytest.approx(0.0, abs=1e-9)
    int8 = meta["variants"]["int8"]
    assert int8["file"] == INT8_FILE and int8["calibration_images"] == 1000
    assert set(int8["images_per_second"]) == {"float", "int8", "threads"}
    assert set(int8["images_per_second"]["int8"]) == {"batch_1", "batch_32"}
    assert int8["size_bytes"] == (found.path / INT8_FILE).stat().st_size
    assert int8["accuracy_delta_points"] == pytest.approx(
        (int8["test_accuracy"] - meta["test_accuracy"]) * 100, abs=1e-3
    )
    assert "variants_refused" not in meta
    text = (found.path / "report.md").read_text()
    assert "**architecture**: bn_cnn" in text and "int8 variant" in text


def test_int8_variant_serves_with_the_float_signature(repo: Path) -> None:
    served = LoadedModel(read_version(repo, 1, variant="int8"), threads=1)
    assert served.variant == "int8" and served.architecture == "bn_cnn"
    probabilities = served.predict(np.zeros((3, 28, 28), np.uint8))
    assert probabilities.shape == (3, 10) and probabilities.dtype == np.float32


def test_refused_int8_publishes_the_float_model_alone(repo: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            "training.train.accuracy_gate",
            functools.partial(accuracy_gate, max_drop_points=-100.0),
        )
        argv = ["--quantize", "int8", "--limit", "500", "--epochs", "1", "--no-report"]
        assert main([*argv, "--model-repo", str(repo)]) == 0
    assert list_versions(repo) == [1, 2]
    found = read_version(repo, 2)
    assert {path.name for path in found.path.iterdir()} == {"model.onnx", "metadata.json"}
    refused = found.metadata["variants_refused"]["int8"]
    assert "beyond" in refused["reason"] and "variants" not in found.metadata
    assert "report" not in found.metadata
