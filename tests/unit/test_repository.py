"""Model repository reading: versions, checksums, variants, temporary directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.errors import ModelLoadError, VersionNotFound
from server.repository import (
    MAX_VERSION,
    latest_version,
    list_versions,
    parse_version_number,
    read_version,
    scan_versions,
    sha256_file,
)


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


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("1", 1),
        ("42", 42),
        (str(MAX_VERSION), MAX_VERSION),
        (str(MAX_VERSION + 1), None),  # beyond int64: protobuf raises "Value out of range"
        ("99999999999999999999", None),
        ("9" * 5000, None),  # int() would refuse it only after 4,300 digits of work
        ("0", None),
        ("01", None),
        ("", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1_0", None),
        ("\u00b2", None),  # superscript two: isdigit() is True, int() raises
        ("\u2460", None),  # circled one
        ("\u0661", None),  # Arabic-Indic one: int() reads it as 1
        ("\uff11", None),  # full-width one: int() reads it as 1
        ("1\u0661", None),
    ],
)
def test_version_numbers_are_ascii_digits_within_int64(text, number) -> None:
    assert parse_version_number(text) == number


def test_names_that_are_not_versions_are_reported_not_taken(tmp_path) -> None:
    make_version(tmp_path, 3)
    for name in ("99999999999999999999", "\u00b2", "\uff15", "01", ".tmp-x", ".hidden"):
        (tmp_path / "fashion" / name).mkdir()
    scan = scan_versions(tmp_path)
    assert scan.versions == [3]
    # Dot names (an export in progress) are expected; the others are worth one log line.
    assert sorted(scan.ignored) == sorted(["99999999999999999999", "\u00b2", "\uff15", "01"])


def test_a_version_is_served_only_under_the_number_it_was_published_as(tmp_path) -> None:
    make_version(tmp_path, 1)
    (tmp_path / "fashion" / "5").symlink_to(tmp_path / "fashion" / "1")
    assert list_versions(tmp_path) == [1, 5]
    with pytest.raises(ModelLoadError, match=r"version 5: .* records version 1; a version is"):
        read_version(tmp_path, 5)
    meta_path = tmp_path / "fashion" / "1" / "metadata.json"
    for recorded in (None, "1", True, 1.0):
        meta = json.loads(meta_path.read_text())
        meta["version"] = recorded
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(ModelLoadError, match="records version"):
            read_version(tmp_path, 1)


def test_deeply_nested_metadata_is_a_load_error(tmp_path) -> None:
    path = make_version(tmp_path, 1)
    (path / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError, match="unreadable: nested too deeply"):
        read_version(tmp_path, 1)


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


def test_an_unlistable_repository_is_a_load_error(tmp_path) -> None:
    # A symbolic-link loop fails to list for every user (permissions would not stop root).
    (tmp_path / "fashion").symlink_to(tmp_path / "fashion")
    with pytest.raises(ModelLoadError, match=r"cannot list .*fashion: Too many levels"):
        scan_versions(tmp_path)
