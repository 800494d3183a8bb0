"""Atomic publication: interrupted exports leave no version; concurrent ones never collide."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from server.config_store import LOCK_FILE, read_config, update
from server.repository import config_path, list_versions, model_dir, read_version
from server.serving_config import parse_policy
from training.publish import PublishRefused, check_publish_plan, check_writable, publish_model

# A child process that stages a model, then blocks until told to go (a line on stdin) or
# until it is interrupted/killed: in the metadata step by default, under the model's config
# lock just before the rename (the worst moment to die); with "model", once its model file is
# written, before the lock (so that several publishers are staged at once).
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from training.publish import publish_model
    from training.train import StopRequests

    stops = StopRequests()
    stops.install()  # what fashion-train's main() installs,
    stops.signum = 15  # after a first SIGTERM: the next signal stops at once, wherever it lands
    WAIT = sys.argv[3]

    def wait(step):
        if step == WAIT:
            print("staged", flush=True)
            sys.stdin.readline()

    def write_model(path):
        path.write_bytes(b"model-bytes-" + sys.argv[2].encode())
        wait("model")

    def make_metadata(version, sha):
        wait("metadata")
        return {"version": version, "model_sha256": sha}

    version, path = publish_model(Path(sys.argv[1]), write_model, make_metadata)
    print(version, flush=True)
    """
)


def entries(root: Path) -> list[str]:
    """The model directory's names, but the config lock a publish takes (as fashion-repo
    does): an empty file that stays, never a version."""
    return sorted(p.name for p in model_dir(root).iterdir() if p.name != LOCK_FILE)


def write_bytes_model(payload: bytes = b"onnx") -> Any:
    def write_model(path: Path) -> None:
        path.write_bytes(payload)

    return write_model


def metadata(version: int, sha: str) -> dict[str, Any]:
    return {"version": version, "model_sha256": sha}


def start_child(root: Path, tag: str, wait: str = "metadata") -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), tag, wait],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "staged"
    return child


def test_publish_creates_consecutive_versions_readable_by_the_server(tmp_path: Path) -> None:
    first = publish_model(tmp_path, write_bytes_model(b"one"), metadata)
    second = publish_model(tmp_path, write_bytes_model(b"two"), metadata)
    assert first == (1, tmp_path / "fashion" / "1")
    assert second == (2, tmp_path / "fashion" / "2")
    loaded = read_version(tmp_path, 2)  # verifies model_sha256 against the file
    assert loaded.model_path.read_bytes() == b"two"
    assert loaded.metadata["version"] == 2
    assert entries(tmp_path) == ["1", "2"]


@pytest.mark.parametrize("where", ["write_model", "make_metadata"])
def test_interrupt_mid_export_leaves_no_version_and_no_debris(tmp_path: Path, where: str) -> None:
    publish_model(tmp_path, write_bytes_model(), metadata)

    def write_model(path: Path) -> None:
        path.write_bytes(b"half-writ")
        if where == "write_model":
            raise KeyboardInterrupt

    def make_metadata(version: int, sha: str) -> dict[str, Any]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish_model(tmp_path, write_model, make_metadata)
    assert list_versions(tmp_path) == [1]
    assert entries(tmp_path) == ["1"]
    assert publish_model(tmp_path, write_bytes_model(), metadata)[0] == 2


def test_failed_export_publishes_nothing(tmp_path: Path) -> None:
    class ParityFailed(Exception):
        pass

    def write_model(path: Path) -> None:
        path.write_bytes(b"bad")
        raise ParityFailed

    with pytest.raises(ParityFailed):
        publish_model(tmp_path, write_model, metadata)
    assert list_versions(tmp_path) == []
    assert list(model_dir(tmp_path).iterdir()) == []


def test_ctrl_c_in_another_process_leaves_no_version(tmp_path: Path) -> None:
    child = start_child(tmp_path, "a")
    child.send_signal(signal.SIGINT)
    child.communicate(timeout=30)
    assert child.returncode != 0
    assert entries(tmp_path) == []  # staging directory cleaned up
    assert publish_model(tmp_path, write_bytes_model(), metadata)[0] == 1


def test_sigterm_mid_export_cleans_up_like_ctrl_c(tmp_path: Path) -> None:
    child = start_child(tmp_path, "a")
    child.terminate()
    child.communicate(timeout=30)
    assert child.returncode == 128 + signal.SIGTERM
    assert entries(tmp_path) == []


