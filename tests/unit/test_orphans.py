"""server/orphans.py on real processes: a child that dies with its parent, a supervisor that
waits for the orphans handed to it and never for the children asyncio waits for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from server.process_metrics import state

# A parent that starts a child which asks to die with it, prints both pids, then sleeps.
CHILD = (
    "import sys, time; from server.orphans import die_with; die_with(int(sys.argv[1])); "
    "print('armed', flush=True); time.sleep(60)"
)
PARENT = f"""
import os, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", {CHILD!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True
)
assert child.stdout.readline().strip() == "armed"
print(os.getpid(), child.pid, flush=True)
time.sleep(60)
"""

# A reaper with two ended children: one it must leave (``ours``), one it must wait for.
REAPER = """
import json, os, subprocess, sys, time
from server.orphans import reap_orphans
from server.process_metrics import state
ours, other = (subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2))
while not (state(ours.pid) == state(other.pid) == "Z"):
    time.sleep(0.05)
reaped = reap_orphans({ours.pid})
print(json.dumps({"reaped": reaped, "other": other.pid, "ours_state": state(ours.pid),
                  "other_state": state(other.pid), "ours_code": ours.wait(timeout=5)}))
"""


def gone(pid: int) -> bool:
    return state(pid) in ("", "Z")  # a zombie is its new parent's to wait for


def test_a_child_armed_with_die_with_ends_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    try:
        parent_pid, child = (int(pid) for pid in parent.stdout.readline().split())
        assert parent_pid == parent.pid and state(child) in ("S", "R")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not gone(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_reap_orphans_waits_for_ended_children_but_never_for_ours() -> None:
    out = subprocess.run(
        [sys.executable, "-c", REAPER], capture_output=True, text=True, timeout=60, check=True
    )
    found = json.loads(out.stdout)
    assert found["reaped"] == [found["other"]]
    assert found["other_state"] == ""  # waited for: gone
    assert found["ours_state"] == "Z"  # left to its own waiter,
    assert found["ours_code"] == 0  # which still gets its exit code
