"""Atomic publication: interrupted exports leave no version; concurrent ones never collide."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from server.repository import list_versions, model_dir, read_version
from training.publish import publish_model

# A child process that stages a model, then blocks inside the metadata step until told to go
# (a line on stdin) or until it is interrupted/killed: the worst moment to die.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from training.publish import publish_model
    from training.train import exit_on_sigterm

    exit_on_sigterm()  # what fashion-train's main() installs

    def write_model(path):
        path.write_bytes(b"model-bytes-" + sys.argv[2].encode())

    def make_metadata(version, sha):
        print("staged", flush=True)
        sys.stdin.readline()
        return {"version": version, "model_sha256": sha}

    version, path = publish_model(Path(sys.argv[1]), write_model, make_metadata)
    print(version, flush=True)
    """
)


def write_bytes_model(payload: bytes = b"onnx") -> Any:
    def write_model(path: Path) -> None:
        path.write_bytes(payload)

    return write_model


def metadata(version: int, sha: str) -> dict[str, Any]:
    return {"version": version, "model_sha256": sha}


def start_child(root: Path, tag: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), tag],
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
    assert sorted(p.name for p in model_dir(tmp_path).iterdir()) == ["1", "2"]


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
    assert [p.name for p in model_dir(tmp_path).iterdir()] == ["1"]
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
    assert list(model_dir(tmp_path).iterdir()) == []  # staging directory cleaned up
    assert publish_model(tmp_path, write_bytes_model(), metadata)[0] == 1


def test_sigterm_mid_export_cleans_up_like_ctrl_c(tmp_path: Path) -> None:
    child = start_child(tmp_path, "a")
    child.terminate()
    child.communicate(timeout=30)
    assert child.returncode == 128 + signal.SIGTERM
    assert list(model_dir(tmp_path).iterdir()) == []


def test_kill_9_mid_export_leaves_no_version_and_next_number_is_right(tmp_path: Path) -> None:
    publish_model(tmp_path, write_bytes_model(), metadata)
    child = start_child(tmp_path, "a")
    child.kill()
    child.communicate(timeout=30)
    # SIGKILL can leave the dotted staging directory behind, but never a version.
    assert list_versions(tmp_path) == [1]
    leftovers = [p.name for p in model_dir(tmp_path).iterdir() if p.name != "1"]
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
    children = [start_child(tmp_path, str(i)) for i in range(4)]
    for child in children:  # all four are staged before any is released
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    versions = []
    for child in children:
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        # A loser of the race re-runs the metadata step (another "staged" line) for the next number.
        versions.append(int(out.split()[-1]))
    assert sorted(versions) == [1, 2, 3, 4]
    for version in versions:
        meta = json.loads((model_dir(tmp_path) / str(version) / "metadata.json").read_text())
        assert meta["version"] == version
        read_version(tmp_path, version)
