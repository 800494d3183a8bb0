"""``fashion-repo`` and server.config_store: what it shows, and that every change is checked
as the server checks it, written atomically, and never loses a concurrent writer's change."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from server.config_store import LOCK_FILE, update
from server.repo_cli import main
from server.serving_config import ConfigRefused, parse_config


def publish(root: Path, model: str, version: int, accuracy: float = 0.9) -> None:
    """A version whose files are intact (metadata and checksum); the CLI never loads it."""
    directory = root / model / str(version)
    directory.mkdir(parents=True)
    model_bytes = f"{model} {version}".encode()
    (directory / "model.onnx").write_bytes(model_bytes)
    metadata = {
        "version": version,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "test_accuracy": accuracy,
    }
    (directory / "metadata.json").write_text(json.dumps(metadata))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for version in (1, 2, 3):
        publish(root, "fashion", version, accuracy=0.9 + version / 100)
    publish(root, "other", 1)
    return root


def run(repo: Path, *argv: str) -> int:
    return main(["--model-repo", str(repo), *argv])


def config_of(repo: Path, model: str = "fashion") -> dict:
    return json.loads((repo / model / "config.json").read_text())


def test_list_shows_versions_labels_and_what_a_server_serves(repo, capsys) -> None:
    assert run(repo, "policy", "fashion", "latest:2") == 0
    assert run(repo, "label", "fashion", "stable", "2") == 0
    (repo / "fashion" / "3" / "model.onnx").write_bytes(b"changed")  # checksum broken
    capsys.readouterr()
    assert run(repo, "list", "--json") == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert set(models) == {"fashion", "other"}
    fashion = models["fashion"]
    assert fashion["version_policy"] == "latest 2" and fashion["labels"] == {"stable": 2}
    assert fashion["served"] == [1, 2] and fashion["default_version"] == 2
    by_version = {v["version"]: v for v in fashion["versions"]}
    assert by_version[2]["labels"] == ["stable"] and by_version[2]["test_accuracy"] == 0.92
    assert not by_version[3]["intact"] and "sha256" in by_version[3]["error"]
    assert models["other"]["served"] == [1] and models["other"]["labels"] == {}
    assert run(repo, "list", "fashion") == 0
    text = capsys.readouterr().out
    assert text.startswith("fashion: policy latest 2; labels stable -> 2; serves [1, 2]")
    assert "broken: version 3: sha256" in text and "other" not in text


def test_list_shows_a_config_that_a_new_version_broke(repo, capsys) -> None:
    """latest 3 with stable -> 1, then version 4 copied in by hand: a starting server would
    refuse the model, and list says so instead of "serves [3, 4]"."""
    assert run(repo, "policy", "fashion", "latest:3") == 0
    assert run(repo, "label", "fashion", "stable", "1") == 0
    publish(repo, "fashion", 4)
    capsys.readouterr()
    assert run(repo, "list", "--json", "fashion") == 0
    fashion = json.loads(capsys.readouterr().out)["models"]["fashion"]
    assert fashion["config_error"].startswith("label 'stable' -> 1: version policy latest 3")
    assert fashion["served"] == [] and fashion["default_version"] is None
    assert run(repo, "list", "fashion") == 0
    text = capsys.readouterr().out
    assert "serves nothing, default none" in text
    assert "config.json refused (a running server keeps its previous config" in text


def test_a_canary_is_promoted_then_rolled_back(repo, capsys) -> None:
    assert run(repo, "policy", "fashion", "latest:2") == 0
    assert run(repo, "label", "fashion", "stable", "2") == 0
    assert run(repo, "label", "fashion", "canary", "3") == 0
    assert run(repo, "promote", "fashion") == 0
    assert config_of(repo) == {
        "version_policy": {"latest": 2},
        "labels": {"canary": 3, "stable": 3},
        "stable_history": [2],
    }
    assert run(repo, "rollback", "fashion") == 0
    assert config_of(repo)["labels"] == {"canary": 3, "stable": 2}
    assert "stable_history" not in config_of(repo)
    assert run(repo, "unlabel", "fashion", "canary") == 0
    assert config_of(repo)["labels"] == {"stable": 2}
    out = capsys.readouterr().out
    promoted, rolled_back = "canary -> 3, stable -> 3", "canary -> 3, stable -> 2"
    assert f"labels {promoted}  =>  policy latest 2, labels {rolled_back}" in out
    # What the server reads: the same parser, the same config.
    assert parse_config((repo / "fashion" / "config.json").read_text(), "x").labels == {"stable": 2}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["label", "fashion", "canary", "9"],
         "model 'fashion' has no version 9 (intact versions: 1, 2, 3)"),
        (["label", "fashion", "stable", "2"],
         "version policy latest 1 serves [3]; widen it first: `fashion-repo policy fashion "
         "latest:2`"),
        (["label", "nope", "stable", "1"], "no model 'nope'"),
        (["label", "fashion", "2x", "1"], "label '2x' is not a name"),
        (["promote", "fashion"], "there is no label 'canary' to promote"),
        (["rollback", "fashion"], "no previous stable version is recorded"),
        (["policy", "fashion", "specific:7"], "serves no version of 'fashion'"),
        (["policy", "fashion", "newest:2"], "expected latest:N, all or specific:V1,V2,..."),
    ],
)  # fmt: skip
def test_refusals_say_why_and_write_nothing(repo, capsys, argv, message) -> None:
    assert run(repo, *argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("fashion-repo: refused: ") and message in err, err
    assert not (repo / "fashion" / "config.json").exists()
    assert not [p for p in (repo / "fashion").iterdir() if ".tmp" in p.name]


def test_a_label_to_broken_files_is_refused(repo, capsys) -> None:
    (repo / "fashion" / "3" / "metadata.json").write_text("{")
    assert run(repo, "label", "fashion", "canary", "3") == 1
    assert "its files are broken: version 3:" in capsys.readouterr().err


def test_a_policy_that_would_strand_a_label_is_refused(repo, capsys) -> None:
    assert run(repo, "policy", "fashion", "all") == 0
    assert run(repo, "label", "fashion", "stable", "1") == 0
    before = (repo / "fashion" / "config.json").read_bytes()
    assert run(repo, "policy", "fashion", "latest:2") == 1
    assert "label 'stable' -> 1: version policy latest 2 serves [2, 3]" in capsys.readouterr().err
    assert (repo / "fashion" / "config.json").read_bytes() == before


def test_an_invalid_config_is_never_overwritten(repo, capsys) -> None:
    (repo / "fashion" / "config.json").write_text('{"labels": {"stable": 1}, "typo": 1}')
    assert run(repo, "label", "fashion", "canary", "3") == 1
    assert "unknown fields ['typo']" in capsys.readouterr().err
    assert "typo" in (repo / "fashion" / "config.json").read_text()
    assert run(repo, "list", "fashion") == 0  # list still shows the model, and why
    assert "config.json refused" in capsys.readouterr().out


def test_concurrent_writers_never_lose_a_change(repo) -> None:
    """Each writer reads, changes and writes under the lock: 16 labels, 16 present."""
    assert run(repo, "policy", "fashion", "all") == 0
    errors: list[BaseException] = []

    def label(n: int) -> None:
        try:
            update(repo, "fashion", lambda c: c.with_label(f"l{n}", 1 + n % 3))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=label, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert config_of(repo)["labels"] == {f"l{n}": 1 + n % 3 for n in range(16)}
    names = sorted(p.name for p in (repo / "fashion").iterdir())
    assert names == [LOCK_FILE, "1", "2", "3", "config.json"]  # no temporary file left


def test_update_refuses_a_change_the_server_would_refuse(repo) -> None:
    with pytest.raises(ConfigRefused, match="has no version 4"):
        update(repo, "fashion", lambda c: c.with_label("canary", 4))


def test_a_repository_that_is_not_a_directory_is_a_usage_error(tmp_path, capsys) -> None:
    assert main(["--model-repo", str(tmp_path / "none"), "list"]) == 2
    assert "is not a directory" in capsys.readouterr().err
