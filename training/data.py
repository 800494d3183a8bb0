"""Fashion-MNIST from the four standard IDX gz files, validated. numpy only (no TensorFlow).

Lookup order: ``--data-dir``, ``$FASHION_MNIST_DIR``, Debian's ``dataset-fashion-mnist``
location, the Keras cache, and only then a Keras download. A directory named explicitly
(argument or environment variable) must hold the files: falling back silently to some other
copy would train on data the user did not ask for.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILE_NAMES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
IMAGE_SIDE = 28

ENV_DATA_DIR = "FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


class DataError(Exception):
    """The data set is missing or a file is invalid; the message names the file and the problem."""


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class FashionMNIST:
    """The train and test splits as uint8 arrays, plus where they came from."""

    train_images: np.ndarray  # uint8 [N, 28, 28]
    train_labels: np.ndarray  # uint8 [N]
    test_images: np.ndarray  # uint8 [M, 28, 28]
    test_labels: np.ndarray  # uint8 [M]
    source_dir: Path
    sha256: dict[str, str]  # file name -> hex digest of the .gz file as stored


def _read_gz(path: Path) -> tuple[bytes, str]:
    """Decompressed bytes and the sha256 of the compressed file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file is missing") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    try:
        payload = gzip.decompress(raw)
    except EOFError as exc:
        raise DataError(f"{path}: truncated gzip stream ({len(raw)} bytes on disk)") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file: {exc}") from exc
    return payload, hashlib.sha256(raw).hexdigest()


def parse_idx_images(payload: bytes, path: Path) -> np.ndarray:
    """Parse an IDX3 uint8 image file (already decompressed) into ``[N, 28, 28]``."""
    if len(payload) < 16:
        raise DataError(f"{path}: header truncated: {len(payload)} bytes, expected 16")
    magic, count, rows, cols = struct.unpack(">IIII", payload[:16])
    if magic != IMAGES_MAGIC:
        raise DataError(f"{path}: bad magic number {magic}, expected {IMAGES_MAGIC} (IDX images)")
    if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{path}: images are {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}")
    expected = 16 + count * rows * cols
    if len(payload) != expected:
        problem = "truncated" if len(payload) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: header says {count} images ({expected} bytes), "
            f"file has {len(payload)} bytes"
        )
    return np.frombuffer(payload, np.uint8, offset=16).reshape(count, rows, cols)


def parse_idx_labels(payload: bytes, path: Path) -> np.ndarray:
    """Parse an IDX1 uint8 label file (already decompressed) into ``[N]``."""
    if len(payload) < 8:
        raise DataError(f"{path}: header truncated: {len(payload)} bytes, expected 8")
    magic, count = struct.unpack(">II", payload[:8])
    if magic != LABELS_MAGIC:
        raise DataError(f"{path}: bad magic number {magic}, expected {LABELS_MAGIC} (IDX labels)")
    expected = 8 + count
    if len(payload) != expected:
        problem = "truncated" if len(payload) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: header says {count} labels ({expected} bytes), "
            f"file has {len(payload)} bytes"
        )
    labels = np.frombuffer(payload, np.uint8, offset=8)
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise DataError(f"{path}: label {int(labels.max())} out of range 0..{len(CLASS_NAMES) - 1}")
    return labels


def _load_split(
    directory: Path, images_name: str, labels_name: str, digests: dict[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = directory / images_name, directory / labels_name
    images_payload, digests[images_name] = _read_gz(images_path)
    labels_payload, digests[labels_name] = _read_gz(labels_path)
    images = parse_idx_images(images_payload, images_path)
    labels = parse_idx_labels(labels_payload, labels_path)
    if not len(images):
        # Valid headers that say 0: nothing to train on or to evaluate (Keras' predict on an
        # empty test set failed with a traceback after the whole training).
        raise DataError(f"{images_path}: holds no images (its header says 0)")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path}: count mismatch: {len(images)} images but "
            f"{labels_path.name} has {len(labels)} labels"
        )
    return images, labels


