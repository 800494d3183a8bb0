"""ONNX export of an (untrained) model: signature, metadata, preprocessing in-graph, parity gate."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from training.data import CLASS_NAMES
from training.export import (
    ExportError,
    ParityError,
    check_parity,
    onnx_predict,
    scale_images,
    to_onnx,
)
from training.model import build_model


@pytest.fixture(scope="module")
def exported() -> tuple[Any, Any]:
    import keras

    keras.utils.set_random_seed(0)
    model = build_model()
    return model, to_onnx(model, list(CLASS_NAMES))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (257, 28, 28), dtype=np.uint8)


def test_graph_signature_is_the_contract(exported: tuple[Any, Any]) -> None:
    import onnx
    from onnx import TensorProto

    _, proto = exported
    onnx.checker.check_model(proto, full_check=True)
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", 28, 28]
    assert graph_output.name == "probabilities"
    assert graph_output.type.tensor_type.elem_type == TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim]
    assert dims == ["batch", 10]
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == 17


def test_class_names_in_metadata_props(exported: tuple[Any, Any]) -> None:
    _, proto = exported
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == list(CLASS_NAMES)


def test_no_tensorflow_names_leak_into_io(exported: tuple[Any, Any]) -> None:
    _, proto = exported
    names = [v.name for v in [*proto.graph.input, *proto.graph.output]]
    assert not any(":" in name or "/" in name for name in names)


def test_raw_uint8_in_matches_keras_on_scaled_floats(
    exported: tuple[Any, Any], images: np.ndarray
) -> None:
    model, proto = exported
    keras_probs = model.predict(scale_images(images), verbose=0)
    parity = check_parity(proto, images, keras_probs)
    assert parity.argmax_equal and parity.max_abs_diff <= 1e-5 and parity.images == 257
    # Odd batch sizes and a single image go through the dynamic batch dimension.
    np.testing.assert_allclose(onnx_predict(proto, images[:1]), keras_probs[:1], atol=1e-5)


def test_parity_gate_rejects_drift(exported: tuple[Any, Any], images: np.ndarray) -> None:
    model, proto = exported
    keras_probs = model.predict(scale_images(images), verbose=0)
    with pytest.raises(ParityError, match="max \\|delta\\|"):
        check_parity(proto, images, keras_probs + 1e-3)
    # Forgetting the /255 on one side is exactly the bug the gate exists to catch.
    unscaled = model.predict(images[..., None].astype(np.float32), verbose=0)
    with pytest.raises(ParityError):
        check_parity(proto, images, unscaled)


def test_parity_gate_rejects_shape_mismatch(exported: tuple[Any, Any], images: np.ndarray) -> None:
    _, proto = exported
    with pytest.raises(ExportError, match="does not match"):
        check_parity(proto, images, np.zeros((len(images), 9), np.float32))
