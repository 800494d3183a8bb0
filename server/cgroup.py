"""What this process may use: CPUs (its cgroup's quota and its affinity mask) and memory
(its cgroup's limit, else the machine's memory).

Memory is read on every scrape (a few small files): Kubernetes can resize a running
container's limit. Linux only; elsewhere nothing is known and the metric is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
MEMINFO = Path("/proc/meminfo")
# cgroup v1 writes "no limit" as the largest page-aligned 64-bit count (9223372036854771712
# with 4 KiB pages); no real limit comes near 2^62 bytes.
V1_UNLIMITED = 2**62


def _cgroup_paths(proc_self_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory controller path) from /proc/self/cgroup, each None if absent."""
    v2 = v1 = None
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _limits(mount: Path, path: str | None, name: str) -> list[int]:
    """Every limit set on the process's cgroup and its ancestors under ``mount``.

    Inside a container with its own cgroup namespace the mount shows the container's
    cgroup itself (path "/"); without one, the path from /proc/self/cgroup leads there.
    """
    directories = [mount]
    if path:
        parts = [p for p in path.split("/") if p]
        directories += [mount.joinpath(*parts[:n]) for n in range(1, len(parts) + 1)]
    limits = []
    for directory in directories:
        try:
            text = (directory / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < V1_UNLIMITED:
            limits.append(int(text))  # v2 writes "max" for no limit
    return limits


def machine_memory_bytes(meminfo: Path = MEMINFO) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "MemTotal":
                number, unit = value.split()
                return int(number) * 1024 if unit == "kB" else int(number)
    except (OSError, ValueError):
        return None
    return None


def memory_limit_bytes(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP, meminfo: Path = MEMINFO
) -> int | None:
    """The smallest of: the cgroup v2 ``memory.max`` and the v1 ``memory.limit_in_bytes``
    of this process's cgroup and its ancestors, and the machine's memory (``MemTotal``).
    None when none of them can be read."""
    v2, v1 = _cgroup_paths(proc_self_cgroup)
    candidates = _limits(root, v2, "memory.max") if v2 is not None else []
    if v1 is not None:
        candidates += _limits(root / "memory", v1, "memory.limit_in_bytes")
    machine = machine_memory_bytes(meminfo)
    if machine is not None:
        candidates.append(machine)
    return min(candidates) if candidates else None


def _cpu_quota(root: Path = CGROUP_ROOT) -> int | None:
    """Whole CPUs of the cgroup's quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), at
    least 1; None without a quota. A fraction rounds down: 1.5 CPUs is 1."""
    candidates = [(root / "cpu.max", None), (root / "cpu" / "cpu.cfs_quota_us", "cfs")]
    for path, kind in candidates:
        try:
            if kind is None:
                quota, period = path.read_text().split()[:2]
                if quota == "max":
                    return None
            else:
                quota = path.read_text().strip()
                period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
                if int(quota) < 0:
                    return None
            return max(1, int(quota) // int(period))
        except (OSError, ValueError):
            continue
    return None


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask and its cgroup's CPU quota.

    onnxruntime sizes its pool from the host's core count, which oversubscribes a
    container limited to fewer CPUs; ``--workers auto`` uses this too.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    quota = _cpu_quota()
    return min(count, quota) if quota is not None else count


class MemoryLimitCollector(Collector):
    """``fashion_memory_limit_bytes``, read at every scrape: what "memory near the limit"
    alerts divide ``process_resident_memory_bytes`` by, without kube-state-metrics."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        limit = memory_limit_bytes()
        if limit is not None:
            yield GaugeMetricFamily(
                "fashion_memory_limit_bytes",
                "Memory this process may use: the smallest cgroup limit over its cgroup and "
                "their ancestors (v2 memory.max, v1 memory.limit_in_bytes), or the machine's "
                "memory (MemTotal) when that is smaller or no limit is set",
                value=limit,
            )
