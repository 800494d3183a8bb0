"""A model's serving configuration: ``<repo>/<model>/config.json`` — version policy and labels.

```json
{"version_policy": {"latest": 2}, "labels": {"stable": 3, "canary": 4}, "stable_history": [2]}
```

* ``version_policy``: which published versions are loaded — ``{"latest": N}`` (the N
  newest valid versions; the default is ``{"latest": 1}``), ``{"all": true}``, or
  ``{"specific": [3, 4]}``.
* ``labels``: names for versions (TF Serving's ``version_labels``), e.g. ``stable`` and
  ``canary``; a label must point at a version the policy loads, and is refused
  otherwise when the configuration is loaded, never at request time.
* The model's default version (what a request that names none gets) is the one
  labelled ``stable`` when there is such a label, else the newest loaded version.
* ``stable_history``: the versions that were ``stable`` before, oldest first (at most
  :data:`MAX_HISTORY`): what ``fashion-repo rollback`` returns to. The server checks its
  form and serves nothing from it.

Pure: parsing, the policy's arithmetic, and the edits ``fashion-repo`` and
``fashion-train --label`` make (:meth:`ServingConfig.with_label` and the rest; writing
the file is :mod:`server.config_store`'s). Anything unknown or malformed is a
:class:`ConfigRefused` naming the field, so a typo is never silently ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from server.errors import ModelLoadError
from server.repository import MAX_VERSION

STABLE = "stable"
# Labels are names, never numbers (a label "3" would shadow version 3).
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
CANARY = "canary"
_KEYS = frozenset({"version_policy", "labels", "stable_history"})
MAX_CONFIG_BYTES = 64 * 1024
# Previous stable versions kept for rollback: enough for any real sequence of promotions,
# small enough that the file stays a glance.
MAX_HISTORY = 32


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

    def to_json(self) -> dict[str, Any]:
        """config.json's ``version_policy`` value."""
        if self.kind == "all":
            return {"all": True}
        if self.kind == "specific":
            return {"specific": list(self.specific)}
        return {"latest": self.latest}


def parse_policy(text: str) -> VersionPolicy:
    """The command-line form (``latest:2``, ``all``, ``specific:3,4``) -> VersionPolicy;
    ConfigRefused with the forms when it is none of them."""
    kind, _, argument = text.strip().partition(":")
    usage = "latest:N, all or specific:V1,V2,..."
    try:
        if kind == "latest" and argument:
            value: Any = {"latest": int(argument)}
        elif kind == "all" and not argument:
            value = {"all": True}
        elif kind == "specific" and argument:
            value = {"specific": [int(v) for v in argument.split(",")]}
        else:
            raise ValueError(text)
    except ValueError:
        raise ConfigRefused(f"version policy {text[:64]!r}: expected {usage}") from None
    return _policy(value, "version policy")


@dataclass(frozen=True)
class ServingConfig:
    """A model's parsed config.json; the default one when the file is absent."""

    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: Mapping[str, int] = field(default_factory=dict)
    stable_history: tuple[int, ...] = ()

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

    # -- edits (fashion-repo, fashion-train --label): each returns a new config ----------

    def with_label(self, label: str, version: int) -> ServingConfig:
        """``label`` -> ``version``. Moving ``stable`` records the previous one for rollback."""
        _check_label(label, "label")
        if not _version(version):
            raise ConfigRefused(f"label {label!r} must name a version number, got {version!r}")
        history = self.stable_history
        previous = self.labels.get(STABLE)
        if label == STABLE and previous is not None and previous != version:
            history = (*history, previous)[-MAX_HISTORY:]
        return replace(self, labels={**self.labels, label: version}, stable_history=history)

    def without_label(self, label: str) -> ServingConfig:
        if label not in self.labels:
            raise ConfigRefused(f"there is no label {label!r} (labels: {self._labels_text()})")
        labels = {name: v for name, v in self.labels.items() if name != label}
        return replace(self, labels=labels)

    def promoted(self, label: str = CANARY) -> ServingConfig:
        """``stable`` moves to the version ``label`` (the canary) names; the canary label
        stays where it is, so clients that ask for it are never refused mid-flight."""
        if label not in self.labels:
            raise ConfigRefused(
                f"there is no label {label!r} to promote (labels: {self._labels_text()})"
            )
        version = self.labels[label]
        if self.labels.get(STABLE) == version:
            raise ConfigRefused(f"{label!r} and {STABLE!r} both name version {version} already")
        return self.with_label(STABLE, version)

    def rolled_back(self) -> ServingConfig:
        """``stable`` returns to the version it named before (the last of the history that
        is not the version it names now: after ``unlabel stable`` and ``label stable N`` the
        history may end with N, and a rollback that changes nothing must not say done)."""
        current = self.labels.get(STABLE)
        history = list(self.stable_history)
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise ConfigRefused(
                "no previous stable version is recorded (stable_history is empty"
                + (f" or names only version {current}, stable now" if self.stable_history else "")
                + "): set one with `fashion-repo label MODEL stable VERSION`"
            )
        *rest, previous = history
        labels = {**self.labels, STABLE: previous}
        return replace(self, labels=labels, stable_history=tuple(rest))

    def with_policy(self, policy: VersionPolicy) -> ServingConfig:
        return replace(self, policy=policy)

    def to_json(self) -> dict[str, Any]:
        """config.json's document (what :func:`parse_config` reads back as this config)."""
        document: dict[str, Any] = {"version_policy": self.policy.to_json()}
        if self.labels:
            document["labels"] = dict(sorted(self.labels.items()))
        if self.stable_history:
            document["stable_history"] = list(self.stable_history)
        return document

    def _labels_text(self) -> str:
        return ", ".join(f"{n} -> {v}" for n, v in sorted(self.labels.items())) or "none"


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
    history = _history(document.get("stable_history", []), where)
    if policy.kind == "specific":
        outside = sorted(name for name, v in labels.items() if v not in policy.specific)
        if outside:
            raise ConfigRefused(
                f"{where}: labels {outside} point at versions outside version_policy "
                f"specific {list(policy.specific)}"
            )
    return ServingConfig(policy, labels, history)


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
        _check_label(name, f"{where}: label")
        if not _version(version):
            raise ConfigRefused(f"{where}: label {name!r} must name a version number")
    return dict(value)


def _check_label(name: str, what: str) -> None:
    if not _LABEL.fullmatch(name):
        raise ConfigRefused(
            f"{what} {name[:64]!r} is not a name (a letter, then up to 63 letters, digits, "
            "'_', '.', '-')"
        )


def check_label_name(name: str) -> None:
    """ConfigRefused when ``name`` cannot be a label (for a command line checked early)."""
    _check_label(name, "label")


def _history(value: Any, where: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_HISTORY
        or not all(_version(v) for v in value)
    ):
        raise ConfigRefused(
            f"{where}: stable_history must be a list of at most {MAX_HISTORY} version numbers"
        )
    return tuple(value)


def pinned(version: int) -> ServingConfig:
    """The configuration ``--model-version N`` imposes: version N only, no labels."""
    return ServingConfig(VersionPolicy("specific", specific=(version,)))
