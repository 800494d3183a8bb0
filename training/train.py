"""``fashion-train``: data -> model -> fit -> evaluate -> export (parity gate) -> publish."""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.data import CLASS_NAMES, DataError, FashionMNIST, load_fashion_mnist
from training.export import ExportError, check_parity, onnx_predict, scale_images, to_onnx
from training.metadata import RunReport, accuracies, build_metadata, library_versions
from training.model import ARCHITECTURES, build_model
from training.publish import publish_model
from training.quantize import (
    CALIBRATION_IMAGES,
    INT8_FILE,
    SPEED_THREADS,
    accuracy_gate,
    calibration_sample,
    images_per_second,
    quantize_int8,
    refusal_entry,
    variant_entry,
)
from training.recipe import (
    AUGMENTATIONS,
    RECIPES,
    SCHEDULES,
    augmented,
    learning_rate,
    learning_rate_log,
    split_sizes,
)
from training.report import summary_from_metadata, write_report

if TYPE_CHECKING:
    import keras
    import onnx

logger = logging.getLogger(__name__)

ENV_MODEL_REPO = "FASHION_MODEL_REPO"
DEFAULT_MODEL_REPO = "./models"
PREDICT_BATCH = 1000
# ReduceLROnPlateau's defaults under --schedule plateau.
DEFAULT_LR_PATIENCE = 1
DEFAULT_LR_FACTOR = 0.2
QUANTIZE_CHOICES: tuple[str, ...] = ("none", "int8")
# TensorFlow's C++ log. On a machine without a GPU it prints, at ERROR level, "failed call to
# cuInit" and a tf.data "use_unbounded_threadpool" attribute mismatch: alarming and harmless.
# Level 3 keeps its C++ log to fatal messages (Python exceptions still raise); the devices
# line below says what TensorFlow found instead. A value the user set is left alone.
TF_LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LOG_LEVEL = "3"


def parse_args(argv: Sequence[str] | None, environ: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fashion-train",
        description="Train the Fashion-MNIST CNN, export it to ONNX and publish a new version.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    recipes = "; ".join(f"{name}: {recipe}" for name, recipe in RECIPES.items())
    parser.add_argument(
        "--epochs", type=int, default=None, help="maximum epochs (early stopping); default: recipe"
    )
    parser.add_argument(
        "--patience", type=int, default=4, help="stop after this many epochs without val_loss gain"
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=None,
        help="plateau: lower the rate when val_loss stalls; cosine: warm up to --learning-rate, "
        "then decay to zero at the last epoch; default: recipe",
    )
    parser.add_argument(
        "--lr-patience",
        type=int,
        default=None,
        help="plateau only: multiply the learning rate by --lr-factor after this many epochs "
        f"without val_loss gain (0: constant learning rate; default {DEFAULT_LR_PATIENCE})",
    )
    parser.add_argument(
        "--lr-factor",
        type=float,
        default=None,
        help=f"plateau only: learning-rate reduction (default {DEFAULT_LR_FACTOR})",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="Adam learning rate (the peak under cosine); default: recipe",
    )
    parser.add_argument(
        "--label-smoothing", type=float, default=None, help="in [0, 1); default: recipe"
    )
    parser.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default=None,
        help="training-time augmentation (never exported); default: recipe",
    )
    parser.add_argument(
        "--validation-split", type=float, default=0.1, help="held-out fraction for early stopping"
    )
    parser.add_argument("--seed", type=int, default=42, help="seeds Python, numpy and TF")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images")
    parser.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default="course_cnn",
        help=f"network; each has a training recipe ({recipes})",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="none",
        help="int8: also publish a static INT8 (QDQ) model.int8.onnx when its test accuracy "
        "is within 0.3 points of the float model",
    )
    parser.add_argument("--no-report", action="store_true", help="skip report.md and its plots")
    parser.add_argument("--data-dir", type=Path, default=None, help="dir with the IDX gz files")
    parser.add_argument(
        "--model-repo",
        type=Path,
        default=Path(environ.get(ENV_MODEL_REPO) or DEFAULT_MODEL_REPO),
        help=f"model repository root; ${ENV_MODEL_REPO} overrides the default",
    )
    args = parser.parse_args(argv)
    recipe = RECIPES[args.arch]
    for name in ("epochs", "learning_rate", "schedule", "label_smoothing", "augment"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(recipe, name))
    if not 0.0 <= args.validation_split < 1.0:
        parser.error("--validation-split must be in [0, 1)")
    plateau_flags = args.lr_patience is not None or args.lr_factor is not None
    if args.schedule != "plateau":
        if plateau_flags:
            parser.error("--lr-patience and --lr-factor apply to --schedule plateau only")
    elif args.validation_split == 0:
        # No validation loss to watch: no plateau callback, and metadata says so (None).
        if plateau_flags:
            parser.error(
                "--lr-patience and --lr-factor watch val_loss: they need --validation-split > 0"
            )
    else:
        args.lr_patience = DEFAULT_LR_PATIENCE if args.lr_patience is None else args.lr_patience
        args.lr_factor = DEFAULT_LR_FACTOR if args.lr_factor is None else args.lr_factor
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    if args.lr_factor is not None and not 0.0 < args.lr_factor < 1.0:
        parser.error("--lr-factor must be in (0, 1)")
    if args.patience < 0 or (args.lr_patience or 0) < 0:
        parser.error("--patience and --lr-patience must be >= 0")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        parser.error("--learning-rate must be a finite number > 0")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error("--label-smoothing must be in [0, 1)")
    return args


