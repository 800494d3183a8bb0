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


def test_bn_cnn_shapes_and_the_same_exported_signature() -> None:
    import keras
    import numpy as np

    from training.data import CLASS_NAMES
    from training.export import (
        INPUT_SIGNATURE,
        OUTPUT_SIGNATURE,
        check_parity,
        scale_images,
        to_onnx,
    )

    keras.utils.set_random_seed(0)
    model = build_model("bn_cnn")
    assert model.name == "bn_cnn" and model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    convs = [tuple(layer.output.shape[1:]) for layer in model.layers
             if type(layer).__name__ == "Conv2D"]  # fmt: skip
    assert convs == [(28, 28, 32), (14, 14, 64), (7, 7, 128)]
    # The last pooling pads 7x7 to 4x4 rather than dropping the border row and column.
    flat = [layer.output.shape[1] for layer in model.layers if type(layer).__name__ == "Flatten"]
    assert flat == [4 * 4 * 128]
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"BatchNormalization", "Dropout"} <= kinds
    # Export: dropout is the identity at inference, batch norm folds into the convs,
    # and the signature is the one the server expects.
    proto = to_onnx(model, list(CLASS_NAMES))
    graph_in, graph_out = proto.graph.input[0], proto.graph.output[0]
    assert graph_in.name == INPUT_SIGNATURE["name"] and graph_out.name == OUTPUT_SIGNATURE["name"]
    assert [d.dim_param or d.dim_value for d in graph_in.type.tensor_type.shape.dim] == [
        "batch", 28, 28,
    ]  # fmt: skip
    images = np.random.default_rng(1).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    keras_probs = model.predict(scale_images(images), verbose=0)
    assert check_parity(proto, images, keras_probs).ok
