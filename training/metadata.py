"""metadata.json for a published version: a pure function of the run's results."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from typing import Any

import numpy as np

from server.contract import MODEL_NAME
from training.export import INPUT_SIGNATURE, OPSET, OUTPUT_SIGNATURE, Parity

FORMAT = 1
LIBRARIES: tuple[str, ...] = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")


@dataclass(frozen=True)
class RunReport:
    """Everything about one training run that goes into metadata.json, except the version."""

    architecture: str
    class_names: Sequence[str]
    test_accuracy: float
    per_class_accuracy: Mapping[str, float]
    epochs_run: int
    training_seconds: float
    parameter_count: int
    data_sha256: Mapping[str, str]
    parity: Parity
    seed: int
    hyperparameters: Mapping[str, Any]
    command_line: Sequence[str]
    library_versions: Mapping[str, str]
    # The name published under: <repo>/<model_name>/<version>/, and metadata.json's "name".
    model_name: str = MODEL_NAME


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def accuracies(
    labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]
) -> tuple[float, dict[str, float]]:
    """Overall accuracy and accuracy per true class (NaN-free: an absent class scores 0.0)."""
    correct = labels == predicted
    per_class = {
        name: float(correct[labels == index].mean()) if np.any(labels == index) else 0.0
        for index, name in enumerate(class_names)
    }
    return float(correct.mean()), per_class


def build_metadata(
    report: RunReport,
    *,
    version: int,
    model_sha256: str,
    created_at: datetime | None = None,
    extras: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The flat JSON object the server reads; read_version() checks its model_sha256.

    ``extras`` (variants, report files, per-epoch history, ...) are appended as given.
    """
    created = (created_at or datetime.now(UTC)).astimezone(UTC)
    return {
        "format": FORMAT,
        "name": report.model_name,
        "version": version,
        "created_at": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "architecture": report.architecture,
        "class_names": list(report.class_names),
        "inputs": [dict(INPUT_SIGNATURE)],
        "outputs": [dict(OUTPUT_SIGNATURE)],
        "opset": OPSET,
        "test_accuracy": report.test_accuracy,
        "per_class_accuracy": dict(report.per_class_accuracy),
        "epochs_run": report.epochs_run,
        "training_seconds": report.training_seconds,
        "parameter_count": report.parameter_count,
        "model_sha256": model_sha256,
        "data_sha256": dict(report.data_sha256),
        "library_versions": dict(report.library_versions),
        "command_line": list(report.command_line),
        "parity": report.parity.as_dict(),
        "seed": report.seed,
        "hyperparameters": dict(report.hyperparameters),
        **dict(extras or {}),
    }