def test_kill_9_mid_export_leaves_no_version_and_next_number_is_right(tmp_path: Path) -> None:
    publish_model(tmp_path, write_bytes_model(), metadata)
    child = start_child(tmp_path, "a")
    child.kill()
    child.communicate(timeout=30)
    # SIGKILL can leave the dotted staging directory behind, but never a version.
    assert list_versions(tmp_path) == [1]
    leftovers = [name for name in entries(tmp_path) if name != "1"]
    assert all(name.startswith(".") for name in leftovers) and len(leftovers) == 1
    assert publish_model(tmp_path, write_bytes_model(), metadata)[0] == 2
    read_version(tmp_path, 2)


def test_concurrent_threads_get_distinct_versions(tmp_path: Path) -> None:
    publishers = 8
    barrier = threading.Barrier(publishers)
    results: list[int] = []
    errors: list[BaseException] = []

    def publish(index: int) -> None:
        def write_model(path: Path) -> None:
            path.write_bytes(f"model-{index}".encode())
            barrier.wait(timeout=30)  # everyone staged: all race for the same next number

        try:
            results.append(publish_model(tmp_path, write_model, metadata)[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(results) == list(range(1, publishers + 1))
    bodies = set()
    for version in results:
        loaded = read_version(tmp_path, version)
        assert loaded.metadata["version"] == version  # metadata written for the number it got
        bodies.add(loaded.model_path.read_bytes())
    assert len(bodies) == publishers


def test_concurrent_processes_get_distinct_versions(tmp_path: Path) -> None:
    children = [start_child(tmp_path, str(i), wait="model") for i in range(4)]
    for child in children:  # all four are staged before any is released
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    versions = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        # They publish one at a time (the config lock); a publisher that does not take it
        # and loses the rename re-runs the metadata step for the next number.
        versions.append(int(out.split()[-1]))
    assert sorted(versions) == [1, 2, 3, 4]
    for version in versions:
        meta = json.loads((model_dir(tmp_path) / str(version) / "metadata.json").read_text())
        assert meta["version"] == version
        read_version(tmp_path, version)


# -- the model's config.json: a publish never leaves it unservable ---------------------------


def test_a_version_that_would_push_a_label_out_of_the_policy_is_not_published(
    tmp_path: Path,
) -> None:
    """latest 1 with stable -> 1: version 2 would leave stable pointing outside the policy,
    and a server starting on that repository would refuse the model."""
    publish_model(tmp_path, write_bytes_model(b"one"), metadata)
    update(tmp_path, "fashion", lambda config: config.with_label("stable", 1))
    config_before = config_path(tmp_path, "fashion").read_bytes()
    with pytest.raises(PublishRefused, match=r"label 'stable' -> 1: version policy latest 1"):
        publish_model(tmp_path, write_bytes_model(b"two"), metadata)
    assert list_versions(tmp_path) == [1] and entries(tmp_path) == ["1", "config.json"]
    assert config_path(tmp_path, "fashion").read_bytes() == config_before


def test_a_config_change_during_training_is_checked_again_when_publishing(tmp_path: Path) -> None:
    """The check before training passed; an operator moved stable meanwhile (here: while the
    model is written), so that the new version would push it out: nothing is published."""
    for payload in (b"one", b"two"):
        publish_model(tmp_path, write_bytes_model(payload), metadata)
    update(tmp_path, "fashion", lambda c: c.with_policy(parse_policy("latest:2")))
    update(tmp_path, "fashion", lambda c: c.with_label("stable", 2))
    check_publish_plan(tmp_path, "fashion", "canary")  # what fashion-train checks first

    def write_model(path: Path) -> None:
        path.write_bytes(b"three")
        update(tmp_path, "fashion", lambda c: c.with_label("stable", 1))  # the rollback

    with pytest.raises(PublishRefused, match=r"label 'stable' -> 1: version policy latest 2"):
        publish_model(tmp_path, write_model, metadata, label="canary")
    assert list_versions(tmp_path) == [1, 2]
    assert read_config(tmp_path, "fashion").labels == {"stable": 1}


def test_a_label_is_set_with_the_publish(tmp_path: Path) -> None:
    for payload in (b"one", b"two"):
        publish_model(tmp_path, write_bytes_model(payload), metadata)
    update(tmp_path, "fashion", lambda c: c.with_policy(parse_policy("latest:2")))
    update(tmp_path, "fashion", lambda c: c.with_label("stable", 2))
    assert publish_model(tmp_path, write_bytes_model(b"3"), metadata, label="canary")[0] == 3
    assert read_config(tmp_path, "fashion").labels == {"stable": 2, "canary": 3}


def test_a_repository_that_cannot_be_written_is_found_before_training(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "repo", "fashion")  # made when publishing: fine
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PublishRefused, match=r"cannot write to .*a-file \(to create "):
        check_writable(tmp_path / "a-file" / "repo", "fashion")
    if os.geteuid() != 0:  # root writes anywhere but on a read-only mount
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(PublishRefused, match="cannot write to"):
            check_writable(locked, "fashion")
