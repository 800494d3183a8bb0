"""Static INT8 (QDQ, per-channel, 7-bit weights) variant of the float model, behind a gate.

The uint8 -> float preprocessing at the head of the graph (everything before the first Conv)
and the final Softmax stay in float, so the quantized model keeps the float model's signature
exactly: ``images`` uint8 ``[batch, 28, 28]`` -> ``probabilities`` float32 ``[batch, 10]``.
Calibration runs on training images (never test images). The variant is published only when
its test accuracy is at most ``MAX_DROP_POINTS`` below the float model's.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server.contract import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import onnx

INT8_FILE = "model.int8.onnx"
MAX_DROP_POINTS = 0.3
CALIBRATION_IMAGES = 1000
SPEED_BATCH_SIZES: tuple[int, ...] = (1, 32)
SPEED_THREADS = 2
SPEED_SECONDS = 1.0


@dataclass(frozen=True)
class Gate:
    accepted: bool
    float_accuracy: float
    int8_accuracy: float
    delta_points: float  # int8 - float, in percentage points
    reason: str


def accuracy_gate(
    float_accuracy: float, int8_accuracy: float, max_drop_points: float = MAX_DROP_POINTS
) -> Gate:
    """Accept when INT8 loses at most ``max_drop_points`` points (a gain is always accepted)."""
    delta = round((int8_accuracy - float_accuracy) * 100.0, 4)
    accepted = delta >= -max_drop_points
    verdict = "within" if accepted else "beyond"
    reason = (
        f"int8 accuracy {int8_accuracy:.4f} vs float {float_accuracy:.4f}: "
        f"{delta:+.2f} points, {verdict} the {max_drop_points} point limit"
    )
    return Gate(accepted, float_accuracy, int8_accuracy, delta, reason)


def calibration_sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` distinct images drawn with a fixed seed (all of them if fewer)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), size=min(count, len(images)), replace=False)
    return images[np.sort(chosen)]


def output_softmax_nodes(model: onnx.ModelProto) -> list[str]:
    """The Softmax producing the output: left in float so probabilities keep full resolution
    (quantized, they would come out in steps of 1/255 and not sum to 1)."""
    outputs = {output.name for output in model.graph.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Softmax" and outputs.intersection(node.output)
    ]


def preprocessing_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes before the first Conv: the in-graph uint8 -> float scaling."""
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            return names
        names.append(node.name)
    raise ValueError("the graph has no Conv node")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over uint8 batches."""

    def __init__(self, images: np.ndarray, batch: int = 100) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch] for i in range(0, len(images), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(float_model: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """Static QDQ quantization, int8 weights per channel (7-bit range) and int8 activations.

    ``reduce_range`` keeps weights in [-64, 64]. Without it, onnxruntime's fused int8 Conv on
    x86 CPUs without VNNI (AVX2 only, like the project's machine of 2026-11-22) adds pairs of
    uint8 x int8 products in int16 (``vpmaddubsw``), which saturates: on bn_cnn the first
    Conv's outputs were off by up to 2.5 (out of 7) against the reference QDQ arithmetic,
    and test accuracy fell 1.04 points; with 7-bit weights it fell 0.04. The cost is one
    bit of weight resolution, which the accuracy gate measures.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(float_model, source)
        quantize_static(
            str(source),
            str(target),
            _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=preprocessing_nodes(float_model) + output_softmax_nodes(float_model),
        )
        quantized = onnx.load(str(target))
    for key in ("class_names", "opset"):
        value = next((p.value for p in float_model.metadata_props if p.key == key), None)
        if value is not None and not any(p.key == key for p in quantized.metadata_props):
            quantized.metadata_props.add(key=key, value=value)
    quantized.doc_string = float_model.doc_string + " (static INT8, QDQ, per-channel)"
    return quantized


def images_per_second(
    model_bytes: bytes,
    images: np.ndarray,
    *,
    batch_sizes: Sequence[int] = SPEED_BATCH_SIZES,
    threads: int = SPEED_THREADS,
    seconds: float = SPEED_SECONDS,
) -> dict[str, float]:
    """In-process onnxruntime throughput per batch size (``{"batch_1": ..., "batch_32": ...}``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    rates = {}
    for batch in batch_sizes:
        feed = {INPUT_NAME: images[:batch]}
        for _ in range(10):  # warm-up
            session.run([OUTPUT_NAME], feed)
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            session.run([OUTPUT_NAME], feed)
            runs += 1
        rates[f"batch_{batch}"] = round(runs * batch / elapsed, 1)
    return rates


def variant_entry(
    *,
    sha256: str,
    gate: Gate,
    speed: dict[str, Any],
    size_bytes: int,
    calibration_images: int,
) -> dict[str, Any]:
    """The ``variants.int8`` object of metadata.json (the server reads file and sha256)."""
    return {
        "file": INT8_FILE,
        "sha256": sha256,
        "test_accuracy": gate.int8_accuracy,
        "accuracy_delta_points": gate.delta_points,
        "images_per_second": speed,
        "size_bytes": size_bytes,
        "calibration_images": calibration_images,
        "quantization": (
            "static QDQ, int8 weights per channel (7-bit range), int8 activations, MinMax"
        ),
    }


def refusal_entry(gate: Gate, calibration_images: int) -> dict[str, Any]:
    """The ``variants_refused.int8`` object: why no INT8 model was published."""
    return {
        "reason": gate.reason,
        "test_accuracy": gate.int8_accuracy,
        "accuracy_delta_points": gate.delta_points,
        "max_drop_points": MAX_DROP_POINTS,
        "calibration_images": calibration_images,
    }
