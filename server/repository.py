"""The versioned model repository: ``<root>/<model>/<version>/{model.onnx,metadata.json}``,
and each model's optional ``<root>/<model>/config.json`` (:mod:`server.serving_config`).

This is the one place that knows the on-disk layout (the Triton / TF Serving
layout). The training job publishes through :func:`publish_version`; the server
reads through :func:`list_versions` and :func:`read_version`. Versions are
positive integers written in ASCII (:func:`parse_version_number`); anything else
in a model directory (temporary directories of an export in progress, stray
files, names like ``²`` that ``str.isdigit()`` would accept) is ignored, so a
reader never sees a half-written version.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.contract import CONFIG_FILE, METADATA_FILE, MODEL_FILE, MODEL_NAME, is_model_name
from server.errors import ModelLoadError, VersionNotFound

# The float model is model.onnx. Optional extra variants (e.g. a quantized INT8 model)
# are listed in metadata.json as {"variants": {"int8": {"file": ..., "sha256": ...}}}.
FLOAT_VARIANT = "float"
# Temporary directories start with a dot and are never integers, so readers skip them.
TMP_PREFIX = ".tmp-"
# The largest version a protobuf int64 field (fashion.v1 model_version) can carry.
MAX_VERSION = 2**63 - 1
_MAX_VERSION_DIGITS = len(str(MAX_VERSION))


@dataclass(frozen=True)
class ModelVersion:
    """One published version: where its files are and what metadata.json says."""

    version: int
    path: Path
    metadata: dict[str, Any]
    variant: str = FLOAT_VARIANT
    model_file: str = MODEL_FILE
    model_sha256: str = ""
    model: str = MODEL_NAME  # the model's name: its directory in the repository

    @property
    def model_path(self) -> Path:
        return self.path / self.model_file


def model_dir(root: Path, model: str = MODEL_NAME) -> Path:
    return Path(root) / model


def parse_version_number(text: str) -> int | None:
    """``text`` as a version number if it is ASCII ``[1-9][0-9]*`` within int64, else None.

    The one rule for version names on disk and in requests. ``str.isdigit()`` and
    ``int()`` are not it: between them they accept superscript, Arabic-Indic and
    full-width digits, leading zeros, signs, underscores and spaces, and ``int()``
    of a long digit string is slow (refused past 4,300 digits): the length is
    checked before any conversion.
    """
    if not 0 < len(text) <= _MAX_VERSION_DIGITS or not text.isascii() or not text.isdigit():
        return None
    if text[0] == "0":
        return None
    number = int(text)
    return number if number <= MAX_VERSION else None


@dataclass(frozen=True)
class Scan:
    """What one look at a model directory (or at the repository's root) found."""

    versions: list[int]  # ascending
    ignored: list[str]  # names that are neither (dot names excluded: those are expected)
    models: list[str] = field(default_factory=list)  # the root's model directories


def scan_versions(root: Path, model: str = MODEL_NAME) -> Scan:
    """Versions and ignored names of one model directory. Missing directory -> empty scan.

    Raises ModelLoadError when the directory exists but cannot be listed (permissions).
    """
    directory = model_dir(root, model)
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return Scan([], [])
    except OSError as exc:
        raise ModelLoadError(f"cannot list {directory}: {exc.strerror or exc}") from exc
    versions, ignored = [], []
    for entry in entries:
        number = parse_version_number(entry.name)
        if number is not None and entry.is_dir():
            versions.append(number)
        elif not entry.name.startswith(".") and entry.name != CONFIG_FILE:
            ignored.append(entry.name)
    return Scan(sorted(versions), sorted(ignored))


def scan_models(root: Path) -> Scan:
    """Model directories of the repository (``versions`` holds nothing; ``ignored``: other
    names that are not dot-names). Missing repository -> empty scan.

    A model is a directory whose name follows :func:`server.contract.is_model_name`.
    Raises ModelLoadError when the repository exists but cannot be listed.
    """
    root = Path(root)
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return Scan([], [], [])
    except OSError as exc:
        raise ModelLoadError(f"cannot list {root}: {exc.strerror or exc}") from exc
    models, ignored = [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        # Not is_dir(): a model directory that cannot be read (a broken volume, a symlink
        # loop) is still that model, and says why when its versions are listed.
        if is_model_name(entry.name) and not entry.is_file():
            models.append(entry.name)
        else:
            ignored.append(entry.name)
    return Scan([], sorted(ignored), sorted(models))


def config_path(root: Path, model: str) -> Path:
    return model_dir(root, model) / CONFIG_FILE


def list_versions(root: Path, model: str = MODEL_NAME) -> list[int]:
    """Published version numbers, ascending. Missing repository -> empty list."""
    return scan_versions(root, model).versions


def latest_version(root: Path, model: str = MODEL_NAME) -> int | None:
    versions = list_versions(root, model)
    return versions[-1] if versions else None


def version_fingerprint(root: Path, version: int, model: str = MODEL_NAME) -> tuple[int, ...]:
    """Sizes and mtimes of a version's files: changes when the files change."""
    path = model_dir(root, model) / str(version)
    out: list[int] = []
    for name in (MODEL_FILE, METADATA_FILE):
        try:
            st = (path / name).stat()
            out += [st.st_size, st.st_mtime_ns]
        except OSError:
            out += [-1, -1]
    return tuple(out)


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_version(
    root: Path, version: int, model: str = MODEL_NAME, *, variant: str = FLOAT_VARIANT
) -> ModelVersion:
    """Read and check one version: metadata present and parseable, checksum matches.

    Raises VersionNotFound when the directory does not exist and ModelLoadError
    when it exists but is incomplete, corrupt, or lacks the requested variant.
    """
    path = model_dir(root, model) / str(version)
    if not path.is_dir():
        raise VersionNotFound(f"model {model!r} has no version {version} in {Path(root)}")
    meta_path = path / METADATA_FILE
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"version {version}: {meta_path} is missing") from exc
    except (OSError, ValueError, RecursionError) as exc:
        # RecursionError: a deeply nested document ([[[[...]]]]) is not valid metadata either.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ModelLoadError(f"version {version}: {meta_path} is unreadable: {reason}") from exc
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"version {version}: {meta_path} is not a JSON object")
    recorded = metadata.get("version")
    if type(recorded) is not int or recorded != version:
        # A copied or symlinked directory would otherwise serve one model under two numbers.
        raise ModelLoadError(
            f"version {version}: {meta_path} records version {recorded!r}; a version is "
            "served only under the number it was published as"
        )
    file_name, expected = _variant_file(metadata, version, variant)
    model_path = path / file_name
    if not model_path.is_file():
        raise ModelLoadError(f"version {version}: {model_path} is missing")
    actual = sha256_file(model_path)
    if actual != expected:
        raise ModelLoadError(
            f"version {version}: sha256 of {model_path} is {actual}, metadata.json says {expected}"
        )
    return ModelVersion(version, path, metadata, variant, file_name, actual, model)


