"""Keras -> ONNX with the preprocessing inside the graph, checked by a parity gate.

The exported graph takes raw uint8 ``images [batch, 28, 28]`` and returns
``probabilities [batch, 10]``: the x1/255 scaling and the channel axis live in the
graph, so no client or server ever re-implements preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from server.contract import (
    BATCH_DIM,
    IMAGE_SHAPE,
    INPUT_DTYPE,
    INPUT_NAME,
    NUM_CLASSES,
    OUTPUT_DTYPE,
    OUTPUT_NAME,
)

if TYPE_CHECKING:
    import keras
    import onnx

OPSET = 17
# The graph's signature as metadata.json records it (the batch axis by its name).
INPUT_SIGNATURE: dict[str, Any] = {
    "name": INPUT_NAME,
    "dtype": INPUT_DTYPE,
    "shape": [BATCH_DIM, *IMAGE_SHAPE],
}
OUTPUT_SIGNATURE: dict[str, Any] = {
    "name": OUTPUT_NAME,
    "dtype": OUTPUT_DTYPE,
    "shape": [BATCH_DIM, NUM_CLASSES],
}
MAX_ABS_DIFF = 1e-5
PARITY_BATCH = 1000


class ExportError(Exception):
    """The exported graph is invalid or its I/O signature is not the contract."""


class ParityError(ExportError):
    """ONNX and Keras disagree beyond tolerance; nothing may be published."""


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    argmax_equal: bool
    images: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_DIFF and self.argmax_equal

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "argmax_equal": self.argmax_equal,
            "images": self.images,
        }


def scale_images(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1] in [0, 1]: what Keras trains on.

    The exported graph computes the same thing from uint8 (tf2onnx folds it into a Mul);
    the parity gate is what proves the two agree.
    """
    return (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]


def _rename_batch_dim(model: onnx.ModelProto) -> None:
    # tf2onnx names each unknown batch dimension unk__N (input and output get different N);
    # the leading dim of the input and of the output is the batch: give them one stable name.
    graph = model.graph
    unknown = {
        value.type.tensor_type.shape.dim[0].dim_param for value in [*graph.input, *graph.output]
    } - {""}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in unknown:
                dim.dim_param = BATCH_DIM


def _check_signature(model: onnx.ModelProto) -> None:
    from onnx import TensorProto

    def describe(value: Any) -> tuple[str, int, list[Any]]:
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        return value.name, tensor.elem_type, dims

    inputs = [describe(v) for v in model.graph.input]
    outputs = [describe(v) for v in model.graph.output]
    want_in = [(INPUT_NAME, TensorProto.UINT8, INPUT_SIGNATURE["shape"])]
    want_out = [(OUTPUT_NAME, TensorProto.FLOAT, OUTPUT_SIGNATURE["shape"])]
    if inputs != want_in or outputs != want_out:
        raise ExportError(
            f"exported signature {inputs} -> {outputs}, expected {want_in} -> {want_out}"
        )


def to_onnx(model: keras.Model, class_names: list[str]) -> onnx.ModelProto:
    """Convert through ``tf2onnx.convert.from_function`` (``from_keras`` is broken on Keras 3).

    The opset is pinned (OPSET), not a parameter: metadata.json and the server rely on it.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name=INPUT_NAME)]

    @tf.function(input_signature=signature)
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        scaled = tf.cast(images, tf.float32) / 255.0
        # A dict output names the graph output; training=False pins inference behaviour.
        return {OUTPUT_NAME: model(tf.expand_dims(scaled, -1), training=False)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    _rename_batch_dim(proto)
    onnx.helper.set_model_props(
        proto,
        {"class_names": json.dumps(list(class_names)), "opset": str(OPSET)},
    )
    proto.doc_string = "Fashion-MNIST classifier; input raw uint8 pixels, preprocessing in-graph"
    _check_signature(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def onnx_predict(
    proto: onnx.ModelProto, images: np.ndarray, batch: int = PARITY_BATCH
) -> np.ndarray:
    """Run the exported graph in onnxruntime on raw uint8 images."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[start : start + batch]})[0]
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(outputs)


def check_parity(proto: onnx.ModelProto, images: np.ndarray, keras_probs: np.ndarray) -> Parity:
    """Compare ONNX on raw uint8 ``images`` with ``keras_probs``; raise ParityError on mismatch."""
    onnx_probs = onnx_predict(proto, images)
    if onnx_probs.shape != keras_probs.shape or onnx_probs.dtype != np.float32:
        raise ParityError(
            f"ONNX output {onnx_probs.dtype}{list(onnx_probs.shape)} does not match "
            f"Keras {keras_probs.dtype}{list(keras_probs.shape)}"
        )
    parity = Parity(
        max_abs_diff=float(np.max(np.abs(onnx_probs - keras_probs))) if len(images) else 0.0,
        argmax_equal=bool(np.array_equal(onnx_probs.argmax(1), keras_probs.argmax(1))),
        images=len(images),
    )
    if not parity.ok:
        raise ParityError(
            f"parity gate failed on {parity.images} images: max |delta| = "
            f"{parity.max_abs_diff:.3g} (limit {MAX_ABS_DIFF:g}), "
            f"argmax equal = {parity.argmax_equal}"
        )
    return parity
