"""Changing a model's config.json on disk: one writer at a time, checked, atomic.

What ``fashion-repo`` and ``fashion-train --label`` write goes through :func:`update`:

1. an exclusive lock (``flock`` on ``<model>/.config.lock``), so two writers never lose
   each other's change (a label set by training while an operator promotes);
2. the current file read and parsed with the server's own rules (a file the server
   would refuse is refused here too: it is fixed by hand, never silently replaced);
3. the change applied (a pure edit of :class:`server.serving_config.ServingConfig`), then
   checked as the server will check it: the text parses back to the same config, and
   every label names a version the policy serves among the versions whose files are
   complete and intact (:func:`servable_versions`);
4. written to a temporary file beside it, fsynced, renamed over config.json, and the
   directory fsynced: a reader (the server's poll) sees the old file or the new one.

A version whose files are intact may still be refused by onnxruntime when the server
loads it; only the server knows that, and then it keeps serving what it served.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from server.errors import ModelLoadError
from server.repository import (
    ModelVersion,
    config_path,
    fsync_dir,
    model_dir,
    read_version,
    scan_models,
    scan_versions,
)
from server.serving_config import ConfigRefused, ServingConfig, parse_config

LOCK_FILE = ".config.lock"  # a dot name: never taken for a version or a model


@dataclass(frozen=True)
class Versions:
    """A model's published versions: the intact ones and why the others are not."""

    intact: dict[int, ModelVersion]
    broken: dict[int, str]

    @property
    def numbers(self) -> list[int]:
        return sorted(self.intact)


def servable_versions(root: Path, model: str) -> Versions:
    """Every published version of ``model``, its files checked (metadata and checksum)."""
    intact: dict[int, ModelVersion] = {}
    broken: dict[int, str] = {}
    for number in scan_versions(root, model).versions:
        try:
            intact[number] = read_version(root, number, model)
        except ModelLoadError as exc:
            broken[number] = str(exc)
    return Versions(intact, broken)


def check_model(root: Path, model: str) -> None:
    """ConfigRefused naming the models there are when ``model`` is not one of them."""
    models = scan_models(root).models
    if model not in models:
        raise ConfigRefused(f"no model {model!r} in {root} (models: {', '.join(models) or 'none'})")


def read_config(root: Path, model: str) -> ServingConfig:
    """The model's config as the server reads it (the default one when there is no file)."""
    path = config_path(root, model)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return ServingConfig()
    except OSError as exc:
        raise ConfigRefused(f"{path} is unreadable: {exc.strerror or exc}") from None
    return parse_config(text, str(path))


def check_servable(config: ServingConfig, versions: Versions, model: str) -> list[int]:
    """The versions ``config`` would serve; ConfigRefused (saying what to do) when a label
    names a version that is not published, not intact, or outside the policy."""
    return check_servable_among(config, versions.numbers, versions.broken, model)


def check_servable_among(
    config: ServingConfig, intact: Sequence[int], broken: Mapping[int, str], model: str
) -> list[int]:
    """:func:`check_servable` for the ``intact`` version numbers given (e.g. with a version
    about to be published)."""
    numbers = sorted(intact)
    served = config.policy.choose(numbers)
    for label, version in sorted(config.labels.items()):
        if version in served:
            continue
        if version in broken:
            reason = f"its files are broken: {broken[version]}"
        elif version not in numbers:
            published = ", ".join(map(str, numbers)) or "none"
            reason = f"model {model!r} has no version {version} (intact versions: {published})"
        else:
            wider = _widened(config, version, numbers)
            reason = (
                f"version policy {config.policy.describe()} serves {served or 'none'}; "
                f"widen it first: `fashion-repo policy {model} {wider}`"
            )
        raise ConfigRefused(f"label {label!r} -> {version}: {reason}")
    if not served:
        raise ConfigRefused(
            f"version policy {config.policy.describe()} serves no version of {model!r} "
            f"(intact versions: {numbers or 'none'})"
        )
    return served


def _widened(config: ServingConfig, version: int, numbers: Sequence[int]) -> str:
    """A policy (command-line form) that serves ``version`` as well as what ``config`` does."""
    policy = config.policy
    if policy.kind == "specific":
        return "specific:" + ",".join(map(str, sorted({*policy.specific, version})))
    # The smallest "latest" N that reaches back to ``version``.
    return f"latest:{len([v for v in numbers if v >= version])}"


@contextlib.contextmanager
def config_lock(root: Path, model: str) -> Iterator[None]:
    """The model's config lock, held for a change of its config.json and for a publish
    (training.publish): either sees what the other wrote. Not reentrant; the model's
    directory must exist."""
    with open(model_dir(root, model) / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update(
    root: Path, model: str, change: Callable[[ServingConfig], ServingConfig]
) -> tuple[ServingConfig, ServingConfig]:
    """Apply ``change`` to ``model``'s config.json under the lock, checked and atomically.

    Returns (before, after). ConfigRefused, with nothing written, when the model does not
    exist, the current file is invalid, or the result would not be served as written.
    """
    root = Path(root)
    check_model(root, model)
    with config_lock(root, model):
        return update_locked(root, model, change)


def update_locked(
    root: Path, model: str, change: Callable[[ServingConfig], ServingConfig]
) -> tuple[ServingConfig, ServingConfig]:
    """:func:`update` for a caller that holds :func:`config_lock` already."""
    before = read_config(root, model)
    after = change(before)
    path = config_path(root, model)
    text = json.dumps(after.to_json(), indent=2) + "\n"
    if parse_config(text, str(path)) != after:  # what the server will read back
        raise ConfigRefused(f"{path}: the change does not survive a round trip: {text}")
    check_servable(after, servable_versions(root, model), model)
    _write_atomically(path, text.encode())
    return before, after


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
