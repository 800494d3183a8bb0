"""The routing table: which versions of which models answer requests now. The hot path.

A :class:`Route` per model is immutable and replaced whole when the model changes
(the control plane builds the new one, then swaps a dict entry on the event loop),
so :func:`resolve` reads one consistent state without a lock: a request resolved
before a swap holds its version (:meth:`ServedVersion.enter`) until it is answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import VersionNotFound
from server.served import ServedVersion
from server.serving_config import ServingConfig
from server.target import Target, version_number
from server.tensor import shown


@dataclass(frozen=True)
class Route:
    """What one model serves: its loaded versions, its labels and its default version."""

    name: str
    versions: Mapping[int, ServedVersion]
    labels: Mapping[str, int]
    default: int
    config: ServingConfig

    @property
    def version_numbers(self) -> list[int]:
        return sorted(self.versions)

    def state(self) -> dict[str, Any]:
        """What this route serves, JSON-able and comparable between processes: each version
        with its files' fingerprint, the labels, the default and the config."""
        return {
            "versions": {str(v): list(s.fingerprint) for v, s in sorted(self.versions.items())},
            "labels": dict(sorted(self.labels.items())),
            "default": self.default,
            "config": self.config.to_state(),
        }

    def describe(self) -> str:
        """For messages: ``versions 3, 4 (stable -> 3, canary -> 4)``."""
        listed = ", ".join(map(str, self.version_numbers))
        labels = ", ".join(f"{name} -> {v}" for name, v in sorted(self.labels.items()))
        return f"version{'s' if len(self.versions) > 1 else ''} {listed}" + (
            f" ({labels})" if labels else ""
        )


def resolve(
    routes: Mapping[str, Route], target: Target, *, on_disk: Mapping[str, list[int]] | None = None
) -> ServedVersion:
    """The version ``target`` asks for: by label, by number, or the model's default.

    NOT_FOUND names what is served instead. ``on_disk`` (model -> versions), when
    given, lets the message say that a version exists but is not loaded.
    """
    route = routes.get(target.model)
    if route is None:
        names = ", ".join(repr(name) for name in sorted(routes)) or "no model"
        raise VersionNotFound(f"unknown model {shown(target.model)}; this server serves {names}")
    if target.label:
        number = route.labels.get(target.label)
        if number is None:
            labels = ", ".join(sorted(route.labels)) or "none"
            raise VersionNotFound(
                f"model {route.name!r} has no label {shown(target.label)} (labels: {labels})"
            )
        return route.versions[number]
    number = version_number(route.name, target.version)
    if not number:
        return route.versions[route.default]
    served = route.versions.get(number)
    if served is None:
        exists = on_disk is not None and number in on_disk.get(route.name, ())
        where = "exists in the repository but is not" if exists else "is not"
        raise VersionNotFound(
            f"model {route.name!r} version {number} {where} served; it serves "
            f"{route.describe()} (name none for the default, version {route.default})"
        )
    return served
