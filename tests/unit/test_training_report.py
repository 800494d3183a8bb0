"""report.md and its plots from a tiny fake history and fake predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.report import (
    CONFUSION_FILE,
    CURVES_FILE,
    MISCLASSIFIED_FILE,
    REPORT_FILE,
    class_scores,
    confusion_matrix,
    summary_from_metadata,
    write_report,
)

NAMES = ["a", "b", "c"]
PNG = b"\x89PNG\r\n\x1a\n"


def fake_predictions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    probabilities = np.full((8, 3), 0.1, np.float32)
    probabilities[np.arange(8), predicted] = 0.8
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28)).astype(np.uint8)
    return images, labels, probabilities


def test_confusion_matrix_counts_true_by_predicted() -> None:
    _, labels, probabilities = fake_predictions()
    matrix = confusion_matrix(labels, probabilities.argmax(1), 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]


def test_precision_recall_f1_per_class() -> None:
    matrix = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 2]])
    a, b, c = class_scores(matrix, NAMES)
    assert (a.precision, a.recall, a.support) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert (b.precision, b.recall) == (pytest.approx(2 / 3), 1.0)
    assert b.f1 == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert (c.precision, c.recall) == (1.0, pytest.approx(2 / 3))


def test_a_never_predicted_absent_class_scores_zero_not_nan() -> None:
    (score,) = class_scores(np.zeros((1, 1), np.int64), ["empty"])
    assert (score.precision, score.recall, score.f1, score.support) == (0.0, 0.0, 0.0, 0)


def test_write_report_writes_markdown_and_three_pngs(tmp_path: Path) -> None:
    images, labels, probabilities = fake_predictions()
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.6, 0.8],
               "val_accuracy": [0.55, 0.75]}  # fmt: skip
    files = write_report(
        tmp_path,
        images=images,
        labels=labels,
        probabilities=probabilities,
        class_names=NAMES,
        history=history,
        title="Tiny",
        summary={"architecture": "bn_cnn"},
    )
    assert files == [REPORT_FILE, CURVES_FILE, CONFUSION_FILE, MISCLASSIFIED_FILE]
    for name in files[1:]:
        assert (tmp_path / name).read_bytes()[:8] == PNG
    text = (tmp_path / REPORT_FILE).read_text()
    assert text.startswith("# Tiny") and "**architecture**: bn_cnn" in text
    assert "**test accuracy**: 0.7500 (8 images)" in text
    assert "| a | 0.667 | 0.667 | 0.667 | 3 |" in text
    assert "2 of 8 test images are misclassified" in text
    assert f"![learning curves]({CURVES_FILE})" in text


def test_without_history_there_are_no_curves(tmp_path: Path) -> None:
    images, labels, probabilities = fake_predictions()
    files = write_report(
        tmp_path, images=images, labels=labels, probabilities=probabilities, class_names=NAMES
    )
    assert CURVES_FILE not in files and not (tmp_path / CURVES_FILE).exists()
    assert "No per-epoch history" in (tmp_path / REPORT_FILE).read_text()


def test_all_correct_draws_a_placeholder(tmp_path: Path) -> None:
    images, labels, _ = fake_predictions()
    perfect = np.eye(3, dtype=np.float32)[labels]
    write_report(tmp_path, images=images, labels=labels, probabilities=perfect, class_names=NAMES)
    assert "0 of 8 test images are misclassified" in (tmp_path / REPORT_FILE).read_text()


def test_summary_names_the_int8_variant_or_its_refusal() -> None:
    meta = {"architecture": "bn_cnn", "hyperparameters": {"best_epoch": 3},
            "variants_refused": {"int8": {"reason": "too inaccurate"}}}  # fmt: skip
    summary = summary_from_metadata(meta)
    assert summary["best epoch"] == 3 and summary["int8 variant refused"] == "too inaccurate"


def test_summary_states_the_training_recipe() -> None:
    cosine = {"schedule": "cosine", "learning_rate": 0.002, "lr_patience": None, "lr_factor": None,
              "batch_size": 128, "label_smoothing": 0.1, "augment": "flip",
              "epochs": 30}  # fmt: skip
    assert summary_from_metadata({"hyperparameters": cosine})["training recipe"] == (
        "Adam 0.002 peak, warm-up + cosine decay to 0 over 30 epochs; batch 128; "
        "label smoothing 0.1; "
        "augmentation flip"
    )
    plateau = {**cosine, "schedule": "plateau", "learning_rate": 0.001, "lr_patience": 1,
               "lr_factor": 0.2, "label_smoothing": 0.0, "augment": "none"}  # fmt: skip
    assert summary_from_metadata({"hyperparameters": plateau})["training recipe"] == (
        "Adam 0.001, x0.2 after 1 stalled epoch(s); batch 128; label smoothing 0; augmentation none"
    )
    # Versions published before recipes existed have no such line.
    assert "training recipe" not in summary_from_metadata({"hyperparameters": {"best_epoch": 3}})


def test_summary_says_how_many_training_images_only_validated() -> None:
    hyper = {"train_images": 60000, "validation_split": 0.1}
    summary = summary_from_metadata({"hyperparameters": hyper})
    assert summary["training images"] == "60000 (6000 held out for validation)"
    hyper = {"train_images": 1005, "validation_split": 0.1}  # keras holds out 101, not 100
    summary = summary_from_metadata({"hyperparameters": hyper})
    assert summary["training images"] == "1005 (101 held out for validation)"
    hyper = {"train_images": 3000, "validation_split": 0.0}
    assert summary_from_metadata({"hyperparameters": hyper})["training images"] == "3000"
