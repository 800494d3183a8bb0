"""load_test_split: what fashion-predict --evaluate and fashion-inspect --index read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import training.data
from tests.unit.test_training_data import write_dataset
from training.data import (
    ENV_DATA_DIR,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DataError,
    load_test_split,
)


def test_only_the_two_test_files_are_needed(tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path / "d")
    for name in (TRAIN_IMAGES, TRAIN_LABELS):
        (tmp_path / "d" / name).unlink()
    images, labels, source = load_test_split(tmp_path / "d", {})
    np.testing.assert_array_equal(images, arrays[TEST_IMAGES])
    np.testing.assert_array_equal(labels, arrays[TEST_LABELS])
    assert source == tmp_path / "d"


def test_the_environment_variable_is_honoured(tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path / "env", n_test=3)
    images, _, source = load_test_split(None, {ENV_DATA_DIR: str(tmp_path / "env")})
    assert source == tmp_path / "env" and len(images) == len(arrays[TEST_IMAGES]) == 3


def test_a_named_directory_without_the_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{TEST_IMAGES}: file is missing \(from --data-dir\)"):
        load_test_split(tmp_path, {})


def test_nothing_found_anywhere_says_where_it_looked_and_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training.data, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(DataError) as info:
        load_test_split(None, {"KERAS_HOME": str(tmp_path / "keras")})
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "debian") in message and str(tmp_path / "keras") in message
    assert "dataset-fashion-mnist" in message and "--data-dir" in message