def load_from_dir(directory: Path) -> FashionMNIST:
    """Load and validate all four files from one directory."""
    directory = Path(directory)
    digests: dict[str, str] = {}
    train_images, train_labels = _load_split(directory, TRAIN_IMAGES, TRAIN_LABELS, digests)
    test_images, test_labels = _load_split(directory, TEST_IMAGES, TEST_LABELS, digests)
    return FashionMNIST(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        source_dir=directory,
        sha256={name: digests[name] for name in FILE_NAMES},
    )


def _has_files(directory: Path, names: Sequence[str]) -> bool:
    return all((directory / name).is_file() for name in names)


def keras_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where ``keras.datasets.fashion_mnist`` keeps its download (honours ``$KERAS_HOME``)."""
    home = Path(environ.get("KERAS_HOME", "~/.keras")).expanduser()
    return home / "datasets" / "fashion-mnist"


def find_data_dir(
    data_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    names: Sequence[str] = FILE_NAMES,
    origin: str = "--data-dir",
) -> Path | None:
    """The first directory in lookup order that holds ``names`` (all four files), or None.

    Raises DataError when a directory named explicitly lacks a file; ``origin`` is where
    ``data_dir`` came from, for that message.
    """
    env = os.environ if environ is None else environ
    explicit = [(data_dir, origin)]
    if env.get(ENV_DATA_DIR):
        explicit.append((Path(env[ENV_DATA_DIR]), f"${ENV_DATA_DIR}"))
    for candidate, source in explicit:
        if candidate is None:
            continue
        missing = [name for name in names if not (Path(candidate) / name).is_file()]
        if missing:
            raise DataError(f"{Path(candidate) / missing[0]}: file is missing (from {source})")
        return Path(candidate)
    for candidate in (DEBIAN_DIR, keras_cache_dir(env)):
        if _has_files(candidate, names):
            return candidate
    return None


def load_test_split(
    data_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray, Path]:
    """The 10k test images and labels, and their directory: only the two test files are needed.

    For clients that send the test set to a server: no download is tried, and a missing data
    set is one DataError saying where it was looked for and how to get it.
    """
    env = os.environ if environ is None else environ
    directory = find_data_dir(data_dir, env, names=(TEST_IMAGES, TEST_LABELS))
    if directory is None:
        raise DataError(
            f"the Fashion-MNIST test set ({TEST_IMAGES}, {TEST_LABELS}) was not found in "
            f"${ENV_DATA_DIR}, {DEBIAN_DIR} or {keras_cache_dir(env)}: install Debian's "
            "dataset-fashion-mnist (./scripts/up.sh does) or give --data-dir DIR"
        )
    images, labels = _load_split(directory, TEST_IMAGES, TEST_LABELS, {})
    return images, labels, directory


def _download_with_keras() -> Path:
    """Fetch the files into the Keras cache; the only path that needs TensorFlow/Keras."""
    from keras.utils import get_file  # lazy: keeps this module numpy-only

    cache_subdir = os.path.join("datasets", "fashion-mnist")
    paths = []
    for name in FILE_NAMES:
        try:
            paths.append(
                Path(get_file(name, origin=KERAS_ORIGIN + name, cache_subdir=cache_subdir))
            )
        except Exception as exc:  # get_file raises bare Exception on network failures
            raise DataError(
                f"{name}: not found locally (searched --data-dir, ${ENV_DATA_DIR}, {DEBIAN_DIR}, "
                f"the Keras cache) and the Keras download failed: {exc}"
            ) from exc
    return paths[0].parent


def load_fashion_mnist(
    data_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    allow_download: bool = True,
    origin: str = "--data-dir",
) -> FashionMNIST:
    """Find the data set in lookup order and load it; download via Keras as a last resort."""
    directory = find_data_dir(data_dir, environ, origin=origin)
    if directory is None:
        if not allow_download:
            raise DataError(
                f"Fashion-MNIST not found: searched ${ENV_DATA_DIR}, {DEBIAN_DIR} "
                "and the Keras cache"
            )
        directory = _download_with_keras()
    return load_from_dir(directory)
