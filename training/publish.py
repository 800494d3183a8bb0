"""Atomic publication of one model version through server.repository.

The model file is written into a private staging directory on the repository's
filesystem; metadata.json is written for the version number being attempted, then
server.repository fsyncs and renames. A crash or Ctrl-C before the rename leaves no
version; two publishers at once get different numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.config_store import check_servable_among, read_config, servable_versions, update
from server.contract import METADATA_FILE, MODEL_FILE, MODEL_NAME
from server.repository import (
    model_dir,
    publish_version,
    scan_versions,
    sha256_file,
    staging_dir,
)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def publish_model(
    root: Path,
    write_model: Callable[[Path], None],
    make_metadata: Callable[[int, str], dict[str, Any]],
    *,
    write_extras: Callable[[Path], None] | None = None,
    model: str = MODEL_NAME,
) -> tuple[int, Path]:
    """Stage ``model.onnx`` via ``write_model(path)`` and publish it as the next version.

    ``write_extras(staged_dir)`` adds other files (an INT8 variant, the training report)
    to the staged directory, so they appear atomically with the version.

    ``make_metadata(version, model_sha256)`` returns metadata.json's content; it may be
    called more than once if another publisher takes a number first.
    Returns the version number and its directory.
    """
    root = Path(root)
    with staging_dir(root, model) as staged:
        model_path = staged / MODEL_FILE
        write_model(model_path)
        digest = sha256_file(model_path)
        if write_extras is not None:
            write_extras(staged)

        def write_metadata(directory: Path, version: int) -> None:
            write_json(directory / METADATA_FILE, make_metadata(version, digest))

        version = publish_version(staged, root, write_metadata=write_metadata, model=model)
    return version, model_dir(root, model) / str(version)


def check_label_plan(root: Path, model: str, label: str) -> None:
    """Before training: would ``label`` on the version about to be published be served?

    ConfigRefused, saying why, when the model's config.json is invalid or the label (or
    another label, once a newer version arrives) would point outside the version policy:
    better refused now than after an hour of training.
    """
    config = read_config(root, model)
    versions = servable_versions(root, model)
    upcoming = max(scan_versions(root, model).versions, default=0) + 1
    planned = config.with_label(label, upcoming)
    check_servable_among(planned, [*versions.numbers, upcoming], versions.broken, model)


def label_version(root: Path, model: str, label: str, version: int) -> None:
    """Point ``label`` at the just-published ``version`` (server.config_store: locked,
    checked, atomic)."""
    update(root, model, lambda config: config.with_label(label, version))
