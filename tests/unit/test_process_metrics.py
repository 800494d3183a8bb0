"""``process_*`` for a process tree (server/process_metrics.py), on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from server import process_metrics
from server.process_metrics import labelled, process_families, role

# A parent that starts two sleeping children of the same command, then sleeps.
PARENT = (
    "import subprocess, sys, time\n"
    "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    " for _ in range(2)]\n"
    "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def tree() -> Iterator[tuple[int, list[int]]]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    kids = [int(pid) for pid in parent.stdout.readline().split()]
    try:
        yield parent.pid, kids
    finally:
        for pid in kids:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_children_are_labelled_below_their_root_and_never_twice(tree) -> None:
    parent, kids = tree
    found = dict(labelled([("worker-0", parent)]))
    assert found.pop("worker-0") == parent
    # Two children of one command: both reported, under distinct labels.
    assert sorted(found.values()) == sorted(kids)
    first, second = sorted(found)
    assert first.startswith("worker-0/python") and second == first + "-2"


def test_the_kernels_lists_and_a_scan_of_proc_find_the_same_children(tree, monkeypatch) -> None:
    parent, kids = tree
    if process_metrics._kernel_lists_children():  # CONFIG_PROC_CHILDREN: most kernels
        assert sorted(process_metrics._listed_children(parent)) == sorted(kids)
    assert sorted(process_metrics.children_by_parent()[parent]) == sorted(kids)
    listed = labelled([("worker-0", parent)])
    monkeypatch.setattr(process_metrics, "_kernel_lists_children", lambda: False)
    assert labelled([("worker-0", parent)]) == listed


def test_a_root_below_another_root_is_reported_once_as_itself(tree) -> None:
    parent, kids = tree
    found = labelled([("supervisor", parent), ("worker-0", kids[0])])
    assert [pid for _, pid in found].count(kids[0]) == 1
    assert ("worker-0", kids[0]) in found
    assert [pid for label, pid in found if label and label.startswith("supervisor/")] == [kids[1]]


def test_an_unlabelled_root_keeps_its_series_unlabelled(tree) -> None:
    parent, _ = tree
    families = {f.name: f for f in process_families(labelled([(None, parent)]))}
    samples = families["process_resident_memory_bytes"].samples
    assert [s.labels for s in samples if "process" not in s.labels] == [{}]
    assert len([s for s in samples if s.labels.get("process", "").startswith("python")]) == 2
    assert all(s.value > 0 for s in samples)


def test_a_process_that_is_gone_is_left_out() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert all(not family.samples for family in process_families([("worker-0", gone.pid)]))


def test_the_rest_parse_worker_is_named() -> None:
    """What server/rest_worker.py starts, run the way it runs it."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "server.parse_process", str(os.getpid())], stdin=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while role(worker.pid) is None:  # starting: its command line is not set yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert role(worker.pid) == "rest-parse"
    finally:
        assert worker.stdin is not None
        worker.stdin.close()  # it exits at the end of its input
        assert worker.wait(timeout=30) == 0
