"""The training report: ``report.md`` plus PNGs, written into a version directory before publish.

Learning curves (loss and accuracy per epoch, train vs validation), the confusion matrix on the
test set, a per-class precision/recall/F1 table and a grid of misclassified test images.
matplotlib is imported inside the plotting functions (``Figure`` objects render through Agg
without pyplot or any global backend), so importing this module costs only numpy.

``python -m training.report --model-repo DIR --version N --out DIR`` rebuilds a report for an
already published version from its ONNX model (learning curves only when metadata.json holds
the per-epoch history).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.recipe import split_sizes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.md"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
MISCLASSIFIED_FILE = "misclassified.png"
MISCLASSIFIED_SHOWN = 24
DPI = 110


@dataclass(frozen=True)
class ClassScore:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts, int64 ``[num_classes, num_classes]``."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def class_scores(matrix: np.ndarray, class_names: Sequence[str]) -> list[ClassScore]:
    """Precision, recall and F1 per class from a confusion matrix (0.0 where undefined)."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted_count = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    scores = []
    for index, name in enumerate(class_names):
        tp = true_positive[index]
        precision = tp / predicted_count[index] if predicted_count[index] else 0.0
        recall = tp / support[index] if support[index] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(
            ClassScore(name, float(precision), float(recall), float(f1), int(support[index]))
        )
    return scores


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=DPI, bbox_inches="tight")


def plot_learning_curves(history: Mapping[str, Sequence[float]], path: Path) -> None:
    """Loss and accuracy per epoch; validation curves where the history has them."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.8))
    for axis, metric, title in zip(
        figure.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy"), strict=True
    ):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            values = history.get(key)
            if values:
                axis.plot(range(1, len(values) + 1), values, style, label=label, markersize=3)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    _save(figure, path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 7))
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for row in ticks:
        for col in ticks:
            value = int(matrix[row, col])
            color = "white" if value > threshold else "black"
            axis.text(col, row, str(value), ha="center", va="center", fontsize=7, color=color)
    axis.set_title(f"Confusion matrix ({int(matrix.sum())} test images)")
    _save(figure, path)


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    limit: int = MISCLASSIFIED_SHOWN,
) -> int:
    """The ``limit`` most confident mistakes, each titled true / predicted (probability).

    Returns how many images were drawn (0 draws a placeholder: nothing was wrong).
    """
    from matplotlib.figure import Figure

    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    chosen = wrong[np.argsort(-confidence, kind="stable")][:limit]
    columns = 6
    rows = max(1, -(-len(chosen) // columns))
    figure = Figure(figsize=(columns * 1.9, rows * 2.2))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for axis in axes:
        axis.axis("off")
    for axis, index in zip(axes, chosen, strict=False):
        guess = int(predicted[index])
        axis.imshow(images[index], cmap="gray_r", vmin=0, vmax=255)
        axis.set_title(
            f"#{index}\ntrue: {class_names[int(labels[index])]}\n"
            f"pred: {class_names[guess]} ({probabilities[index, guess]:.2f})",
            fontsize=7,
        )
    if not len(chosen):
        axes[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    figure.suptitle("Most confident mistakes on the test set", fontsize=10)
    _save(figure, path)
    return len(chosen)


def render_markdown(
    *,
    title: str,
    summary: Mapping[str, Any],
    scores: Sequence[ClassScore],
    matrix: np.ndarray,
    has_curves: bool,
    misclassified_total: int,
    misclassified_shown: int,
) -> str:
    accuracy = float(np.trace(matrix) / matrix.sum()) if matrix.sum() else 0.0
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in summary.items()]
    lines += [f"- **test accuracy**: {accuracy:.4f} ({int(matrix.sum())} images)", ""]
    lines += ["## Learning curves", ""]
    if has_curves:
        lines += [f"![learning curves]({CURVES_FILE})", ""]
    else:
        lines += ["No per-epoch history was recorded for this model.", ""]
    lines += ["## Confusion matrix", "", f"![confusion matrix]({CONFUSION_FILE})", ""]
    lines += ["## Per-class scores", "", "| class | precision | recall | F1 | support |"]
    lines += ["|---|---:|---:|---:|---:|"]
    lines += [
        f"| {s.name} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | {s.support} |"
        for s in scores
    ]
    macro = [
        float(np.mean([getattr(s, field) for s in scores]))
        for field in ("precision", "recall", "f1")
    ]
    lines += [
        f"| **macro average** | {macro[0]:.3f} | {macro[1]:.3f} | {macro[2]:.3f} | "
        f"{sum(s.support for s in scores)} |",
        "",
    ]
    lines += [
        "## Misclassified test images",
        "",
        f"{misclassified_total} of {int(matrix.sum())} test images are misclassified; "
        f"the {misclassified_shown} most confident mistakes:",
        "",
        f"![misclassified]({MISCLASSIFIED_FILE})",
        "",
    ]
    return "\n".join(lines)


def write_report(
    directory: Path,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    history: Mapping[str, Sequence[float]] | None = None,
    title: str = "Training report",
    summary: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write report.md and its PNGs into ``directory``; return the file names written."""
    directory = Path(directory)
    predicted = probabilities.argmax(1)
    matrix = confusion_matrix(labels, predicted, len(class_names))
    written = []
    has_curves = bool(history and history.get("loss"))
    if has_curves:
        assert history is not None
        plot_learning_curves(history, directory / CURVES_FILE)
        written.append(CURVES_FILE)
    plot_confusion_matrix(matrix, class_names, directory / CONFUSION_FILE)
    shown = plot_misclassified(
        images, labels, probabilities, class_names, directory / MISCLASSIFIED_FILE
    )
    written += [CONFUSION_FILE, MISCLASSIFIED_FILE]
    text = render_markdown(
        title=title,
        summary=summary or {},
        scores=class_scores(matrix, class_names),
        matrix=matrix,
        has_curves=has_curves,
        misclassified_total=int(np.sum(predicted != labels)),
        misclassified_shown=shown,
    )
    (directory / REPORT_FILE).write_text(text, encoding="utf-8")
    return [REPORT_FILE, *written]


