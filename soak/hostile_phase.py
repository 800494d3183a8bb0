"""``python -m soak.hostile_phase``: the hostile HTTP clients of :mod:`soak.hostile_http`
against a fresh server, one attack after another, each with :mod:`soak.health_probe`
beside it in a process of its own and the server's memory and descriptors read before
and after: the figures of docs/RELIABILITY.md. :func:`soak_phase` is
``fashion-soak --hostile-http``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from soak import hostile_http as attacks
from soak.http_wire import (
    INFER_PATH,
    MIB,
    Target,
    gzip_bomb,
    invalid_binary_body,
    invalid_json_body,
    request_bytes,
)
from soak.report import emit

# -- health, memory, descriptors beside an attack ----------------------------------


class Probe:
    """:mod:`soak.health_probe` in its own process, started and read around an attack."""

    def __init__(
        self,
        host: str,
        grpc_port: int,
        http_port: int,
        interval_s: float = 0.1,
        *,
        tls_ca: str | None = None,
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "soak.health_probe",
            "--host",
            host,
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--interval-s",
            str(interval_s),
            *(["--tls-ca", tls_ca] if tls_ca else []),
        ]
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "probing"

    def stop(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        out, _ = self.process.communicate("", timeout=30)
        report = json.loads(out.strip().splitlines()[-1])
        summary: dict[str, Any] = {"errors": report["errors"]}
        for kind, values in report["latencies_s"].items():
            summary[kind] = percentiles(values)
        return summary


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    array = np.array(values)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(array, 50)), 3),
        "p99": round(float(np.percentile(array, 99)), 3),
        "max": round(float(array.max()), 3),
    }


async def with_probe(
    probe: Probe, attack: Awaitable[dict[str, Any]], settle_s: float = 0.3
) -> dict[str, Any]:
    """Run ``attack`` with the health probe running beside it."""
    await asyncio.to_thread(probe.start)
    await asyncio.sleep(settle_s)
    try:
        result = await attack
    finally:
        health = await asyncio.to_thread(probe.stop)
    return {**result, "health": health}


def resources(pid: int) -> dict[str, float]:
    process = psutil.Process(pid)
    return {"rss_mib": round(process.memory_info().rss / MIB, 1), "fds": process.num_fds()}


# -- the phase -----------------------------------------------------------------------


ATTACKS: dict[str, Callable[[Target, argparse.Namespace], Awaitable[dict[str, Any]]]] = {}


def attack(name: str) -> Callable[[Any], Any]:
    def register(function: Any) -> Any:
        ATTACKS[name] = function
        return function

    return register


@attack("json_flood")
async def _json_flood(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    body = invalid_json_body(a.body_bytes)
    return await attacks.flood(
        target, request_bytes("POST", INFER_PATH, body), clients=2, seconds=a.seconds
    )


@attack("binary_flood")
async def _binary_flood(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    body = invalid_binary_body(a.body_bytes)
    header_length = body.index(b"}]}") + 3
    request = request_bytes(
        "POST", INFER_PATH, body, {"Inference-Header-Content-Length": str(header_length)}
    )
    return await attacks.flood(target, request, clients=4, seconds=a.seconds)


@attack("held_uploads")
async def _held_uploads(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await attacks.held_uploads(
        target,
        connections=100,
        declared=a.body_bytes,
        send=a.held_bytes or a.body_bytes - 1,
        hold_s=a.seconds,
        rounds=3,
    )


@attack("slowloris")
async def _slowloris(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await attacks.slowloris(target, connections=a.connections, seconds=a.seconds)


@attack("idle_keepalive")
async def _idle(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    async with attacks.idle_connections(target, a.connections) as stats:
        await asyncio.sleep(a.seconds)
    return stats


@attack("many_connections")
async def _many(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await attacks.many_connections(target, a.connections, a.seconds)


@attack("pending_handshakes")
async def _pending(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await attacks.pending_handshakes(target, a.connections, a.seconds)


@attack("gzip_bomb")
async def _gzip(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await attacks.compressed_body(target, gzip_bomb(a.inflated_bytes), "gzip")


@attack("huge_content_length")
async def _huge(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await attacks.huge_declared_length(target)


@attack("expect_continue")
async def _expect(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await attacks.expect_continue_too_large(target, 64 * MIB)


@attack("malformed")
async def _malformed(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await attacks.malformed_requests(target, repeat=5)


async def run_phase(
    host: str,
    grpc_port: int,
    http_port: int,
    pid: int,
    names: Sequence[str],
    args: argparse.Namespace,
    *,
    tls_ca: str | None = None,
) -> dict[str, Any]:
    """Each named attack in turn with the health probe beside it, and the server's memory
    and descriptors before and after. ``tls_ca``: the server serves TLS with a certificate
    for 'localhost' signed by it (the attackers accept any certificate)."""
    context = None
    if tls_ca:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    target = Target(host, http_port, pid, context)
    report: dict[str, Any] = {"before": resources(pid)}
    for name in names:
        probe = Probe(host, grpc_port, http_port, tls_ca=tls_ca)
        start = resources(pid)
        result = await with_probe(probe, ATTACKS[name](target, args))
        await asyncio.sleep(1.0)
        result["resources"] = {"start": start, "end": resources(pid)}
        report[name] = result
    report["after"] = resources(pid)
    return report


def health_ok(result: dict[str, Any], p99_s: float = 1.0) -> bool:
    """No probe failed and both kinds answered with p99 under ``p99_s``."""
    health = result.get("health", {})
    return not health.get("errors") and all(
        health.get(kind, {}).get("p99", p99_s) < p99_s for kind in ("grpc", "http")
    )


# fashion-soak's phase: every attack that needs no special server (TLS, a low fd limit).
SOAK_ATTACKS = (
    "json_flood",
    "binary_flood",
    "held_uploads",
    "slowloris",
    "idle_keepalive",
    "gzip_bomb",
    "huge_content_length",
    "expect_continue",
    "malformed",
)
# After the phase: resident memory and descriptors back near where they were (the parse
# worker's pipes add a few descriptors, and its memory is its own process's).
MAX_RSS_GROWTH_MIB = 100
MAX_FD_GROWTH = 16


async def soak_phase(
    host: str, grpc_port: int, http_port: int, pid: int, seconds: float = 5.0
) -> dict[str, Any]:
    """``fashion-soak --hostile-http``: :data:`SOAK_ATTACKS` in turn, each with health p99
    < 1 s and no failed probe, then memory and descriptors back (``passed``)."""
    # Held uploads stop after 1 MiB of their 4: 300 MB through the loop instead of 1.2 GB,
    # which on two shared cores measures the attacker's CPU more than the server.
    args = argparse.Namespace(
        seconds=seconds,
        body_bytes=4 * MIB - 1024,
        held_bytes=MIB,
        connections=500,
        inflated_bytes=256 * MIB,
    )
    report = await run_phase(host, grpc_port, http_port, pid, SOAK_ATTACKS, args)
    report["rss_growth_mib"] = round(report["after"]["rss_mib"] - report["before"]["rss_mib"], 1)
    report["fd_growth"] = report["after"]["fds"] - report["before"]["fds"]
    report["passed"] = (
        all(health_ok(report[name]) for name in SOAK_ATTACKS)
        and report["rss_growth_mib"] < MAX_RSS_GROWTH_MIB
        and report["fd_growth"] <= MAX_FD_GROWTH
    )
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=10.0, help="length of each timed attack")
    p.add_argument("--body-bytes", type=int, default=4 * MIB - 1024)
    p.add_argument(
        "--held-bytes", type=int, default=0, help="held uploads send this much (0: all but 1)"
    )
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--inflated-bytes", type=int, default=1024 * MIB)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.serverproc import start_server

    p = argparse.ArgumentParser(prog="python -m soak.hostile_phase", description=__doc__)
    p.add_argument("--model-repo", type=Path, required=True)
    p.add_argument("--attack", action="append", choices=sorted(ATTACKS), default=[])
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    p.add_argument(
        "--server-nofile", type=int, default=0, help="lower the server's open-file limit to this"
    )
    add_arguments(p)
    args = p.parse_args(argv)
    server = start_server(args.model_repo, args.server_arg)
    if args.server_nofile:
        psutil.Process(server.pid).rlimit(
            psutil.RLIMIT_NOFILE, (args.server_nofile, args.server_nofile)
        )
    certificates = [a.split("=", 1)[1] for a in args.server_arg if a.startswith("--tls-cert=")]
    try:
        report = asyncio.run(
            run_phase(
                "127.0.0.1",
                server.port,
                server.http_port,
                server.pid,
                args.attack or list(ATTACKS),
                args,
                tls_ca=certificates[0] if certificates else None,  # self-signed: its own CA
            )
        )
    finally:
        report_exit = server.stop()
    report["server_exit_code"] = report_exit
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
