"""``fashion-bench``: served throughput and latency against the in-process compute limit.

Starts a server itself (``--model-repo``, stopped at the end) or targets a running one
on loopback (``--target``). For each API x request size x concurrency: a warm-up, then
a fixed measured window of closed-loop traffic. Writes results.json, results.md and
throughput.png to ``--out``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import inprocess, report
from bench.loadgen import LoadGenerator
from bench.payload import APIS, HTTP_APIS
from bench.point import Target, measure
from bench.serverproc import ServerProcess, cold_starts, memory_mib, start_echo, start_server
from server.cgroup import available_cpus

QUICK = {
    "duration_s": 1.0,
    "warmup_s": 0.5,
    "concurrency": [1, 8],
    "cold_starts": 1,
    "limit_s": 0.5,
    "processes": 1,
}
FULL = {
    "duration_s": 10.0,
    "warmup_s": 2.0,
    "concurrency": [1, 4, 8, 16, 32, 64],
    "cold_starts": 3,
    "limit_s": 3.0,
    "processes": 2,
}


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,8,32, got {text!r}")
    return values


def _apis(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in APIS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown API {bad}; choose from {', '.join(APIS)}")
    return values


def _loopback(address: str) -> str:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected a loopback HOST:PORT, got {address!r}")
    return address


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fashion-bench", description=__doc__)
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--model-repo",
        type=Path,
        default=Path("models"),
        help="start a server on this repository (default models)",
    )
    where.add_argument(
        "--target",
        type=_loopback,
        default=None,
        help="use a running server at HOST:PORT (loopback only)",
    )
    p.add_argument(
        "--target-metrics",
        type=_loopback,
        default=None,
        help="with --target: its metrics HOST:PORT (for the mean batch size)",
    )
    p.add_argument(
        "--target-http",
        type=_loopback,
        default=None,
        help="with --target: its REST API HOST:PORT (--http-port; for the http-* APIs)",
    )
    p.add_argument(
        "--target-pid",
        type=int,
        default=None,
        help="with --target: its pid (for server CPU and memory)",
    )
    p.add_argument(
        "--model-version",
        type=int,
        default=0,
        help="version to serve and to measure in-process (0 = the newest)",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra fashion-serve flag (repeatable), e.g. --server-arg=--threads=1",
    )
    p.add_argument("--duration-s", type=float, help="measured time per point (10; quick 1)")
    p.add_argument("--warmup-s", type=float, help="warm-up per point (2; quick 0.5)")
    p.add_argument("--concurrency", type=_ints, help="client counts (1,4,8,16,32,64; quick 1,8)")
    p.add_argument("--sizes", type=_ints, default=[1, 32], help="images per request (1,32)")
    p.add_argument(
        "--apis",
        type=_apis,
        default=list(APIS),
        help="comma list of predict, oip, stream, http-json, http-binary (REST)",
    )
    p.add_argument("--processes", type=int, help="load-generator processes (2; quick 1)")
    p.add_argument(
        "--connections",
        type=int,
        default=4,
        help="TCP connections in all (spread over the processes)",
    )
    p.add_argument(
        "--limit-threads",
        type=int,
        default=0,
        help="intra-op threads of the in-process limit (0 = the server's --threads, "
        "else the usable CPUs, like the server)",
    )
    p.add_argument("--limit-s", type=float, help="time per batch size of the in-process limit")
    p.add_argument("--cold-starts", type=int, help="extra start/stop cycles timed (3; quick 1)")
    p.add_argument(
        "--profile-s",
        type=float,
        default=0.0,
        help="also py-spy the server under 1-image Predict at concurrency 1 (seconds)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also drive a canned-answer grpc.aio server (bench.echo) with 1-image "
        "requests at the same concurrencies: the cost of Python gRPC alone",
    )
    p.add_argument("--out", type=Path, default=Path("docs/perf"), help="output directory")
    p.add_argument("--quick", action="store_true", help="CI-sized run (short points, 1,8)")
    return p


def _defaults(args: argparse.Namespace) -> None:
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _server_threads(server_args: Sequence[str]) -> int:
    """The value of --threads among pass-through server flags (0 when absent)."""
    for k, arg in enumerate(server_args):
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
        if arg == "--threads" and k + 1 < len(server_args):
            return int(server_args[k + 1])
    return 0


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = model or platform.machine()
    return f"{os.cpu_count()} CPUs {cpu}, Python {platform.python_version()}"


def git_state() -> dict[str, Any]:
    """The commit measured, and whether server/ had uncommitted changes (a moving target)."""

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except OSError:  # no git there (a device machine): the run still counts, unlabelled
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:  # no git or no repository (a copied tree): nothing known, not "clean"
        return {"commit": None, "server_dirty": None}
    return {"commit": commit, "server_dirty": bool(git("status", "--porcelain", "--", "server"))}


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    server: ServerProcess | None = None
    results: dict[str, Any] = {
        "command": " ".join(["fashion-bench", *argv]),
        "machine": machine(),
        "git": git_state(),
    }
    if args.target:
        target = Target(
            args.target, args.target_metrics, args.target_pid, http_address=args.target_http
        )
    else:
        server = start_server(args.model_repo, args.server_arg)
        target = Target(
            server.target,
            f"127.0.0.1:{server.metrics_port}",
            server.pid,
            http_address=f"127.0.0.1:{server.http_port}" if server.http_port else None,
        )
        results["server"] = {
            "args": args.server_arg,
            "cold_start_s": round(server.cold_start_s, 3),
            **memory_mib(server.pid),
        }
    try:
        threads = args.limit_threads or _server_threads(args.server_arg)
        if not threads:
            threads = available_cpus()
        results["limit_threads"] = threads
        if args.target and args.model_repo == Path("models") and not Path("models").is_dir():
            raise SystemExit("fashion-bench: --model-repo is needed for the in-process limit")
        path = inprocess.model_path(args.model_repo, args.model_version)
        # Measured before and after the served points (other load on a shared machine
        # only ever lowers it); the higher of the two is the limit.
        before = inprocess.images_per_second(
            path, args.sizes, threads=threads, duration_s=args.limit_s
        )
        _log(f"in-process limit before: {before} images/s")
        results["points"] = _points(args, target, server, results)
        after = inprocess.images_per_second(
            path, args.sizes, threads=threads, duration_s=args.limit_s
        )
        _log(f"in-process limit after: {after} images/s")
        limit = {n: max(before[n], after[n]) for n in args.sizes}
        results["inprocess_runs"] = {
            "before": {str(n): v for n, v in before.items()},
            "after": {str(n): v for n, v in after.items()},
        }
        results["inprocess_images_per_s"] = {str(n): v for n, v in limit.items()}
        for point in results["points"]:
            point["limit_images_per_s"] = limit[point["size"]]
            point["fraction_of_limit"] = round(point["images_per_s"] / limit[point["size"]], 3)
        if args.floor:
            results["floor_points"] = _floor(args)
        if server is not None:
            memory = memory_mib(server.pid)
            results["server"].update(
                rss_end_mib=memory["rss_mib"], peak_rss_mib=memory["peak_rss_mib"]
            )
    finally:
        if server is not None:
            results["server"]["exit_code"] = server.stop()
    if server is not None and args.cold_starts:
        results["server"]["cold_starts_s"] = cold_starts(
            args.model_repo, args.server_arg, args.cold_starts
        )
    return results


def _points(
    args: argparse.Namespace, target: Target, server: ServerProcess | None, results: dict[str, Any]
) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    with LoadGenerator(args.processes) as load:
        if args.profile_s > 0 and server is not None:
            from bench.profile import profile_single_image

            results["profile"] = profile_single_image(load, target, args.profile_s, args.out)
        for api in args.apis:
            for size in args.sizes:
                for conc in args.concurrency:
                    point = measure(
                        load,
                        target,
                        api=api,
                        size=size,
                        concurrency=conc,
                        connections=args.connections,
                        warmup_s=args.warmup_s,
                        duration_s=args.duration_s,
                    )
                    points.append(point)
                    if server is not None:
                        results["server"].setdefault(
                            "rss_after_warmup_mib", memory_mib(server.pid)["rss_mib"]
                        )
                    lat = point["latency_ms"]
                    _log(
                        f"{api:11} size {size:3} conc {conc:3}: {point['images_per_s']:9.0f} img/s "
                        f"p50 {lat['p50']} p99 {lat['p99']} ms, errors {point['errors']}, "
                        f"batch {point['mean_batch_size']}, cpu server "
                        f"{point['server_cpu_cores']} client {point['client_cpu_cores']}"
                    )
    return points


def _floor(args: argparse.Namespace) -> list[dict[str, Any]]:
    echo = start_echo()
    points = []
    try:
        with LoadGenerator(args.processes) as load:
            # The canned-answer server speaks gRPC only.
            for api in (a for a in args.apis if a not in HTTP_APIS):
                for conc in args.concurrency:
                    point = measure(
                        load,
                        Target(echo.target, None, echo.pid),
                        api=api,
                        size=1,
                        concurrency=conc,
                        connections=args.connections,
                        warmup_s=args.warmup_s,
                        duration_s=args.duration_s,
                    )
                    points.append(point)
                    _log(
                        f"floor {api:7} conc {conc:3}: {point['requests_per_s']:7.0f} req/s "
                        f"p50 {point['latency_ms']['p50']} p99 {point['latency_ms']['p99']} ms, "
                        f"cpu server {point['server_cpu_cores']} "
                        f"({point['server_cpu_ms_per_request']} ms/req)"
                    )
    finally:
        echo.stop()
    return points


def _log(message: str) -> None:
    print(f"fashion-bench: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _defaults(args)
    if args.model_version:  # the served model and the in-process limit must be the same file
        args.server_arg = [*args.server_arg, f"--model-version={args.model_version}"]
    t0 = time.monotonic()
    results = run(args, argv)
    results["wall_s"] = round(time.monotonic() - t0, 1)
    for path in report.write(results, args.out):
        _log(f"wrote {path}")
    # RESOURCE_EXHAUSTED is the server's designed answer to more images than --max-queue
    # (e.g. 64 clients x 32 images): reported, not a failure. Anything else is.
    failed = sum(
        p["bad_responses"]
        + sum(n for code, n in p["errors_by_code"].items() if code != "RESOURCE_EXHAUSTED")
        for p in results["points"] + results.get("floor_points", [])
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