def _training_images(hyper: Mapping[str, Any]) -> str | None:
    """The images given to training, and how many of them only validated (early stopping)."""
    count = hyper.get("train_images")
    if count is None:
        return None
    _, held_out = split_sizes(count, hyper.get("validation_split") or 0.0)
    return f"{count} ({held_out} held out for validation)" if held_out else str(count)


def _recipe_line(hyper: Mapping[str, Any]) -> str | None:
    """How the network was trained, in one line; None for metadata that predates recipes."""
    if "schedule" not in hyper:
        return None
    rate = f"Adam {hyper['learning_rate']:g}"
    if hyper["schedule"] == "cosine":
        # Planned over this many epochs; "epochs run" shows whether early stopping cut it short.
        rate += f" peak, warm-up + cosine decay to 0 over {hyper['epochs']} epochs"
    elif hyper.get("lr_patience"):
        rate += f", x{hyper['lr_factor']:g} after {hyper['lr_patience']} stalled epoch(s)"
    return (
        f"{rate}; batch {hyper['batch_size']}; label smoothing {hyper['label_smoothing']:g}; "
        f"augmentation {hyper['augment']}"
    )


def summary_from_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    hyper = metadata.get("hyperparameters") or {}
    summary: dict[str, Any] = {
        "architecture": metadata.get("architecture"),
        "parameters": metadata.get("parameter_count"),
        "epochs run": metadata.get("epochs_run"),
        "best epoch": hyper.get("best_epoch"),
        "training seconds": metadata.get("training_seconds"),
        "training images": _training_images(hyper),
        "seed": metadata.get("seed"),
        "training recipe": _recipe_line(hyper),
    }
    int8 = (metadata.get("variants") or {}).get("int8")
    if int8:
        summary["int8 variant"] = (
            f"{int8['file']}: test accuracy {int8['test_accuracy']:.4f} "
            f"({int8['accuracy_delta_points']:+.2f} points), images/s {int8['images_per_second']}"
        )
    refused = (metadata.get("variants_refused") or {}).get("int8")
    if refused:
        summary["int8 variant refused"] = refused["reason"]
    return {key: value for key, value in summary.items() if value is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the report of a published version from its ONNX model on the test set."""
    from server.repository import read_version
    from training.data import load_fashion_mnist
    from training.export import onnx_predict

    parser = argparse.ArgumentParser(prog="python -m training.report", description=main.__doc__)
    parser.add_argument("--model-repo", type=Path, required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for report.md + PNGs")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    import onnx

    found = read_version(args.model_repo, args.version)
    data = load_fashion_mnist(args.data_dir)
    probabilities = onnx_predict(onnx.load(str(found.model_path)), data.test_images)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = found.metadata
    files = write_report(
        args.out,
        images=data.test_images,
        labels=data.test_labels,
        probabilities=probabilities,
        class_names=meta.get("class_names") or [str(i) for i in range(probabilities.shape[1])],
        history=meta.get("history"),
        title=f"Training report: {meta.get('name', 'model')} version {args.version}",
        summary=summary_from_metadata(meta),
    )
    print(json.dumps({"out": str(args.out), "files": files}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
