"""The network. Keras is imported inside the function so importing this module stays cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

ARCHITECTURES: tuple[str, ...] = ("course_cnn",)
INPUT_SHAPE: tuple[int, int, int] = (28, 28, 1)
NUM_CLASSES = 10


def build_model(arch: str = "course_cnn") -> keras.Model:
    """Build an uncompiled model taking float images in [0, 1], shape ``[batch, 28, 28, 1]``.

    Scaling and the channel axis are NOT part of this model: the export wraps it with
    them (uint8 in), so the training graph matches the course notes layer for layer.
    """
    if arch != "course_cnn":
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name="image"),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name=arch,
    )
