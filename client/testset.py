"""The Fashion-MNIST test split, for clients that send it to a server. numpy only, no download.

``fashion-predict --evaluate``, the peers' parity check and ``fashion-soak`` read it here, so
none of them imports the training package. Same two files, lookup order and checks as the
training job's loader (``training/data.py``): ``--data-dir``, ``$FASHION_MNIST_DIR``, Debian's
``dataset-fashion-mnist`` location, then the Keras cache. A directory named explicitly must
hold the files: falling back silently to some other copy would measure data the user did not
ask for.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from server.contract import IMAGE_SHAPE, NUM_CLASSES

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

ENV_DATA_DIR = "FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataSetError(Exception):
    """The test set is missing or a file is invalid; the message names the file and the problem."""


def keras_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where ``keras.datasets.fashion_mnist`` keeps its download (honours ``$KERAS_HOME``)."""
    return Path(environ.get("KERAS_HOME", "~/.keras")).expanduser() / "datasets" / "fashion-mnist"


def _read_gz(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataSetError(f"{path}: file is missing") from exc
    except OSError as exc:
        raise DataSetError(f"{path}: cannot read: {exc}") from exc
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DataSetError(f"{path}: truncated gzip stream ({len(raw)} bytes on disk)") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataSetError(f"{path}: not a valid gzip file: {exc}") from exc


def _shown(dims: Iterable[int]) -> str:
    return "x".join(str(d) for d in dims)


def parse_idx(
    payload: bytes, path: Path, *, what: str, magic: int, item_shape: tuple[int, ...]
) -> np.ndarray:
    """An IDX uint8 file (decompressed): magic, count, one size per item dimension, the items."""
    header = 8 + 4 * len(item_shape)
    if len(payload) < header:
        raise DataSetError(f"{path}: header truncated: {len(payload)} bytes, expected {header}")
    found, count, *dims = struct.unpack(f">{2 + len(item_shape)}I", payload[:header])
    if found != magic:
        raise DataSetError(f"{path}: bad magic number {found}, expected {magic} (IDX {what})")
    if tuple(dims) != item_shape:
        raise DataSetError(f"{path}: {what} are {_shown(dims)}, expected {_shown(item_shape)}")
    expected = header + count * math.prod(item_shape)
    if len(payload) != expected:
        problem = "truncated" if len(payload) < expected else "has trailing bytes"
        raise DataSetError(
            f"{path}: {problem}: header says {count} {what} ({expected} bytes), "
            f"file has {len(payload)} bytes"
        )
    return np.frombuffer(payload, np.uint8, offset=header).reshape(count, *item_shape)


def find_test_dir(data_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The first directory in lookup order that holds both test files."""
    env = os.environ if environ is None else environ
    names = (TEST_IMAGES, TEST_LABELS)
    explicit = [(data_dir, "--data-dir")]
    if env.get(ENV_DATA_DIR):
        explicit.append((Path(env[ENV_DATA_DIR]), f"${ENV_DATA_DIR}"))
    for candidate, origin in explicit:
        if candidate is None:
            continue
        missing = [name for name in names if not (Path(candidate) / name).is_file()]
        if missing:
            raise DataSetError(f"{Path(candidate) / missing[0]}: file is missing (from {origin})")
        return Path(candidate)
    for candidate in (DEBIAN_DIR, keras_cache_dir(env)):
        if all((candidate / name).is_file() for name in names):
            return candidate
    raise DataSetError(
        f"the Fashion-MNIST test set ({TEST_IMAGES}, {TEST_LABELS}) was not found in "
        f"${ENV_DATA_DIR}, {DEBIAN_DIR} or {keras_cache_dir(env)}: install Debian's "
        "dataset-fashion-mnist (./scripts/up.sh does) or give --data-dir DIR"
    )


def load_test_split(
    data_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray, Path]:
    """The 10k test images (uint8 [N, 28, 28]) and labels, and the directory they came from."""
    directory = find_test_dir(data_dir, environ)
    images_path, labels_path = directory / TEST_IMAGES, directory / TEST_LABELS
    images_payload, labels_payload = _read_gz(images_path), _read_gz(labels_path)
    images = parse_idx(
        images_payload, images_path, what="images", magic=IMAGES_MAGIC, item_shape=IMAGE_SHAPE
    )
    labels = parse_idx(
        labels_payload, labels_path, what="labels", magic=LABELS_MAGIC, item_shape=()
    )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataSetError(
            f"{labels_path}: label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}"
        )
    if len(images) != len(labels):
        raise DataSetError(
            f"{images_path}: count mismatch: {len(images)} images but "
            f"{labels_path.name} has {len(labels)} labels"
        )
    return images, labels, directory
