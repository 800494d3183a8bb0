"""The unary path at 1 image x 32 clients: where its time goes, and A/B runs of server changes.

    python -m bench.experiments.unary profile --model-repo R [--seconds 8] [--out DIR]
    python -m bench.experiments.unary ab --model-repo R --a TREE_A --b TREE_B [--repeats 4]
    python -m bench.experiments.unary ab --model-repo R --b-server-arg=--batch-concurrency=2 ...
    python -m bench.experiments.unary hops --model-repo R [--repeats 3]

``profile``: py-spy (``--native``) on the server under ModelInfer, 1 image/request,
concurrency 32, split into bench.profile's buckets (grpc core, asyncio, ours by module).
``ab``: two servers started from two source trees (``python -m server.main`` run with each
tree as its working directory, so its ``server`` package is the one imported), measured
alternately A, B, A, B... with the same load, so drift on a shared machine hits both sides.
``hops``: the floor (bench.echo) with each wait of :mod:`bench.experiments.echo_wait`, then
ours, in turns: what a thread hop per request or per batch costs on its own, beside the whole
request path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.experiments import echo_wait
from bench.loadgen import LoadGenerator
from bench.point import Target, measure
from bench.profile import RATE_HZ, py_spy, summarise
from bench.serverproc import ServerProcess, start_server


def _start_in(tree: Path, model_repo: Path, args: Sequence[str]) -> ServerProcess:
    here = Path.cwd()
    os.chdir(tree)  # the child imports ``server`` from its working directory
    try:
        return start_server(model_repo.resolve(), args)
    finally:
        os.chdir(here)


def _target(server: ServerProcess) -> Target:
    port = server.metrics_port  # bench.echo has none (-1)
    return Target(server.target, f"127.0.0.1:{port}" if port > 0 else None, server.pid)


def _alternate(
    servers: dict[str, ServerProcess], args: argparse.Namespace, size: int
) -> dict[str, list[dict[str, Any]]]:
    """Each server in turn, ``--repeats`` rounds, the same load: drift hits every side."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    try:
        with LoadGenerator(2) as load:
            for _ in range(args.repeats):
                for name, server in servers.items():
                    point = measure(
                        load,
                        _target(server),
                        api=args.api,
                        size=size,
                        concurrency=args.concurrency,
                        connections=4,
                        warmup_s=1.0,
                        duration_s=args.duration_s,
                    )
                    runs[name].append(point)
                    print(
                        f"{name}: {point['images_per_s']:8.0f} img/s p50 "
                        f"{point['latency_ms']['p50']} ms, "
                        f"cpu/req {point['server_cpu_ms_per_request']} ms, "
                        f"mean batch {point['mean_batch_size']}, errors {point['errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
    return runs


def _summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    ips = [p["images_per_s"] for p in points]
    cpu = [p["server_cpu_ms_per_request"] for p in points if p["server_cpu_ms_per_request"]]
    batch = [p["mean_batch_size"] for p in points if p.get("mean_batch_size")]
    return {
        "images_per_s": ips,
        "median_images_per_s": statistics.median(ips),
        "median_server_cpu_ms_per_request": statistics.median(cpu) if cpu else None,
        "median_mean_batch": statistics.median(batch) if batch else None,
        "errors": sum(p["errors"] + p["bad_responses"] for p in points),
    }


def profile(args: argparse.Namespace) -> dict[str, Any]:
    binary = py_spy()
    if binary is None:
        raise SystemExit("py-spy not installed (it is in the dev extra)")
    server = start_server(args.model_repo, args.server_arg)
    raw = args.out / "profile-oip-1image-c32.txt"
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with LoadGenerator(2) as load:
            used, schedule = load.start(
                target=server.target,
                api=args.api,
                size=1,
                concurrency=32,
                connections=4,
                warmup_s=1.0,
                duration_s=args.seconds + 1.0,
            )
            time.sleep(max(0.0, schedule.measure_from - time.monotonic()))
            command = [binary, "record", "--pid", str(server.pid), "--duration"]
            command += [str(int(args.seconds)), "--rate", str(RATE_HZ), "--format", "raw"]
            command += ["--native", "--threads", "--output", str(raw)]
            subprocess.run(command, capture_output=True, timeout=args.seconds + 60, check=True)
            outcome = load.collect(used, timeout_s=args.seconds + 30)
    finally:
        server.stop()
    return {
        "command": " ".join(["py-spy", *command[1:]]),
        "load": f"{args.api}, 1 image/request, concurrency 32",
        "requests_per_s_while_profiled": round(len(outcome.latencies_s) / (args.seconds + 1), 1),
        **summarise(raw.read_text(), top=25),
    }


def ab(args: argparse.Namespace) -> dict[str, Any]:
    servers = {
        "A": _start_in(args.a, args.model_repo, args.server_arg),
        "B": _start_in(args.b, args.model_repo, [*args.server_arg, *args.b_server_arg]),
    }
    runs = _alternate(servers, args, args.size)
    result = {side: _summary(points) for side, points in runs.items()}
    a, b = result["A"]["median_images_per_s"], result["B"]["median_images_per_s"]
    result["b_over_a"] = round(b / a, 3) if a else None
    # Pairwise ratios (each B against the A just before it): the spread is the noise.
    result["pairwise_b_over_a"] = [
        round(pb["images_per_s"] / pa["images_per_s"], 3)
        for pa, pb in zip(runs["A"], runs["B"], strict=True)
        if pa["images_per_s"]
    ]
    return result


def hops(args: argparse.Namespace) -> dict[str, Any]:
    servers = {f"echo --wait {w}": echo_wait.start(w) for w in echo_wait.WAITS}
    servers["fashion-serve"] = start_server(args.model_repo, args.server_arg)
    runs = _alternate(servers, args, 1)
    return {name: _summary(points) for name, points in runs.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.experiments.unary", description=__doc__)
    p.add_argument("mode", choices=("profile", "ab", "hops"))
    p.add_argument("--model-repo", type=Path, default=Path("models"))
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument(
        "--b-server-arg", action="append", default=[], help="extra fashion-serve flag, B only"
    )
    p.add_argument("--api", default="oip")
    p.add_argument("--size", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0, help="profile length")
    p.add_argument("--duration-s", type=float, default=4.0, help="each A/B point")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--a", type=Path, default=Path("."), help="source tree A")
    p.add_argument("--b", type=Path, help="source tree B")
    p.add_argument("--out", type=Path, default=Path("bench-out/unary"))
    args = p.parse_args(argv)
    if args.mode == "ab" and args.b is None:
        args.b = args.a  # same tree: an A/B of --b-server-arg flags
    result = {"profile": profile, "ab": ab, "hops": hops}[args.mode](args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
