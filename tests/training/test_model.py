"""The default network is exactly the course notes' CNN."""

from __future__ import annotations

import pytest

from training.model import build_model


def test_course_cnn_layer_shapes_and_parameter_count() -> None:
    model = build_model()
    assert model.input_shape == (None, 28, 28, 1)
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert shapes == [(26, 26, 64), (13, 13, 64), (11, 11, 64), (5, 5, 64), (1600,), (128,), (10,)]
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense",
    ]  # fmt: skip
    activations = [
        layer.activation.__name__ for layer in model.layers if hasattr(layer, "activation")
    ]
    assert activations == ["relu", "relu", "relu", "softmax"]
    assert model.count_params() == 243_786


def test_unknown_architecture_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build_model("resnet")
