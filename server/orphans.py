"""No process of the server outlives the process that started it, and none is left a zombie.

A server process starts a REST parse worker (server/rest_worker.py). When a worker of
``--workers N`` is killed outright (SIGKILL: the OOM killer, the supervisor's watchdog),
nothing in it can stop that process: it lived on, reparented to PID 1 (with
multiprocessing's resource tracker, when the parse worker was a multiprocessing pool),
holding ~55 MiB for every worker lost. Now:

* the parse worker asks the kernel to kill it when its parent ends (:func:`die_with`);
* the supervisor is their reaper (:func:`adopt_orphans`, ``PR_SET_CHILD_SUBREAPER``):
  orphans below it are handed to it rather than to the host's init, as they would be in a
  container where it is PID 1 anyway, and :func:`reap_orphans` waits for the ones that
  ended, so they do not pile up as zombies (asyncio waits only for the workers it started).

Linux only (prctl); elsewhere these do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parse worker imports this module: no asyncio there
    import asyncio

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2)
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False  # not Linux
    return bool(prctl(option, value, 0, 0, 0) == 0)


def die_with(parent: int) -> None:
    """In a child, first thing: the kernel sends it SIGKILL when ``parent`` ends (when the
    thread that started it ends: start children from the main thread)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(1)


def adopt_orphans() -> bool:
    """Make this process the reaper of every orphan below it."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def reap_orphans(ours: Collection[int]) -> list[int]:
    """Wait for this process's children that have ended, except ``ours`` (the ones something
    else waits for: asyncio its workers). The pids reaped."""
    from server.process_metrics import children_of, state  # prometheus_client: not at import

    reaped = []
    for child in children_of()(os.getpid()):
        if child in ours or state(child) != "Z":
            continue
        with contextlib.suppress(ChildProcessError):
            pid, _ = os.waitpid(child, os.WNOHANG)
            if pid:
                reaped.append(pid)
    return reaped


async def reap_until(
    stop: asyncio.Event, ours: Callable[[], Collection[int] | None], every_s: float
) -> None:
    """:func:`reap_orphans` every ``every_s`` until ``stop``, in a thread (without the
    kernel's lists of children it scans /proc); skipped while ``ours()`` is None (a worker
    being started: its pid is not known yet, and its exit status is asyncio's)."""
    import asyncio

    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        known = ours()
        if known is None or stop.is_set():
            continue
        for pid in await asyncio.to_thread(reap_orphans, known):
            logger.debug("reaped orphan process %d", pid)
