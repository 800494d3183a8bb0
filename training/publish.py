"""Atomic publication of one model version through server.repository.

The model file is written into a private staging directory on the repository's
filesystem; metadata.json is written for the version number being attempted, then
server.repository fsyncs and renames. A crash or Ctrl-C before the rename leaves no
version; two publishers at once get different numbers. The rename (and the label
``--label`` sets) happens under the model's config lock, after checking that the
model's config.json will still be served with the new version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.config_store import (
    check_servable_among,
    config_lock,
    read_config,
    servable_versions,
    update_locked,
)
from server.contract import METADATA_FILE, MODEL_FILE, MODEL_NAME
from server.errors import ModelLoadError
from server.repository import (
    model_dir,
    publish_version,
    scan_versions,
    sha256_file,
    staging_dir,
)
from server.serving_config import ConfigRefused


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


class PublishRefused(ModelLoadError):
    """Nothing was published: the model's config.json would not be served with the new
    version (a label pushed out of the version policy, or the file invalid)."""


class PublishedUnlabelled(ModelLoadError):
    """The version was published, but its label could not be set."""

    def __init__(self, version: int, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.version = version
        self.path = path


def publish_model(
    root: Path,
    write_model: Callable[[Path], None],
    make_metadata: Callable[[int, str], dict[str, Any]],
    *,
    write_extras: Callable[[Path], None] | None = None,
    model: str = MODEL_NAME,
    label: str | None = None,
) -> tuple[int, Path]:
    """Stage ``model.onnx`` via ``write_model(path)`` and publish it as the next version.

    ``write_extras(staged_dir)`` adds other files (an INT8 variant, the training report)
    to the staged directory, so they appear atomically with the version.

    ``make_metadata(version, model_sha256)`` returns metadata.json's content; it may be
    called more than once if another publisher takes a number first.

    The rename happens under the model's config lock (server.config_store), after
    checking that its config.json, with ``label`` pointed at the new version, is served
    with it: a version that would push a label out of the version policy is refused
    (:class:`PublishRefused`, nothing published), since a server starting on that
    repository would refuse the model. ``label`` is written under the same lock, so no
    config change comes between the check, the rename and the label.
    Returns the version number and its directory; :class:`PublishedUnlabelled` when the
    label could not be set after all (another publisher, one that does not take the
    lock, took the version number checked).
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

        with config_lock(root, model):
            try:
                check_publish_plan(root, model, label)
            except ConfigRefused as exc:
                raise PublishRefused(str(exc)) from None
            version = publish_version(staged, root, write_metadata=write_metadata, model=model)
            path = model_dir(root, model) / str(version)
            if label:
                try:
                    update_locked(root, model, lambda config: config.with_label(label, version))
                except ModelLoadError as exc:
                    raise PublishedUnlabelled(version, path, str(exc)) from None
    return version, path


def check_writable(root: Path, model: str) -> None:
    """PublishRefused when the model's directory (or the nearest existing folder it would
    be made in) cannot be written: a read-only volume found before training, not after."""
    directory = model_dir(root, model)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == directory else f" (to create {directory})"
        raise PublishRefused(f"cannot write to {existing}{where}: a new version is published there")


def check_publish_plan(root: Path, model: str, label: str | None) -> None:
    """Would the model's config be served with the version about to be published (and
    ``label`` on it)? Checked before training and again when publishing.

    ConfigRefused, saying why, when the model's config.json is invalid or a label (``label``,
    or another one, once a newer version arrives) would point outside the version policy:
    better refused before an hour of training.
    """
    config = read_config(root, model)
    versions = servable_versions(root, model)
    upcoming = max(scan_versions(root, model).versions, default=0) + 1
    planned = config.with_label(label, upcoming) if label else config
    check_servable_among(planned, [*versions.numbers, upcoming], versions.broken, model)
