"""Start and stop a ``fashion-serve`` process, and read its cold start, memory and CPU.

Cold start = ``Popen`` -> the ``fashion-serve: serving on port N metrics M http H`` line,
which the server prints only after the model is loaded, warmed and health is SERVING.
CPU and memory come from ``/proc`` (Linux), for the process and all its threads.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from server.process_metrics import descendants, stat_fields  # descendants re-exported

READY_MARK = "fashion-serve: serving on port "
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads) and of its live descendants, from /proc.

    A server that runs its work in child processes (Triton under PyTriton, MLServer's
    inference workers) is charged for them too.
    """
    total = 0
    for member in [pid, *descendants(pid)]:
        fields = stat_fields(member)
        if not fields:
            continue  # a child that exited in between
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and its peak (VmHWM), MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_mib" if key == "VmRSS" else "peak_rss_mib"] = round(
                int(value.split()[0]) / 1024, 1
            )
    return out


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    metrics_port: int
    cold_start_s: float
    http_port: int = 0  # the REST API's port; 0 when off

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (graceful drain), then SIGKILL if it does not exit in time."""
        terminate(self.process, timeout_s)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def terminate(process: subprocess.Popen[Any], timeout_s: float) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL: every server process started here."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def start_server(
    model_repo: Path,
    extra_args: Sequence[str] = (),
    *,
    timeout_s: float = 60.0,
    stderr: IO[str] | None = None,
) -> ServerProcess:
    """Start ``python -m server.main`` on loopback, any free port, and wait until SERVING.

    ``stderr``: where its log goes (default: this process's stderr)."""
    command = [
        sys.executable,
        "-m",
        "server.main",
        "--model-repo",
        str(model_repo),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--http-port",
        "0",
        "--log-level",
        "warning",
        *extra_args,
    ]
    return start_process(command, READY_MARK, timeout_s, stderr=stderr)


def start_echo(timeout_s: float = 60.0) -> ServerProcess:
    """The canned-answer grpc.aio server of :mod:`bench.echo` (no metrics)."""
    from bench.echo import READY_MARK as ECHO_MARK

    command = [sys.executable, "-m", "bench.echo"]
    return start_process(command, ECHO_MARK, timeout_s)


def start_process(
    command: list[str], ready_mark: str, timeout_s: float, *, stderr: IO[str] | None = None
) -> ServerProcess:
    """Run ``command`` and wait for the line ``<ready_mark>N metrics M`` on its stdout."""
    t0 = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    deadline = t0 + timeout_s
    while True:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = process.stdout.readline() if ready else ""
        if ready_mark in line:
            cold_start_s = time.monotonic() - t0
            break
        if not ready or not line or time.monotonic() > deadline:
            process.kill()
            process.wait(5)
            process.stdout.close()
            raise RuntimeError(
                f"fashion-serve did not report SERVING within {timeout_s} s "
                f"(exit code {process.returncode}); command: {' '.join(command)}"
            )
    words = line[line.index(ready_mark) + len(ready_mark) :].split()  # "N metrics M [http H]"
    http_port = int(words[words.index("http") + 1]) if "http" in words else 0
    return ServerProcess(process, int(words[0]), int(words[2]), cold_start_s, http_port)


def cold_starts(model_repo: Path, extra_args: Sequence[str], repeats: int) -> list[float]:
    """Start and stop the server ``repeats`` times; seconds to SERVING each time."""
    times = []
    for _ in range(repeats):
        server = start_server(model_repo, extra_args)
        times.append(round(server.cold_start_s, 3))
        server.stop()
    return times
