"""A model's config.json (server.serving_config): parsing, and the edits fashion-repo makes."""

from __future__ import annotations

import json

import pytest

from server.serving_config import (
    MAX_HISTORY,
    ConfigRefused,
    ServingConfig,
    VersionPolicy,
    parse_config,
    parse_policy,
)


def parsed(document: object) -> ServingConfig:
    return parse_config(json.dumps(document), "config.json")


def test_a_written_config_reads_back_the_same() -> None:
    config = ServingConfig(
        VersionPolicy("specific", specific=(3, 4)), {"stable": 3, "canary": 4}, (1, 2)
    )
    assert parsed(config.to_json()) == config
    assert parsed(ServingConfig().to_json()) == ServingConfig()
    assert parsed({"version_policy": {"all": True}}).policy == VersionPolicy("all")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"stable_history": [0]}, "stable_history must be a list of at most 32 version"),
        ({"stable_history": list(range(1, MAX_HISTORY + 2))}, "at most 32"),
        ({"stable_history": {"a": 1}}, "stable_history must be a list"),
        ({"labels": {"3": 3}}, "label '3' is not a name"),
        ({"label": {"stable": 1}}, "unknown fields ['label']"),
    ],
)
def test_malformed_fields_are_refused_by_name(document: object, message: str) -> None:
    with pytest.raises(ConfigRefused) as info:
        parsed(document)
    assert message in str(info.value)


def test_moving_stable_records_the_previous_one_and_rollback_returns_to_it() -> None:
    config = ServingConfig().with_label("stable", 3)
    assert config.stable_history == ()  # nothing was stable before
    config = config.with_label("canary", 4)
    assert config.stable_history == ()  # only stable is recorded
    promoted = config.promoted()
    assert promoted.labels == {"stable": 4, "canary": 4}  # the canary label stays
    assert promoted.stable_history == (3,)
    back = promoted.rolled_back()
    assert back.labels == {"stable": 3, "canary": 4} and back.stable_history == ()
    assert promoted.with_label("stable", 4) == promoted  # no move, nothing recorded


def test_rollback_skips_history_that_names_the_current_stable() -> None:
    """unlabel stable, then label stable 1 again: the history [1, 2] ends with the version
    stable names; rollback goes to 2 beyond it, and with only that entry it is refused
    (exit 1) rather than done with nothing changed."""
    config = ServingConfig().with_label("stable", 2).with_label("stable", 1)
    config = config.with_label("stable", 3)  # history (2, 1)
    config = config.without_label("stable").with_label("stable", 1)
    assert config.stable_history == (2, 1)
    back = config.rolled_back()
    assert back.labels == {"stable": 2} and back.stable_history == ()
    alone = ServingConfig().with_label("stable", 1).with_label("stable", 2)  # history (1,)
    alone = alone.without_label("stable").with_label("stable", 1)
    with pytest.raises(ConfigRefused, match="or names only version 1, stable now"):
        alone.rolled_back()


def test_the_history_keeps_the_newest_entries() -> None:
    config = ServingConfig()
    for version in range(1, MAX_HISTORY + 10):
        config = config.with_label("stable", version)
    assert len(config.stable_history) == MAX_HISTORY
    assert config.stable_history[-1] == MAX_HISTORY + 8


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.promoted(), "there is no label 'canary' to promote"),
        (lambda c: c.rolled_back(), "no previous stable version is recorded"),
        (lambda c: c.without_label("canary"), "there is no label 'canary'"),
        (lambda c: c.with_label("1st", 2), "label '1st' is not a name"),
        (lambda c: c.with_label("stable", 0), "must name a version number"),
        (lambda c: c.with_label("canary", 2).with_label("stable", 2).promoted(), "both name"),
    ],
)
def test_edits_that_cannot_apply_are_refused_with_the_reason(edit, message) -> None:
    with pytest.raises(ConfigRefused) as info:
        edit(ServingConfig())
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("latest:2", VersionPolicy("latest", latest=2)),
        ("all", VersionPolicy("all")),
        ("specific:4,3", VersionPolicy("specific", specific=(3, 4))),
    ],
)
def test_policies_on_the_command_line(text: str, policy: VersionPolicy) -> None:
    assert parse_policy(text) == policy


@pytest.mark.parametrize("text", ["latest", "latest:0", "all:1", "specific:", "specific:a", "x"])
def test_policies_that_are_not_one_are_refused(text: str) -> None:
    with pytest.raises(ConfigRefused):
        parse_policy(text)