def _variant_file(metadata: dict[str, Any], version: int, variant: str) -> tuple[str, str]:
    """(file name, expected sha256) of ``variant`` as metadata.json describes it."""
    if variant == FLOAT_VARIANT:
        expected = metadata.get("model_sha256")
        if not isinstance(expected, str):
            raise ModelLoadError(f"version {version}: metadata.json has no model_sha256")
        return MODEL_FILE, expected
    entry = (metadata.get("variants") or {}).get(variant)
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("file"), str)
        or not isinstance(entry.get("sha256"), str)
    ):
        available = [FLOAT_VARIANT, *sorted(metadata.get("variants") or {})]
        raise ModelLoadError(
            f"version {version} has no {variant!r} model (available: {', '.join(available)})"
        )
    name = Path(entry["file"]).name  # never a path outside the version directory
    return name, entry["sha256"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging_dir(root: Path, model: str = MODEL_NAME) -> Iterator[Path]:
    """A private temporary directory on the repository's filesystem.

    Removed on any exception (including KeyboardInterrupt). A ``kill -9`` can
    leave it behind, but its dotted name means no reader ever takes it for a version.
    """
    directory = model_dir(root, model)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_version(
    staged: Path,
    root: Path,
    *,
    write_metadata: Any,
    model: str = MODEL_NAME,
    max_attempts: int = 100,
) -> int:
    """Atomically turn ``staged`` into the next version number and return it.

    ``write_metadata(staged_dir, version)`` is called for each attempted number
    so the metadata records the version it is published under. Files are fsynced,
    then the directory is renamed; a rename onto an existing version fails
    (ENOTEMPTY/EEXIST), so two concurrent publishers never collide: the loser
    retries with the next number.
    """
    directory = model_dir(root, model)
    for _ in range(max_attempts):
        version = (latest_version(root, model) or 0) + 1
        write_metadata(staged, version)
        for file in staged.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(staged)
        target = directory / str(version)
        try:
            os.rename(staged, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue
            raise
        fsync_dir(directory)
        return version
    raise ModelLoadError(f"could not allocate a version number in {directory}")
