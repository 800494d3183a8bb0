"""A model's serving configuration: ``<repo>/<model>/config.json`` — version policy and labels.

```json
{"version_policy": {"latest": 2}, "labels": {"stable": 3, "canary": 4}}
```

* ``version_policy``: which published versions are loaded — ``{"latest": N}`` (the N
  newest valid versions; the default is ``{"latest": 1}``), ``{"all": true}``, or
  ``{"specific": [3, 4]}``.
* ``labels``: names for versions (TF Serving's ``version_labels``), e.g. ``stable`` and
  ``canary``; a label must point at a version the policy loads, and is refused
  otherwise when the configuration is loaded, never at request time.
* The model's default version (what a request that names none gets) is the one
  labelled ``stable`` when there is such a label, else the newest loaded version.

Pure: parsing and the policy's arithmetic. Anything unknown or malformed is a
:class:`ConfigRefused` naming the field, so a typo is never silently ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.errors import ModelLoadError
from server.repository import MAX_VERSION

STABLE = "stable"
# Labels are names, never numbers (a label "3" would shadow version 3).
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_KEYS = frozenset({"version_policy", "labels"})
MAX_CONFIG_BYTES = 64 * 1024


class ConfigRefused(ModelLoadError):
    """A model's config.json (or a load request's config) is malformed or inconsistent."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions to load: ``latest`` N, ``all``, or ``specific`` ones."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    latest: int = 1
    specific: tuple[int, ...] = ()

    def choose(self, valid: Sequence[int]) -> list[int]:
        """The versions to serve among ``valid`` (ascending, loadable), ascending."""
        if self.kind == "all":
            return sorted(valid)
        if self.kind == "specific":
            return sorted(v for v in valid if v in self.specific)
        return sorted(valid)[-self.latest :]

    def describe(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "specific":
            return f"specific {list(self.specific)}"
        return f"latest {self.latest}"


@dataclass(frozen=True)
class ServingConfig:
    """A model's parsed config.json; the default one when the file is absent."""

    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: Mapping[str, int] = field(default_factory=dict)

    def check_labels(self, loaded: Sequence[int]) -> None:
        """Every label points at a version in ``loaded``; ConfigRefused otherwise."""
        missing = {name: v for name, v in self.labels.items() if v not in loaded}
        if missing:
            listed = ", ".join(f"{name!r} -> {v}" for name, v in sorted(missing.items()))
            raise ConfigRefused(
                f"labels {listed} point at versions that are not loaded (loaded under "
                f"version policy {self.policy.describe()}: {list(loaded) or 'none'})"
            )

    def to_state(self) -> dict[str, Any]:
        """A JSON-able form (workers compare and send it; :meth:`from_state` reads it)."""
        policy = self.policy
        return {
            "policy": {
                "kind": policy.kind,
                "latest": policy.latest,
                "specific": list(policy.specific),
            },
            "labels": dict(sorted(self.labels.items())),
        }

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> ServingConfig:
        policy = state["policy"]
        return ServingConfig(
            VersionPolicy(policy["kind"], int(policy["latest"]), tuple(policy["specific"])),
            {str(k): int(v) for k, v in state["labels"].items()},
        )

    def default_version(self, loaded: Sequence[int]) -> int | None:
        """The ``stable`` label's version when set, else the newest of ``loaded``."""
        if STABLE in self.labels:
            return self.labels[STABLE]
        return max(loaded) if loaded else None


def parse_config(text: str | bytes, where: str) -> ServingConfig:
    """config.json's text -> ServingConfig; ConfigRefused naming ``where`` and the field."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigRefused(f"{where}: {len(text)} bytes; a config is at most {MAX_CONFIG_BYTES}")
    try:
        document = json.loads(text)
    except RecursionError:
        raise ConfigRefused(f"{where} is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ConfigRefused(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigRefused(f"{where} must be a JSON object")
    unknown = sorted(k for k in document if k not in _KEYS)
    if unknown:
        raise ConfigRefused(f"{where}: unknown fields {unknown}; expected {sorted(_KEYS)}")
    policy = _policy(document.get("version_policy", {"latest": 1}), where)
    labels = _labels(document.get("labels", {}), where)
    if policy.kind == "specific":
        outside = sorted(name for name, v in labels.items() if v not in policy.specific)
        if outside:
            raise ConfigRefused(
                f"{where}: labels {outside} point at versions outside version_policy "
                f"specific {list(policy.specific)}"
            )
    return ServingConfig(policy, labels)


def _version(value: Any) -> bool:
    return type(value) is int and 1 <= value <= MAX_VERSION


def _policy(value: Any, where: str) -> VersionPolicy:
    usage = '{"latest": N}, {"all": true} or {"specific": [versions]}'
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigRefused(f"{where}: version_policy must be one of {usage}")
    ((kind, argument),) = value.items()
    if kind == "latest":
        if type(argument) is not int or not 1 <= argument <= 1000:
            raise ConfigRefused(f"{where}: version_policy latest must be an integer in 1..1000")
        return VersionPolicy("latest", latest=argument)
    if kind == "all":
        if argument is not True:
            raise ConfigRefused(f'{where}: version_policy all is written {{"all": true}}')
        return VersionPolicy("all")
    if kind == "specific":
        if (
            not isinstance(argument, list)
            or not argument
            or not all(_version(v) for v in argument)
            or len(set(argument)) != len(argument)
        ):
            raise ConfigRefused(
                f"{where}: version_policy specific must be a non-empty list of distinct "
                "version numbers"
            )
        return VersionPolicy("specific", specific=tuple(sorted(argument)))
    raise ConfigRefused(f"{where}: unknown version_policy {kind!r}; use {usage}")


def _labels(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ConfigRefused(f'{where}: labels must be an object, e.g. {{"stable": 3}}')
    if len(value) > 64:
        raise ConfigRefused(f"{where}: {len(value)} labels; at most 64")
    for name, version in value.items():
        if not _LABEL.fullmatch(name):
            raise ConfigRefused(
                f"{where}: label {name[:64]!r} is not a name (a letter, then up to 63 "
                "letters, digits, '_', '.', '-')"
            )
        if not _version(version):
            raise ConfigRefused(f"{where}: label {name!r} must name a version number")
    return dict(value)


def pinned(version: int) -> ServingConfig:
    """The configuration ``--model-version N`` imposes: version N only, no labels."""
    return ServingConfig(VersionPolicy("specific", specific=(version,)))