def quiet_tensorflow_log(environ: MutableMapping[str, str]) -> None:
    """Before TensorFlow is imported: its C++ start-up noise off, unless the user chose a level."""
    environ.setdefault(TF_LOG_LEVEL_ENV, QUIET_TF_LOG_LEVEL)


def describe_devices() -> str:
    """What TensorFlow trains on, in one line (its own start-up log is quieted)."""
    import tensorflow as tf

    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if gpus:
        return f"{len(gpus)} GPU(s): {', '.join(gpus)}"
    return f"CPU only (TensorFlow sees no GPU; {TF_LOG_LEVEL_ENV}=0 shows its start-up log)"


def seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # python, numpy and TF generators
    tf.config.experimental.enable_op_determinism()


@dataclass(frozen=True)
class FitResult:
    model: keras.Model
    epochs_run: int
    best_epoch: int | None
    training_seconds: float
    history: dict[str, list[float]]
    distribution: str


def distribution_strategy() -> Any:
    """MirroredStrategy over all GPUs when more than one is visible, else None (no change)."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < 2:
        return None
    return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])


def fit(data: FashionMNIST, args: argparse.Namespace) -> FitResult:
    import contextlib

    import keras

    images = data.train_images[: args.limit]
    labels = data.train_labels[: args.limit]
    strategy = distribution_strategy()
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    train_count, _ = split_sizes(len(images), args.validation_split)
    total_steps = math.ceil(train_count / args.batch_size) * args.epochs
    with scope:
        # Under MirroredStrategy each step's batch is split across the replicas.
        model = build_model(args.arch)
        trainee = augmented(model, args.augment, args.seed)
        trainee.compile(
            optimizer=keras.optimizers.Adam(
                learning_rate=learning_rate(args.schedule, args.learning_rate, total_steps)
            ),
            # One-hot targets: label smoothing needs them (the sparse loss has no option).
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
            metrics=["accuracy"],
        )
    distribution = (
        f"MirroredStrategy({strategy.num_replicas_in_sync} replicas)" if strategy else "none"
    )
    # First, so the logged rate is the one before ReduceLROnPlateau lowers it.
    callbacks: list[keras.callbacks.Callback] = [learning_rate_log()]
    stopper = None
    if args.validation_split > 0:
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=args.patience, restore_best_weights=True, verbose=1
        )
        callbacks.append(stopper)
        if args.schedule == "plateau" and args.lr_patience > 0:
            # Measured on the full data (seed 42): at a constant 1e-3, val_loss bottoms out at
            # epoch 7 while the net is still learning (test accuracy 90.6%); a lower rate
            # from there on lets val_loss keep falling instead of early stopping on overfit.
            callbacks.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss",
                    factor=args.lr_factor,
                    patience=args.lr_patience,
                    min_lr=1e-6,
                    verbose=1,
                )
            )
    started = time.monotonic()
    history = trainee.fit(
        scale_images(images),
        keras.utils.to_categorical(labels, len(CLASS_NAMES)),
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_split=args.validation_split,
        callbacks=callbacks,
        # A live progress bar on a terminal; one line per epoch in a log file.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    seconds = time.monotonic() - started
    best = stopper.best_epoch + 1 if stopper is not None else None
    per_epoch = {
        key: [float(value) for value in values]
        for key, values in history.history.items()
        if key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
    }
    return FitResult(model, len(per_epoch["loss"]), best, seconds, per_epoch, distribution)


def run(args: argparse.Namespace, command_line: list[str]) -> tuple[int, Path, dict[str, Any]]:
    data = load_fashion_mnist(args.data_dir)
    logger.info(
        "data: %s (%d train, %d test images)",
        data.source_dir,
        len(data.train_images),
        len(data.test_images),
    )
    seed_everything(args.seed)
    logger.info("devices: %s", describe_devices())
    result = fit(data, args)

    keras_probs = result.model.predict(
        scale_images(data.test_images), batch_size=PREDICT_BATCH, verbose=0
    )
    test_accuracy, per_class = accuracies(data.test_labels, keras_probs.argmax(1), CLASS_NAMES)
    print(f"test accuracy: {test_accuracy:.4f} on {len(data.test_images)} images", flush=True)

    proto = to_onnx(result.model, list(CLASS_NAMES))
    parity = check_parity(proto, data.test_images, keras_probs)
    print(f"parity: max |delta| {parity.max_abs_diff:.3g}, argmax equal", flush=True)
    onnx_probs = onnx_predict(proto, data.test_images)

    report = RunReport(
        architecture=args.arch,
        class_names=CLASS_NAMES,
        test_accuracy=test_accuracy,
        per_class_accuracy=per_class,
        epochs_run=result.epochs_run,
        training_seconds=round(result.training_seconds, 3),
        parameter_count=int(result.model.count_params()),
        data_sha256=data.sha256,
        parity=parity,
        seed=args.seed,
        hyperparameters={
            "epochs": args.epochs,
            "patience": args.patience,
            "schedule": args.schedule,
            "lr_patience": args.lr_patience,
            "lr_factor": args.lr_factor,
            "best_epoch": result.best_epoch,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "optimizer": "adam",
            "label_smoothing": args.label_smoothing,
            "augment": args.augment,
            "validation_split": args.validation_split,
            "limit": args.limit,
            "train_images": len(data.train_images[: args.limit]),
            "distribution": result.distribution,
        },
        command_line=command_line,
        library_versions=library_versions(),
    )
    extras: dict[str, Any] = {"history": result.history}
    extra_files: dict[str, bytes] = {}
    if args.quantize == "int8":
        variant, refusal, int8_bytes = quantize_variant(proto, data, test_accuracy, args.seed)
        if variant is not None and int8_bytes is not None:
            extras["variants"] = {"int8": variant}
            extra_files[INT8_FILE] = int8_bytes
        else:
            extras["variants_refused"] = {"int8": refusal}

    def write_extras(staged: Path) -> None:
        for name, payload in extra_files.items():
            (staged / name).write_bytes(payload)
        if not args.no_report:
            preview = build_metadata(report, version=0, model_sha256="", extras=extras)
            files = write_report(
                staged,
                images=data.test_images,
                labels=data.test_labels,
                probabilities=onnx_probs,
                class_names=CLASS_NAMES,
                history=result.history,
                title=f"Training report: {args.arch}",
                summary=summary_from_metadata(preview),
            )
            extras["report"] = {"file": files[0], "images": files[1:]}

    written: dict[str, Any] = {}

    def make_metadata(version: int, model_sha256: str) -> dict[str, Any]:
        written.clear()
        written.update(
            build_metadata(report, version=version, model_sha256=model_sha256, extras=extras)
        )
        return written

    def write_model(target: Path) -> None:
        target.write_bytes(proto.SerializeToString())

    version, path = publish_model(
        args.model_repo, write_model, make_metadata, write_extras=write_extras
    )
    return version, path, written


def quantize_variant(
    proto: onnx.ModelProto, data: FashionMNIST, float_accuracy: float, seed: int
) -> tuple[dict[str, Any] | None, dict[str, Any], bytes | None]:
    """(variants entry or None, refusal entry, INT8 model bytes or None)."""
    calibration = calibration_sample(data.train_images, CALIBRATION_IMAGES, seed)
    quantized = quantize_int8(proto, calibration)
    int8_probs = onnx_predict(quantized, data.test_images)
    int8_accuracy, _ = accuracies(data.test_labels, int8_probs.argmax(1), CLASS_NAMES)
    gate = accuracy_gate(float_accuracy, int8_accuracy)
    if not gate.accepted:
        logger.warning("int8 model refused: %s", gate.reason)
        return None, refusal_entry(gate, len(calibration)), None
    payload = quantized.SerializeToString()
    speed = {
        "float": images_per_second(proto.SerializeToString(), data.test_images),
        "int8": images_per_second(payload, data.test_images),
        "threads": SPEED_THREADS,
    }
    logger.info("int8 model accepted: %s; images/s %s", gate.reason, speed)
    print(f"int8: {gate.reason}; images/s {speed}", flush=True)
    entry = variant_entry(
        sha256=hashlib.sha256(payload).hexdigest(),
        gate=gate,
        speed=speed,
        size_bytes=len(payload),
        calibration_images=len(calibration),
    )
    return entry, {}, payload


def exit_on_sigterm() -> Any:
    """Turn SIGTERM into SystemExit so the staging directory is cleaned up like on Ctrl-C.

    Returns the previous handler, or None when not on the main thread (signals unavailable).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_tensorflow_log(os.environ)
    environ = dict(os.environ)
    args = parse_args(argv, environ)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command_line = list(sys.argv) if argv is None else ["fashion-train", *argv]
    previous = exit_on_sigterm()
    try:
        version, path, _ = run(args, command_line)
    except (DataError, ExportError) as exc:
        # Known failures get one clear line; nothing was published.
        print(f"fashion-train: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    # Absolute: the default ./models is relative to wherever the command was run.
    print(f"published version {version} to {Path(path).resolve()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
