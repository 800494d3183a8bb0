"""metadata.json contents: the contract the server reads. No TensorFlow."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from training.data import CLASS_NAMES
from training.export import Parity
from training.metadata import RunReport, accuracies, build_metadata, library_versions


def make_report(**overrides: object) -> RunReport:
    fields: dict[str, object] = {
        "architecture": "course_cnn",
        "class_names": CLASS_NAMES,
        "test_accuracy": 0.9123,
        "per_class_accuracy": {name: 0.9 for name in CLASS_NAMES},
        "epochs_run": 7,
        "training_seconds": 123.4,
        "parameter_count": 243786,
        "data_sha256": {"train-images-idx3-ubyte.gz": "ab" * 32},
        "parity": Parity(max_abs_diff=1e-6, argmax_equal=True, images=10000),
        "seed": 42,
        "hyperparameters": {"batch_size": 128, "learning_rate": 1e-3},
        "command_line": ["fashion-train", "--seed", "42"],
        "library_versions": {"numpy": "2.4.6"},
    }
    fields.update(overrides)
    return RunReport(**fields)  # type: ignore[arg-type]


def test_the_name_is_the_model_name_published_under() -> None:
    meta = build_metadata(make_report(model_name="other"), version=1, model_sha256="cd" * 32)
    assert meta["name"] == "other"


def test_metadata_has_the_server_contract() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    meta = build_metadata(make_report(), version=3, model_sha256="cd" * 32, created_at=created)
    assert meta["format"] == 1
    assert meta["name"] == "fashion"
    assert meta["version"] == 3
    assert meta["created_at"] == "2026-01-02T03:04:05Z"
    assert meta["architecture"] == "course_cnn"
    assert meta["class_names"] == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]  # fmt: skip
    assert meta["inputs"] == [{"name": "images", "dtype": "uint8", "shape": ["batch", 28, 28]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "dtype": "float32", "shape": ["batch", 10]}
    ]
    assert meta["opset"] == 17
    assert meta["model_sha256"] == "cd" * 32
    assert meta["parity"] == {"max_abs_diff": 1e-6, "argmax_equal": True, "images": 10000}
    assert meta["epochs_run"] == 7 and meta["parameter_count"] == 243786
    assert meta["seed"] == 42 and meta["hyperparameters"]["batch_size"] == 128
    assert set(meta) >= {
        "test_accuracy", "per_class_accuracy", "training_seconds", "data_sha256",
        "library_versions", "command_line",
    }  # fmt: skip
    # Round-trips through JSON unchanged: no numpy scalars, tuples or datetimes left in.
    assert json.loads(json.dumps(meta)) == meta


def test_created_at_defaults_to_now_in_utc() -> None:
    meta = build_metadata(make_report(), version=1, model_sha256="0" * 64)
    parsed = datetime.fromisoformat(meta["created_at"])
    assert parsed.tzinfo is not None and parsed.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 60


def test_signature_lists_are_copies() -> None:
    first = build_metadata(make_report(), version=1, model_sha256="0" * 64)
    first["inputs"][0]["name"] = "mutated"
    second = build_metadata(make_report(), version=2, model_sha256="0" * 64)
    assert second["inputs"][0]["name"] == "images"


def test_accuracies_overall_and_per_class() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    overall, per_class = accuracies(labels, predicted, ["a", "b", "c", "d"])
    assert overall == pytest.approx(0.6)
    assert per_class == {"a": 0.5, "b": 1.0, "c": 0.0, "d": 0.0}
    assert all(type(value) is float for value in per_class.values())


def test_library_versions_names_the_stack() -> None:
    versions = library_versions()
    assert set(versions) >= {"python", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"}
    assert library_versions(["no-such-package-xyz"])["no-such-package-xyz"] == "not installed"
