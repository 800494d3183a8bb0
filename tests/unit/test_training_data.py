"""The IDX loader on small synthetic files. numpy only: no TensorFlow in this module."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data import (
    ENV_DATA_DIR,
    FILE_NAMES,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    DataError,
    find_data_dir,
    load_fashion_mnist,
    load_from_dir,
)


def idx_images(images: np.ndarray, *, magic: int = 2051, count: int | None = None) -> bytes:
    n, rows, cols = images.shape
    header = struct.pack(">IIII", magic, n if count is None else count, rows, cols)
    return header + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray, *, magic: int = 2049, count: int | None = None) -> bytes:
    header = struct.pack(">II", magic, len(labels) if count is None else count)
    return header + labels.astype(np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload))


def write_dataset(directory: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_gz(directory / name, idx_images(array) if array.ndim == 3 else idx_labels(array))
    return arrays


def test_valid_files_round_trip(tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path)
    data = load_from_dir(tmp_path)
    np.testing.assert_array_equal(data.train_images, arrays[TRAIN_IMAGES])
    np.testing.assert_array_equal(data.train_labels, arrays[TRAIN_LABELS])
    np.testing.assert_array_equal(data.test_images, arrays[TEST_IMAGES])
    np.testing.assert_array_equal(data.test_labels, arrays[TEST_LABELS])
    assert data.train_images.dtype == np.uint8 and data.train_images.shape == (12, 28, 28)
    assert data.source_dir == tmp_path
    assert list(data.sha256) == list(FILE_NAMES)
    assert all(len(digest) == 64 for digest in data.sha256.values())


def test_wrong_magic_names_file_and_magic(tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path)
    write_gz(tmp_path / TRAIN_IMAGES, idx_images(arrays[TRAIN_IMAGES], magic=2049))
    with pytest.raises(DataError, match=rf"{TRAIN_IMAGES}: bad magic number 2049, expected 2051"):
        load_from_dir(tmp_path)


def test_wrong_label_magic(tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path)
    write_gz(tmp_path / TEST_LABELS, idx_labels(arrays[TEST_LABELS], magic=2051))
    with pytest.raises(DataError, match=rf"{TEST_LABELS}: bad magic number 2051"):
        load_from_dir(tmp_path)


def test_truncated_payload_is_reported_with_sizes(tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path)
    payload = idx_images(arrays[TEST_IMAGES])
    write_gz(tmp_path / TEST_IMAGES, payload[:-100])
    with pytest.raises(DataError, match=rf"{TEST_IMAGES}: truncated: header says 5 images"):
        load_from_dir(tmp_path)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    raw = (tmp_path / TRAIN_LABELS).read_bytes()
    (tmp_path / TRAIN_LABELS).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=rf"{TRAIN_LABELS}: truncated gzip stream"):
        load_from_dir(tmp_path)


def test_not_gzip_is_corrupt(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / TRAIN_IMAGES).write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=rf"{TRAIN_IMAGES}: not a valid gzip file"):
        load_from_dir(tmp_path)


def test_header_shorter_than_16_bytes(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    write_gz(tmp_path / TRAIN_IMAGES, b"\x00\x00\x08\x03")
    with pytest.raises(DataError, match="header truncated"):
        load_from_dir(tmp_path)


def test_header_count_disagreeing_with_payload(tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path)
    write_gz(tmp_path / TRAIN_LABELS, idx_labels(arrays[TRAIN_LABELS], count=11))
    with pytest.raises(DataError, match=rf"{TRAIN_LABELS}: has trailing bytes: header says 11"):
        load_from_dir(tmp_path)


def test_image_and_label_count_mismatch(tmp_path: Path) -> None:
    arrays = write_dataset(tmp_path)
    write_gz(tmp_path / TRAIN_LABELS, idx_labels(arrays[TRAIN_LABELS][:10]))
    with pytest.raises(DataError, match=r"count mismatch: 12 images but .* has 10 labels"):
        load_from_dir(tmp_path)


def test_wrong_image_size(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    write_gz(tmp_path / TEST_IMAGES, idx_images(np.zeros((5, 32, 32), np.uint8)))
    with pytest.raises(DataError, match="images are 32x32, expected 28x28"):
        load_from_dir(tmp_path)


def test_label_out_of_range(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    write_gz(tmp_path / TEST_LABELS, idx_labels(np.array([0, 1, 2, 3, 10])))
    with pytest.raises(DataError, match="label 10 out of range"):
        load_from_dir(tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_split_with_no_images_is_refused(tmp_path: Path, split: str) -> None:
    # Valid IDX headers that say 0: an empty test set went through training and then
    # failed in Keras' predict with a traceback (UnboundLocalError 'batch_outputs').
    write_dataset(
        tmp_path, n_train=0 if split == "train" else 12, n_test=0 if split == "test" else 5
    )
    images = TRAIN_IMAGES if split == "train" else TEST_IMAGES
    with pytest.raises(DataError, match=rf"{images}: holds no images"):
        load_from_dir(tmp_path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / TEST_LABELS).unlink()
    with pytest.raises(DataError, match=rf"{TEST_LABELS}: file is missing"):
        load_from_dir(tmp_path)


def test_data_dir_argument_wins_over_environment(tmp_path: Path) -> None:
    write_dataset(tmp_path / "arg")
    write_dataset(tmp_path / "env")
    environ = {ENV_DATA_DIR: str(tmp_path / "env")}
    assert find_data_dir(tmp_path / "arg", environ) == tmp_path / "arg"
    assert find_data_dir(None, environ) == tmp_path / "env"


def test_explicit_dir_missing_a_file_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    write_dataset(tmp_path / "env")
    (tmp_path / "env" / TRAIN_IMAGES).unlink()
    expected = rf"{TRAIN_IMAGES}: file is missing \(from \${ENV_DATA_DIR}\)"
    with pytest.raises(DataError, match=expected):
        find_data_dir(None, {ENV_DATA_DIR: str(tmp_path / "env")})
    with pytest.raises(DataError, match=r"from --data-dir"):
        find_data_dir(tmp_path / "nowhere", {})


def test_debian_location_then_keras_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {"KERAS_HOME": str(tmp_path / "keras-home")}
    cache = tmp_path / "keras-home" / "datasets" / "fashion-mnist"
    write_dataset(cache)
    debian = tmp_path / "debian"
    debian.mkdir()
    monkeypatch.setattr("training.data.DEBIAN_DIR", debian)
    assert find_data_dir(None, environ) == cache  # Debian dir present but empty: skipped
    write_dataset(debian)
    assert find_data_dir(None, environ) == debian


def test_nothing_found_without_download_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("training.data.DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        load_fashion_mnist(None, {"KERAS_HOME": str(tmp_path)}, allow_download=False)


def test_importing_training_modules_does_not_import_tensorflow() -> None:
    code = (
        "import sys, training.data, training.train, training.export, training.model;"
        "bad = [m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnx') if m in sys.modules];"
        "sys.exit(repr(bad) if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist", TRAIN_IMAGES).is_file(),
    reason="real Fashion-MNIST (Debian dataset-fashion-mnist) not installed",
)
def test_real_dataset_has_standard_counts() -> None:
    data = load_from_dir(Path("/usr/share/datasets/fashion-mnist"))
    assert data.train_images.shape == (60000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
