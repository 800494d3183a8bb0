"""The test split as the clients read it (client.testset: fashion-predict --evaluate, bench.peers,
fashion-soak) and as the training package does (training.data: fashion-inspect --index).

The two readers are separate (the client does not import the training package); every test
runs against both, so their lookup order, checks and messages cannot drift apart.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import client.testset
import training.data
from tests.unit.test_training_data import idx_images, idx_labels, write_dataset
from training.data import TRAIN_IMAGES, TRAIN_LABELS

TEST_IMAGES, TEST_LABELS = client.testset.TEST_IMAGES, client.testset.TEST_LABELS
ERROR = {client.testset: client.testset.DataSetError, training.data: training.data.DataError}
gz = gzip.compress


@pytest.fixture(params=[client.testset, training.data], ids=["client", "training"])
def reader(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


def test_both_readers_look_for_the_same_files_in_the_same_places() -> None:
    for name in ("TEST_IMAGES", "TEST_LABELS", "ENV_DATA_DIR", "DEBIAN_DIR"):
        assert getattr(client.testset, name) == getattr(training.data, name)
    assert client.testset.keras_cache_dir({}) == training.data.keras_cache_dir({})


def test_only_the_two_test_files_are_needed(reader: ModuleType, tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path / "d")
    for name in (TRAIN_IMAGES, TRAIN_LABELS):
        (tmp_path / "d" / name).unlink()
    images, labels, source = reader.load_test_split(tmp_path / "d", {})
    np.testing.assert_array_equal(images, arrays[TEST_IMAGES])
    np.testing.assert_array_equal(labels, arrays[TEST_LABELS])
    assert images.dtype == np.uint8 and images.shape == (5, 28, 28)
    assert source == tmp_path / "d"


def test_the_environment_variable_is_honoured(reader: ModuleType, tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path / "env", n_test=3)
    images, _, source = reader.load_test_split(None, {reader.ENV_DATA_DIR: str(tmp_path / "env")})
    assert source == tmp_path / "env" and len(images) == len(arrays[TEST_IMAGES]) == 3


def test_the_argument_wins_over_the_environment(reader: ModuleType, tmp_path: Path) -> None:
    write_dataset(tmp_path / "arg", n_test=2)
    write_dataset(tmp_path / "env", n_test=3)
    environ = {reader.ENV_DATA_DIR: str(tmp_path / "env")}
    _, _, source = reader.load_test_split(tmp_path / "arg", environ)
    assert source == tmp_path / "arg"


def test_a_named_directory_without_the_files_is_refused(reader: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ERROR[reader], match=rf"{TEST_IMAGES}: file is missing \(from --data-dir\)"):
        reader.load_test_split(tmp_path, {})
    write_dataset(tmp_path / "env")
    (tmp_path / "env" / TEST_LABELS).unlink()
    expected = rf"{TEST_LABELS}: file is missing \(from \$FASHION_MNIST_DIR\)"
    with pytest.raises(ERROR[reader], match=expected):
        reader.load_test_split(None, {reader.ENV_DATA_DIR: str(tmp_path / "env")})


def test_debian_location_then_keras_cache(
    reader: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {"KERAS_HOME": str(tmp_path / "keras-home")}
    write_dataset(tmp_path / "keras-home" / "datasets" / "fashion-mnist", n_test=2)
    debian = tmp_path / "debian"
    debian.mkdir()
    monkeypatch.setattr(reader, "DEBIAN_DIR", debian)
    assert len(reader.load_test_split(None, environ)[0]) == 2  # Debian dir empty: skipped
    write_dataset(debian, n_test=4)
    assert reader.load_test_split(None, environ)[2] == debian


def test_nothing_found_anywhere_says_where_it_looked_and_how_to_get_it(
    reader: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(ERROR[reader]) as info:
        reader.load_test_split(None, {"KERAS_HOME": str(tmp_path / "keras")})
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "debian") in message and str(tmp_path / "keras") in message
    assert "dataset-fashion-mnist" in message and "--data-dir" in message


CORRUPTIONS = {
    "bad image magic": (
        TEST_IMAGES,
        lambda a: gz(idx_images(a[TEST_IMAGES], magic=2049)),
        rf"{TEST_IMAGES}: bad magic number 2049, expected 2051 \(IDX images\)",
    ),
    "bad label magic": (
        TEST_LABELS,
        lambda a: gz(idx_labels(a[TEST_LABELS], magic=2051)),
        rf"{TEST_LABELS}: bad magic number 2051, expected 2049 \(IDX labels\)",
    ),
    "truncated images": (
        TEST_IMAGES,
        lambda a: gz(idx_images(a[TEST_IMAGES])[:-100]),
        rf"{TEST_IMAGES}: truncated: header says 5 images \(3936 bytes\), file has 3836 bytes",
    ),
    "trailing label bytes": (
        TEST_LABELS,
        lambda a: gz(idx_labels(a[TEST_LABELS], count=4)),
        rf"{TEST_LABELS}: has trailing bytes: header says 4 labels \(12 bytes\), file has 13",
    ),
    "short header": (TEST_IMAGES, lambda a: gz(b"\x00\x00\x08\x03"), "header truncated: 4 bytes"),
    "wrong image size": (
        TEST_IMAGES,
        lambda a: gz(idx_images(np.zeros((5, 32, 32), np.uint8))),
        "images are 32x32, expected 28x28",
    ),
    "label out of range": (
        TEST_LABELS,
        lambda a: gz(idx_labels(np.array([0, 1, 2, 3, 10]))),
        r"label 10 out of range 0\.\.9",
    ),
    "count mismatch": (
        TEST_LABELS,
        lambda a: gz(idx_labels(a[TEST_LABELS][:4])),
        rf"{TEST_IMAGES}: count mismatch: 5 images but {TEST_LABELS} has 4 labels",
    ),
    "not gzip": (TEST_IMAGES, lambda a: b"not gzip at all", "not a valid gzip file"),
    "truncated gzip": (
        TEST_LABELS,
        lambda a: gz(idx_labels(a[TEST_LABELS]))[:20],
        "truncated gzip stream",
    ),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_a_corrupt_file_is_named_with_its_problem(
    reader: ModuleType, tmp_path: Path, case: str
) -> None:
    arrays = write_dataset(tmp_path)
    name, content, expected = CORRUPTIONS[case]
    (tmp_path / name).write_bytes(content(arrays))
    with pytest.raises(ERROR[reader], match=expected):
        reader.load_test_split(tmp_path, {})


def test_the_client_does_not_import_the_training_package() -> None:
    code = (
        "import sys, client.cli, client.testset, soak.cli, bench.peers.run;"
        "bad = sorted(m for m in sys.modules if m == 'training' or m.startswith('training.'));"
        "sys.exit(repr(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
