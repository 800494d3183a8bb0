"""``process_*`` series for a server's processes *and the processes they started*.

prometheus_client's ``ProcessCollector`` reports one process. A server process starts
another: the REST parse worker (started by the first large JSON body,
server/rest_worker.py), ~40 MiB once started (docs/PERFORMANCE.md, "Workers, measured"),
counted against the pod's memory limit like its parent's and invisible to
``sum(process_resident_memory_bytes)``, which the memory rule and the dashboard divide by
that limit, unless it is reported too.

Each process named by the caller (a *root*: the server itself, or the supervisor and each
worker) is reported with its own ``process`` label, or none; each process below a root
(found in /proc, its subtree not entered where it is itself a root) with
``process="<root's label>/<role>"``: ``rest-parse``, or its command name. Light: the
supervisor imports this (no grpc, numpy or onnxruntime).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

PROC = Path("/proc")
LABEL = "process"
# A root: its ``process`` label (None: unlabelled, a single server's own series) and pid.
Root = tuple[str | None, int]


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may contain spaces); [] when gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return []  # gone while we looked, or not Linux
    return stat[stat.rindex(")") + 2 :].split()


def _parent(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def children_by_parent() -> dict[int, list[int]]:
    """Every live process's children, from every /proc/PID/stat (empty without /proc).
    ~50 µs per process: the fallback where the kernel lists no children itself."""
    found: dict[int, list[int]] = {}
    try:
        entries = [int(e.name) for e in PROC.iterdir() if e.name.isdigit()]
    except OSError:
        return found
    for pid in entries:
        parent = _parent(pid)
        if parent is not None:
            found.setdefault(parent, []).append(pid)
    return found


def _listed_children(pid: int) -> list[int]:
    """``pid``'s children as the kernel lists them, per thread (CONFIG_PROC_CHILDREN): a few
    small reads, where scanning all of /proc takes milliseconds on a busy host (and the
    exposition runs on the event loop)."""
    found: list[int] = []
    try:
        threads = os.listdir(PROC / str(pid) / "task")
    except OSError:
        return found  # gone
    for thread in threads:
        try:
            found += [
                int(c) for c in (PROC / str(pid) / "task" / thread / "children").read_text().split()
            ]
        except (OSError, ValueError):
            continue  # the thread ended
    return found


def _kernel_lists_children() -> bool:
    return (PROC / "self" / "task" / str(os.getpid()) / "children").exists()


def children_of() -> Callable[[int], list[int]]:
    """How to find a process's children now: the kernel's lists, else one scan of /proc."""
    if _kernel_lists_children():
        return _listed_children
    tree = children_by_parent()
    return lambda pid: tree.get(pid, [])


def state(pid: int) -> str:
    """Its state letter from /proc (``Z``: ended, not yet waited for); "" when gone."""
    fields = stat_fields(pid)
    return fields[0] if fields else ""


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid``: its children, theirs, and so on."""
    children = children_of()
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def role(pid: int) -> str | None:
    """What a child process is, for its label: stable across its restarts (no pid). None
    while it is being started (the kernel has not set its command line yet)."""
    try:
        command = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    if not command:
        return None
    if b"-m\0server.parse_process" in command:
        return "rest-parse"
    try:
        return (PROC / str(pid) / "comm").read_text(errors="replace").strip() or "child"
    except OSError:
        return None


def labelled(roots: Sequence[Root]) -> list[tuple[str | None, int]]:
    """The roots, then every process below each of them, each with its ``process`` label."""
    children = children_of()
    rooted = {pid for _, pid in roots}
    out: list[tuple[str | None, int]] = list(roots)
    taken = {label for label, _ in roots}
    for label, pid in roots:
        todo = [c for c in sorted(children(pid)) if c not in rooted]
        while todo:
            child = todo.pop(0)
            what = role(child) if state(child) not in ("Z", "") else None
            if what is None:
                continue  # ended (it holds nothing), or starting: the next scrape has it
            name = what if label is None else f"{label}/{what}"
            unique, n = name, 2
            while unique in taken:  # two children of one role: both reported
                unique, n = f"{name}-{n}", n + 1
            taken.add(unique)
            out.append((unique, child))
            todo += [c for c in sorted(children(child)) if c not in rooted]
    return out


def process_families(processes: Sequence[tuple[str | None, int]]) -> Iterator[Metric]:
    """ProcessCollector's families for each process, merged: one family per name, each
    process's samples labelled (or not, for a None label)."""
    families: dict[str, Metric] = {}
    for label, pid in processes:
        collector = ProcessCollector(pid=functools.partial(int, pid), registry=None)
        for family in collector.collect():
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                labels = sample.labels if label is None else {**sample.labels, LABEL: label}
                merged.add_sample(sample.name, labels, sample.value)
    yield from families.values()


class ProcessTree(Collector):
    """``process_*`` of the roots ``roots()`` returns and of every process below them."""

    def __init__(self, roots: Callable[[], Sequence[Root]]) -> None:
        self._roots = roots

    def collect(self) -> Iterator[Metric]:
        yield from process_families(labelled(self._roots()))


def this_process() -> list[Root]:
    """A single server: its own series unlabelled (as ever), its children labelled."""
    return [(None, os.getpid())]
