"""Model repository reading: versions, checksums, variants, temporary directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.errors import ModelLoadError, VersionNotFound
from server.repository import latest_version, list_versions, read_version, sha256_file


def make_version(root: Path, version: int, variants: dict | None = None) -> Path:
    path = root / "fashion" / str(version)
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"float model")
    meta = {"version": version, "model_sha256": sha256_file(path / "model.onnx")}
    if variants is not None:
        meta["variants"] = variants
    (path / "metadata.json").write_text(json.dumps(meta))
    return path


def test_only_positive_integer_directories_are_versions(tmp_path) -> None:
    make_version(tmp_path, 2)
    make_version(tmp_path, 10)
    for name in (".tmp-abc", "03", "0", "latest"):
        (tmp_path / "fashion" / name).mkdir()
    (tmp_path / "fashion" / "7").write_text("a file, not a directory")
    assert list_versions(tmp_path) == [2, 10]
    assert latest_version(tmp_path) == 10
    assert list_versions(tmp_path / "missing") == []


def test_checksum_mismatch_is_refused(tmp_path) -> None:
    path = make_version(tmp_path, 1)
    (path / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelLoadError, match=r"sha256 of .* metadata\.json says"):
        read_version(tmp_path, 1)
    with pytest.raises(VersionNotFound, match="no version 2"):
        read_version(tmp_path, 2)


def test_int8_variant_is_read_and_checked(tmp_path) -> None:
    path = make_version(tmp_path, 1)
    (path / "model.int8.onnx").write_bytes(b"int8 model")
    meta = json.loads((path / "metadata.json").read_text())
    meta["variants"] = {
        "int8": {"file": "model.int8.onnx", "sha256": sha256_file(path / "model.int8.onnx")}
    }
    (path / "metadata.json").write_text(json.dumps(meta))
    version = read_version(tmp_path, 1, variant="int8")
    assert version.model_path == path / "model.int8.onnx" and version.variant == "int8"
    assert read_version(tmp_path, 1).model_path == path / "model.onnx"


def test_missing_variant_names_what_exists(tmp_path) -> None:
    make_version(tmp_path, 1)
    with pytest.raises(ModelLoadError, match=r"no 'int8' model \(available: float\)"):
        read_version(tmp_path, 1, variant="int8")


def test_variant_file_cannot_escape_the_version_directory(tmp_path) -> None:
    (tmp_path / "secret.onnx").write_bytes(b"x")
    make_version(
        tmp_path,
        1,
        variants={
            "int8": {"file": "../../secret.onnx", "sha256": sha256_file(tmp_path / "secret.onnx")}
        },
    )
    with pytest.raises(ModelLoadError, match=r"secret\.onnx is missing"):
        read_version(tmp_path, 1, variant="int8")
