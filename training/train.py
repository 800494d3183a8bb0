"""``fashion-train``: data -> build -> fit -> export -> gate -> report -> publish.

Each step is a function of the settings (:class:`training.config.TrainConfig`, checked
once and never changed) and of what the steps before it produced, handed on in small
frozen dataclasses; :func:`run` is the recipe, :func:`main` the command (settings,
logging, signals, run).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server.errors import ModelLoadError
from training.config import ENV_MODEL_REPO as ENV_MODEL_REPO
from training.config import ConfigError, TrainConfig, check_split, names, parse_args
from training.data import CLASS_NAMES, DataError, FashionMNIST, load_fashion_mnist
from training.export import (
    ExportError,
    Parity,
    check_parity,
    onnx_predict,
    scale_images,
    to_onnx,
)
from training.metadata import RunReport, accuracies, build_metadata, library_versions
from training.model import build_model
from training.publish import (
    PublishedUnlabelled,
    PublishRefused,
    check_publish_plan,
    check_writable,
    publish_model,
)
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
from training.recipe import augmented, learning_rate, learning_rate_log, split_sizes
from training.report import summary_from_metadata, write_report

if TYPE_CHECKING:
    import keras
    import onnx

logger = logging.getLogger(__name__)

PREDICT_BATCH = 1000
# TensorFlow's C++ log. On a machine without a GPU it prints, at ERROR level, "failed call to
# cuInit" and a tf.data "use_unbounded_threadpool" attribute mismatch: alarming and harmless.
# Level 3 keeps its C++ log to fatal messages (Python exceptions still raise); the devices
# line below says what TensorFlow found instead. A value the user set is left alone.
TF_LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LOG_LEVEL = "3"


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


def distribution_strategy() -> Any:
    """MirroredStrategy over all GPUs when more than one is visible, else None (no change)."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < 2:
        return None
    return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])


class TrainingDiverged(Exception):
    """The trained network's outputs are not finite (NaN or infinite): nothing is published."""


# --- the hand-offs between steps ----------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """build -> fit: the network, what is fitted, and how it is spread over the devices."""

    model: keras.Model  # what is exported
    trainee: keras.Model  # what is fitted: the model, or the model behind its augmentation
    distribution: str


@dataclass(frozen=True)
class FitResult:
    """fit -> export: the trained network and how its training went."""

    model: keras.Model
    epochs_run: int
    best_epoch: int | None
    training_seconds: float
    history: dict[str, list[float]]
    distribution: str


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class Exported:
    """export -> gate: Keras' answers on the test set, its accuracy, and the ONNX graph."""

    proto: onnx.ModelProto
    keras_probs: np.ndarray
    test_accuracy: float
    per_class_accuracy: dict[str, float]


@dataclass(frozen=True, eq=False)
class Gated:
    """gate -> report: the parity verdict, the ONNX graph's answers, the INT8 variant.

    ``files`` go beside model.onnx (the accepted variant); ``extras`` are its metadata
    entry (``variants`` or ``variants_refused``), both empty without ``--quantize int8``.
    """

    parity: Parity
    onnx_probs: np.ndarray
    files: Mapping[str, bytes]
    extras: Mapping[str, Any]


@dataclass(frozen=True)
class Report:
    """report -> publish: metadata.json's content but the version, and the version's files
    besides model.onnx (the INT8 variant, report.md and its plots)."""

    run: RunReport
    extras: Mapping[str, Any]
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class Published:
    """What publish made: the version number, its directory and its metadata.json."""

    version: int
    path: Path
    metadata: dict[str, Any]


# --- the steps ----------------------------------------------------------------------------


def load_data(config: TrainConfig) -> FashionMNIST:
    """data: the four IDX files, each validated (``--data-dir``, else the lookup order)."""
    data = load_fashion_mnist(config.data_dir, origin=names("data_dir"))
    # Keras' fit() would refuse a split leaving no image on one side, with a traceback.
    check_split(config, len(data.train_images[: config.limit]))
    logger.info(
        "data: %s (%d train, %d test images)",
        data.source_dir,
        len(data.train_images),
        len(data.test_images),
    )
    return data


