"""The model repository as the model manager sees it: what each look finds, and its index.

Blocking (directory listings, small file reads): called from threads, except the index,
which answers a request about the repository. It remembers, per model, the versions it
refused (with their files' fingerprints, so a version is not retried until its files
change), the last problem that kept the model from serving as asked, and the names it
already reported as "not a version / not a model" (each is logged once).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.config import EXPLICIT
from server.config_store import read_config
from server.errors import ModelLoadError
from server.repository import (
    model_dir,
    scan_models,
    scan_versions,
    version_fingerprint,
)
from server.routing import Route
from server.serving_config import ServingConfig, parse_config, pinned

logger = logging.getLogger("server.manager")


@dataclass
class ModelRecord:
    """The control plane's memory of one model directory (never read by requests)."""

    name: str
    refused: dict[int, tuple[int, ...]] = field(default_factory=dict)  # version -> files
    problem: str = ""  # why the model, or its latest change, is not served as asked
    # What a poll found when it refused the model's change (config, versions and their
    # files, refused versions): while the repository stays so, the next polls change
    # nothing and load nothing (the refusal was for the labels, not for a version).
    held_back: tuple[object, ...] | None = None
    reported_names: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a model version on disk (or loaded) and its state."""

    model: str
    version: int | None  # None: the model has no version on disk
    state: str  # READY or UNAVAILABLE
    reason: str


class RepositoryView:
    def __init__(self, repo: Path, *, mode: str, pinned_version: int) -> None:
        self.repo = repo
        self.mode = mode
        self.pinned_version = pinned_version
        self.records: dict[str, ModelRecord] = {}
        self._reported_models: set[str] = set()

    def read_config(self, record: ModelRecord, config_text: str | None) -> ServingConfig:
        if self.pinned_version:
            return pinned(self.pinned_version)
        if config_text is not None:
            return parse_config(config_text, f"the load request's config for {record.name!r}")
        return read_config(self.repo, record.name)

    def scan_versions(self, record: ModelRecord) -> list[int]:
        scan = scan_versions(self.repo, record.name)
        for name in sorted(set(scan.ignored) - record.reported_names):
            logger.warning(
                "ignoring %r in %s: not a version (a version is a directory named by an "
                "ASCII number from 1 to 2^63-1, without leading zeros)",
                name,
                model_dir(self.repo, record.name),
            )
        record.reported_names = set(scan.ignored)  # one that comes back is reported again
        # A refused version that was deleted is no longer refused (index, errors); one whose
        # files changed since is tried again.
        record.refused = {
            v: f
            for v, f in record.refused.items()
            if v in scan.versions and version_fingerprint(self.repo, v, record.name) == f
        }
        return scan.versions

    def scan_models(self) -> list[str]:
        scan = scan_models(self.repo)
        for name in sorted(set(scan.ignored) - self._reported_models):
            logger.warning(
                "ignoring %r in %s: not a model directory (a model is a directory named by "
                "1-64 ASCII letters, digits, '_', '.', '-', starting with a letter or digit)",
                name,
                self.repo,
            )
        self._reported_models = set(scan.ignored)
        return scan.models

    def models_on_disk(self) -> list[str]:
        """The repository's model directories now (none when it cannot be listed)."""
        try:
            return scan_models(self.repo).models
        except ModelLoadError:
            return []

    def versions_on_disk(self, name: str) -> list[int]:
        try:
            return scan_versions(self.repo, name).versions
        except ModelLoadError:
            return []

    def relative(self, message: str) -> str:
        """A control-plane message without the repository's absolute path."""
        return message.replace(f"{self.repo.resolve()}/", "").replace(f"{self.repo}/", "")

    def problems(self) -> dict[str, str]:
        """Models that are not served as asked, and why."""
        return {name: r.problem for name, r in self.records.items() if r.problem}

    def export_records(self) -> dict[str, dict[str, Any]]:
        """What :meth:`adopt_records` takes (JSON-able): per model, the versions refused
        (with their files' fingerprints) and the problem."""
        return {
            name: {
                "refused": {str(v): list(files) for v, files in sorted(r.refused.items())},
                "problem": r.problem,
            }
            for name, r in sorted(self.records.items())
            if r.refused or r.problem
        }

    def adopt_records(self, records: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Remember what a peer remembers (a worker joining its peers); the names of the
        models not known here before.

        Without it a restarted worker's index, errors and next poll knew nothing of the
        versions its peers had refused: "not loaded yet" where they said "refused", and
        the refusal logged and counted again at its next poll.
        """
        new = []
        for name, record in records.items():
            if name not in self.records:
                self.records[name] = ModelRecord(name)
                new.append(name)
            mine = self.records[name]
            mine.refused = {int(v): tuple(files) for v, files in record["refused"].items()}
            mine.problem = str(record["problem"])
        return new

    def refused_versions(self, name: str) -> list[int]:
        record = self.records.get(name)
        return sorted(record.refused) if record else []

    def index(self, routes: Mapping[str, Route], *, ready: bool) -> list[IndexEntry]:
        """Every model and version on disk or loaded, with its state (blocking: lists dirs).

        ``ready``: the server's readiness (a loaded version is READY only while it is).
        """
        names = sorted({*self.models_on_disk(), *routes})
        entries: list[IndexEntry] = []
        for name in names:
            route = routes.get(name)
            record = self.records.get(name)
            loaded = route.versions if route else {}
            on_disk = self.versions_on_disk(name)
            versions = sorted({*on_disk, *loaded})
            if not versions:
                entries.append(IndexEntry(name, None, "UNAVAILABLE", NO_VERSION))
            for version in versions:
                entries.append(self._entry(name, version, route, record, ready))
        return entries

    def _entry(
        self, name: str, version: int, route: Route | None, record: ModelRecord | None, ready: bool
    ) -> IndexEntry:
        if route is not None and version in route.versions:
            if ready:
                return IndexEntry(name, version, "READY", "")
            return IndexEntry(
                name, version, "UNAVAILABLE", "the server is not ready (starting or shutting down)"
            )
        if record is not None and version in record.refused:
            reason = "refused: it failed to load or verify (see the log)"
        elif route is None and self.mode == EXPLICIT:
            reason = "not loaded (--model-control-mode explicit: load it through the API)"
        elif route is None and record is not None and record.problem:
            reason = f"not served: {self.relative(record.problem)}"
        elif route is None:
            reason = "not loaded yet: published since the last check"
        elif self.pinned_version:
            reason = f"not served: the server is pinned to version {self.pinned_version}"
        elif version in route.config.policy.choose([*route.version_numbers, version]):
            # One the policy would serve: why it is not (yet) served.
            if record is not None and record.problem:  # the model's last change was refused
                reason = f"not served: {self.relative(record.problem)}"
            elif self.mode == EXPLICIT:
                reason = (
                    "not loaded: published since the model was loaded "
                    "(--model-control-mode explicit: load the model again through the API)"
                )
            else:
                reason = "not loaded yet: published since the last check"
        else:
            policy = route.config.policy.describe()
            reason = f"not served: version policy {policy} serves {route.describe()}"
        return IndexEntry(name, version, "UNAVAILABLE", reason)


NO_VERSION = "no version in the repository"


def nothing_chosen(on_disk: list[int], refused: list[int], config: ServingConfig) -> str:
    """Why a model has no version to serve, in words for the log and the index."""
    if not on_disk:
        return NO_VERSION
    if set(on_disk) <= set(refused):
        return f"refused {', '.join(map(str, refused))} (reasons logged above)"
    return (
        f"version policy {config.policy.describe()} selects none of the versions on disk "
        f"({', '.join(map(str, on_disk))}; refused: {', '.join(map(str, refused)) or 'none'})"
    )
