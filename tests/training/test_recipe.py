"""The training recipes' pieces: the cosine schedule and the flip that never reaches the export."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.model import build_model
from training.recipe import RECIPES, WARMUP_FRACTION, augmented, learning_rate, split_sizes


def test_plateau_is_a_constant_rate_for_the_callback_to_lower() -> None:
    assert learning_rate("plateau", 1e-3, 1000) == 1e-3


def test_cosine_warms_up_linearly_then_decays_to_zero_at_the_last_step() -> None:
    total = 1000
    warmup = int(total * WARMUP_FRACTION)
    schedule = learning_rate("cosine", 2e-3, total)
    rates = [float(schedule(step)) for step in range(0, total + 1, 10)]
    assert rates[0] == 0.0
    assert float(schedule(warmup // 2)) == pytest.approx(1e-3, rel=1e-5)
    assert float(schedule(warmup)) == pytest.approx(2e-3, rel=1e-5)
    after = rates[warmup // 10 :]
    assert all(later <= earlier for earlier, later in itertools.pairwise(after))
    assert float(schedule(total)) == pytest.approx(0.0, abs=1e-9)
    # Halfway through the decay the cosine is at half the peak.
    assert float(schedule(warmup + (total - warmup) // 2)) == pytest.approx(1e-3, rel=1e-3)


def test_unknown_schedule_and_augmentation_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        learning_rate("step", 1e-3, 10)
    with pytest.raises(ValueError, match="unknown augmentation 'shift'"):
        augmented(build_model("course_cnn"), "shift", 0)


def test_every_architecture_has_a_recipe() -> None:
    from training.model import ARCHITECTURES

    assert set(RECIPES) == set(ARCHITECTURES)


def test_flip_trains_the_inner_model_and_is_not_part_of_it() -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = build_model("course_cnn")
    assert augmented(model, "none", 0) is model
    trainee = augmented(model, "flip", 0)
    # The same variables: fitting the trainee trains the model that gets exported.
    assert {id(v) for v in trainee.trainable_weights} == {id(v) for v in model.trainable_weights}
    assert "RandomFlip" not in {type(layer).__name__ for layer in model.layers}

    images = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
    plain = np.asarray(model(images))
    mirrored = np.asarray(model(images[:, :, ::-1, :]))
    np.testing.assert_allclose(np.asarray(trainee(images, training=False)), plain, atol=1e-6)
    trained_view = np.asarray(trainee(images, training=True))
    as_is = np.isclose(trained_view, plain, atol=1e-5).all(axis=1)
    flipped = np.isclose(trained_view, mirrored, atol=1e-5).all(axis=1)
    # Each image is seen either as is or mirrored left-right, and both happen.
    assert (as_is | flipped).all()
    assert as_is.any() and flipped.any()


@pytest.mark.parametrize(
    ("images", "split"), [(60000, 0.1), (1500, 0.1), (143, 0.1), (1005, 0.1), (7, 0.3), (10, 0.0)]
)
def test_split_sizes_match_how_keras_splits(images: int, split: float) -> None:
    # The cosine schedule's step count depends on it: one image too many in the count can add
    # a batch per epoch, and the rate would then never reach zero.
    from keras.src.trainers.data_adapters.array_slicing import train_validation_split

    x = np.arange(images, dtype=np.float32)
    if split:
        (trained, _), (held, _) = train_validation_split((x, x), validation_split=split)
        assert split_sizes(images, split) == (len(trained), len(held))
    else:
        assert split_sizes(images, split) == (images, 0)
    assert split_sizes(143, 0.1) == (128, 15)  # int(143 * 0.1) = 14 would say 129 / 14