def build(config: TrainConfig, data: FashionMNIST) -> Built:
    """build: seeds set, the network built and compiled (over every GPU when several)."""
    import keras

    seed_everything(config.seed)
    logger.info("devices: %s", describe_devices())
    strategy = distribution_strategy()
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    train_count, _ = split_sizes(len(data.train_images[: config.limit]), config.validation_split)
    total_steps = math.ceil(train_count / config.batch_size) * config.epochs
    with scope:
        # Under MirroredStrategy each step's batch is split across the replicas.
        model = build_model(config.arch)
        trainee = augmented(model, config.augment, config.seed)
        trainee.compile(
            optimizer=keras.optimizers.Adam(
                learning_rate=learning_rate(config.schedule, config.learning_rate, total_steps)
            ),
            # One-hot targets: label smoothing needs them (the sparse loss has no option).
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
    distribution = (
        f"MirroredStrategy({strategy.num_replicas_in_sync} replicas)" if strategy else "none"
    )
    return Built(model, trainee, distribution)


def fit(
    data: FashionMNIST,
    config: TrainConfig,
    built: Built | None = None,
    stops: StopRequests | None = None,
) -> FitResult:
    """fit: early stopping on val_loss (best weights restored), the plateau callback under
    ``--schedule plateau``. Without ``built``, :func:`build` makes it (seeding again).
    With ``stops``, a SIGINT or SIGTERM ends training after the current step (Interrupted)."""
    import keras

    if built is None:
        built = build(config, data)
    # First, so the logged rate is the one before ReduceLROnPlateau lowers it.
    callbacks: list[keras.callbacks.Callback] = [learning_rate_log()]
    if stops is not None:
        callbacks.append(stop_on_request(stops))
    stopper = None
    if config.validation_split > 0:
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True, verbose=1
        )
        callbacks.append(stopper)
        if config.schedule == "plateau" and config.lr_patience:  # 0: a constant rate
            # Measured on the full data (seed 42): at a constant 1e-3, val_loss bottoms out at
            # epoch 7 while the net is still learning (test accuracy 90.6%); a lower rate
            # from there on lets val_loss keep falling instead of early stopping on overfit.
            callbacks.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss",
                    factor=config.lr_factor,
                    patience=config.lr_patience,
                    min_lr=1e-6,
                    verbose=1,
                )
            )
    started = time.monotonic()
    history = built.trainee.fit(
        scale_images(data.train_images[: config.limit]),
        keras.utils.to_categorical(data.train_labels[: config.limit], len(CLASS_NAMES)),
        epochs=config.epochs,
        batch_size=config.batch_size,
        validation_split=config.validation_split,
        callbacks=callbacks,
        # A live progress bar on a terminal; one line per epoch in a log file.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    seconds = time.monotonic() - started
    if stops is not None:
        stops.check()  # fit() returned early because of a signal
    best = stopper.best_epoch + 1 if stopper is not None else None
    per_epoch = {
        key: [float(value) for value in values]
        for key, values in history.history.items()
        if key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
    }
    return FitResult(
        built.model, len(per_epoch["loss"]), best, seconds, per_epoch, built.distribution
    )


def export(data: FashionMNIST, trained: FitResult) -> Exported:
    """export: the trained network evaluated on the test set, and converted to ONNX."""
    keras_probs = trained.model.predict(
        scale_images(data.test_images), batch_size=PREDICT_BATCH, verbose=0
    )
    if not np.isfinite(keras_probs).all():
        # A diverged training (NaN weights) would reach the parity gate, which refuses it
        # as "max |delta| = nan": an export failure to chase, when the export is right.
        loss = trained.history["loss"][-1] if trained.history.get("loss") else float("nan")
        raise TrainingDiverged(
            f"training diverged: the network's outputs are not finite (last epoch's loss "
            f"{loss:g}); nothing was published: try a lower --learning-rate"
        )
    test_accuracy, per_class = accuracies(data.test_labels, keras_probs.argmax(1), CLASS_NAMES)
    print(f"test accuracy: {test_accuracy:.4f} on {len(data.test_images)} images", flush=True)
    proto = to_onnx(trained.model, list(CLASS_NAMES))
    return Exported(proto, keras_probs, test_accuracy, per_class)


def gate(config: TrainConfig, data: FashionMNIST, exported: Exported) -> Gated:
    """gate: the ONNX graph must answer as Keras did on every test image (else ParityError
    and nothing is published); an INT8 variant is kept only within its accuracy gate."""
    parity = check_parity(exported.proto, data.test_images, exported.keras_probs)
    print(f"parity: max |delta| {parity.max_abs_diff:.3g}, argmax equal", flush=True)
    onnx_probs = onnx_predict(exported.proto, data.test_images)
    if config.quantize != "int8":
        return Gated(parity, onnx_probs, {}, {})
    variant, refusal, int8_bytes = quantize_variant(
        exported.proto, data, exported.test_accuracy, config.seed
    )
    if variant is not None and int8_bytes is not None:
        return Gated(parity, onnx_probs, {INT8_FILE: int8_bytes}, {"variants": {"int8": variant}})
    return Gated(parity, onnx_probs, {}, {"variants_refused": {"int8": refusal}})


def report(
    config: TrainConfig,
    data: FashionMNIST,
    trained: FitResult,
    exported: Exported,
    gated: Gated,
    command_line: Sequence[str],
) -> Report:
    """report: what metadata.json will say, and report.md with its plots (unless
    ``--no-report``), rendered before publishing so they appear with the version."""
    run = run_report(config, data, trained, exported, gated, command_line)
    extras: dict[str, Any] = {"history": trained.history, **gated.extras}
    files = dict(gated.files)
    if not config.no_report:
        preview = build_metadata(run, version=0, model_sha256="", extras=extras)
        with tempfile.TemporaryDirectory(prefix="fashion-train-report-") as scratch:
            written = write_report(
                Path(scratch),
                images=data.test_images,
                labels=data.test_labels,
                probabilities=gated.onnx_probs,
                class_names=CLASS_NAMES,
                history=trained.history,
                title=f"Training report: {config.arch}",
                summary=summary_from_metadata(preview),
            )
            files.update({name: (Path(scratch) / name).read_bytes() for name in written})
        extras["report"] = {"file": written[0], "images": written[1:]}
    return Report(run, extras, files)


def run_report(
    config: TrainConfig,
    data: FashionMNIST,
    trained: FitResult,
    exported: Exported,
    gated: Gated,
    command_line: Sequence[str],
) -> RunReport:
    """metadata.json's account of the run: results, and every setting that shaped the model."""
    return RunReport(
        architecture=config.arch,
        class_names=CLASS_NAMES,
        test_accuracy=exported.test_accuracy,
        per_class_accuracy=exported.per_class_accuracy,
        epochs_run=trained.epochs_run,
        training_seconds=round(trained.training_seconds, 3),
        parameter_count=int(trained.model.count_params()),
        data_sha256=data.sha256,
        parity=gated.parity,
        seed=config.seed,
        hyperparameters={
            "epochs": config.epochs,
            "patience": config.patience,
            "schedule": config.schedule,
            "lr_patience": config.lr_patience,
            "lr_factor": config.lr_factor,
            "best_epoch": trained.best_epoch,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "optimizer": "adam",
            "label_smoothing": config.label_smoothing,
            "augment": config.augment,
            "validation_split": config.validation_split,
            "limit": config.limit,
            "train_images": len(data.train_images[: config.limit]),
            "distribution": trained.distribution,
        },
        command_line=list(command_line),
        library_versions=library_versions(),
        model_name=config.model_name,
    )


def publish(config: TrainConfig, exported: Exported, report: Report) -> Published:
    """publish: the next version of ``<model-repo>/<model-name>/``, atomically."""
    written: dict[str, Any] = {}

    def write_model(target: Path) -> None:
        target.write_bytes(exported.proto.SerializeToString())

    def write_extras(staged: Path) -> None:
        for name, payload in report.files.items():
            (staged / name).write_bytes(payload)

    def make_metadata(version: int, model_sha256: str) -> dict[str, Any]:
        written.clear()
        written.update(
            build_metadata(
                report.run, version=version, model_sha256=model_sha256, extras=report.extras
            )
        )
        return written

    version, path = publish_model(
        config.model_repo,
        write_model,
        make_metadata,
        write_extras=write_extras,
        model=config.model_name,
        label=config.label,
    )
    return Published(version, path, written)


def run(
    config: TrainConfig, command_line: Sequence[str], stops: StopRequests | None = None
) -> Published:
    """The steps in order. With ``stops``, a SIGINT or SIGTERM stops the run between steps
    (or training after its current step); once publishing has begun, it runs to its end."""
    check = stops.check if stops is not None else lambda: None
    data = load_data(config)
    check()
    built = build(config, data)
    check()
    trained = fit(data, config, built, stops)
    exported = export(data, trained)
    check()
    gated = gate(config, data, exported)
    check()
    described = report(config, data, trained, exported, gated, command_line)
    check()
    return publish(config, exported, described)


def quantize_variant(
    proto: onnx.ModelProto, data: FashionMNIST, float_accuracy: float, seed: int
) -> tuple[dict[str, Any] | None, dict[str, Any], bytes | None]:
    """(variants entry or None, refusal entry, INT8 model bytes or None)."""
    calibration = calibration_sample(data.train_images, CALIBRATION_IMAGES, seed)
    quantized = quantize_int8(proto, calibration)
    int8_probs = onnx_predict(quantized, data.test_images)
    int8_accuracy, _ = accuracies(data.test_labels, int8_probs.argmax(1), CLASS_NAMES)
    verdict = accuracy_gate(float_accuracy, int8_accuracy)
    if not verdict.accepted:
        logger.warning("int8 model refused: %s", verdict.reason)
        return None, refusal_entry(verdict, len(calibration)), None
    payload = quantized.SerializeToString()
    speed = {
        "float": images_per_second(proto.SerializeToString(), data.test_images),
        "int8": images_per_second(payload, data.test_images),
        "threads": SPEED_THREADS,
    }
    logger.info("int8 model accepted: %s; images/s %s", verdict.reason, speed)
    print(f"int8: {verdict.reason}; images/s {speed}", flush=True)
    entry = variant_entry(
        sha256=hashlib.sha256(payload).hexdigest(),
        gate=verdict,
        speed=speed,
        size_bytes=len(payload),
        calibration_images=len(calibration),
    )
    return entry, {}, payload


class Interrupted(SystemExit):
    """A signal as an exception: it unwinds like Ctrl-C (the staging directory is removed)
    and, uncaught, exits 128 + the signal's number without a traceback."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class StopRequests:
    """SIGINT and SIGTERM during a run, as requests to stop at the next safe point.

    Raising from the signal handler (as fashion-train once did) lands wherever Python
    happens to be: inside TensorFlow's tracing of the training step, that left its device
    scopes unbalanced (``RuntimeError: Exiting device scope without proper scope nesting``,
    exit 1, a traceback), and the interpreter then sometimes crashed on the way out (SIGSEGV,
    SIGABRT). The handler only records the signal; training stops after its current step,
    the run between its steps (:meth:`check` raises :class:`Interrupted`). A second signal
    stops at once, wherever that is.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        # No output here: a write to a stream the main thread is writing to raises
        # "reentrant call" inside a signal handler.
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def install(self) -> dict[int, Any]:
        """Handle SIGINT and SIGTERM; returns the previous handlers (empty off the main
        thread). SIGINT stays ignored when it was (``nohup``, a shell's background job)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is signal.SIG_IGN and signum == signal.SIGINT:
                continue
            previous[signum] = signal.signal(signum, self.handle)
        return previous


def stop_on_request(stops: StopRequests) -> keras.callbacks.Callback:
    """Ends ``fit()`` after the current step once a stop was requested (Keras checks
    ``stop_training`` and, in the epoch's validation, ``stop_evaluating`` after every step):
    the loop unwinds through its own code."""
    import keras

    class StopOnRequest(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if stops.signum is not None:
                self.model.stop_training = True

        def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if stops.signum is not None:
                self.model.stop_evaluating = True

    return StopOnRequest()


def main(argv: Sequence[str] | None = None) -> int:
    quiet_tensorflow_log(os.environ)
    config = parse_args(argv, os.environ)  # a bad setting exits here, with status 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command_line = list(sys.argv) if argv is None else ["fashion-train", *argv]
    try:  # refused now rather than after an hour of training
        check_writable(config.model_repo, config.model_name)
        check_publish_plan(config.model_repo, config.model_name, config.label)
    except ModelLoadError as exc:
        flag = f"--label {config.label}: " if config.label else ""
        print(f"fashion-train: error: {flag}{exc}; nothing was trained", file=sys.stderr)
        return 2
    stops = StopRequests()
    previous = stops.install()
    try:
        published = run(config, command_line, stops)
    except ConfigError as exc:
        # A setting that only the loaded data set shows to be unusable (check_split).
        print(f"fashion-train: error: {exc}", file=sys.stderr)
        return 2
    except (DataError, ExportError, TrainingDiverged) as exc:
        # Known failures get one clear line; nothing was published.
        print(f"fashion-train: error: {exc}", file=sys.stderr)
        return 1
    except PublishRefused as exc:
        # The config changed during training so that the new version would break it.
        print(f"fashion-train: error: nothing was published: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the repository became unwritable (or full) meanwhile
        print(f"fashion-train: error: nothing was published: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as exc:
        # Ctrl-C or a deleted Job: one line, not Keras' and TensorFlow's stack (a version
        # is published whole or not at all, so there is nothing to clean up by hand).
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"fashion-train: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except PublishedUnlabelled as exc:
        print(f"published version {exc.version} to {exc.path.resolve()}", flush=True)
        print(
            f"fashion-train: error: version {exc.version} is published but not labelled "
            f"{config.label!r}: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    # Absolute: the default ./models is relative to wherever the command was run.
    print(f"published version {published.version} to {published.path.resolve()}", flush=True)
    if config.label:
        print(f"labelled version {published.version} {config.label!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
