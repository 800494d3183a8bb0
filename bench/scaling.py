"""``python -m bench.scaling``: does ``--workers N`` scale with the cores of a bigger node?

For each N in ``--workers`` (default 1,2,4,8): ``fashion-serve --workers N`` with the N
worker processes pinned to ``--server-cores`` (N cores of them at most; onnxruntime
threads shared out as the server does), then PyTriton (one instance) on the same cores
for reference, each driven at 1 image x 64 clients and 32 images x 16 clients by the
load generator pinned to ``--client-cores``, so servers and clients never share a core.
Throughput should grow near-linearly with N until the server cores run out.

Pinning: this process sets its own CPU affinity before it starts each server (children
inherit it) and before it starts the load generator's processes.

Needs a node with spare cores (16 is what the issue asks for): on a 2-core machine the
servers and clients share everything and the numbers say nothing about scaling.
Writes ``scaling.json`` and ``scaling.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import inprocess
from bench.cli import git_state, machine
from bench.loadgen import LoadGenerator
from bench.peers import run as peers
from bench.peers import servers, surgery, venvs
from bench.point import Target
from bench.serverproc import start_server

POINTS = [("oip", 1, 64), ("oip", 32, 16)]
PEER_POINTS = [("oip-fp32", 1, 64), ("oip-fp32", 32, 16)]


def cores(text: str) -> list[int]:
    """``0-7,12`` -> [0, 1, ..., 7, 12]."""
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    p.add_argument("--model-repo", type=Path, default=Path("models"))
    p.add_argument("--workers", default="1,2,4,8", help="worker counts to measure")
    p.add_argument("--server-cores", default="0-7", help="CPUs the servers may use")
    p.add_argument("--client-cores", default="8-15", help="CPUs the load generator uses")
    p.add_argument(
        "--processes", type=int, default=0, help="load-generator processes (0: one per client core)"
    )
    p.add_argument("--connections", type=int, default=8, help="connections per process")
    p.add_argument("--duration-s", type=float, default=8.0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--base-port", type=int, default=18100)
    p.add_argument("--work", type=Path, default=Path("bench-out/scaling"))
    p.add_argument("--out", type=Path, default=Path("docs/perf/scaling"))
    p.add_argument("--no-pytriton", action="store_true", help="ours only")
    p.add_argument("--no-install", action="store_true", help="use .venv-pytriton as it is")
    return p


def plan(args: argparse.Namespace) -> list[tuple[str, list[int]]]:
    """(server name, its CPUs) in the order they are measured."""
    server_cores = cores(args.server_cores)
    out = []
    for n in (int(x) for x in args.workers.split(",")):
        if n > len(server_cores):
            raise SystemExit(f"--workers {n} needs {n} server cores; --server-cores has fewer")
        out.append((f"fashion-serve --workers {n}", server_cores[:n]))
        if not args.no_pytriton:
            out.append((f"pytriton on {n} cores", server_cores[:n]))
    return out


def _kind(name: str) -> str:
    return "ours" if name.startswith("fashion-serve") else "pytriton"


def _fewest(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per kind of server, its entry on the fewest cores."""
    fewest: dict[str, dict[str, Any]] = {}
    for name, entry in results["servers"].items():
        kind = _kind(name)
        if kind not in fewest or entry["cores"] < fewest[kind]["cores"]:
            fewest[kind] = entry
    return fewest


def _point(entry: dict[str, Any], i: int) -> dict[str, Any] | None:
    """The entry's i-th point; none where the server broke off before it."""
    points = entry.get("points", [])
    return points[i] if i < len(points) else None


def growth(results: dict[str, Any]) -> dict[str, list[float | None]]:
    """Each server's images/s per point against the same server on the fewest cores.

    Near-linear scaling is this ratio close to cores / fewest cores; a point without a
    measurement (failed, or never reached) has none."""
    fewest = _fewest(results)
    out: dict[str, list[float | None]] = {}
    for name, entry in results["servers"].items():
        base = fewest[_kind(name)]
        ratios: list[float | None] = []
        for i in range(len(POINTS)):
            point, first = _point(entry, i), _point(base, i)
            ok = point and first and point.get("images_per_s") and first.get("images_per_s")
            ratios.append(round(point["images_per_s"] / first["images_per_s"], 2) if ok else None)
        out[name] = ratios
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Command: `{results['command']}`",
        f"Machine: {results['machine']}",
        "",
        "Growth: images/s against the same server on the fewest cores; near-linear is close to",
        "the ratio of the cores (ideal). Server CPU: the cores its processes used; above its",
        "cores means the pinning did not hold (see machine.txt where the device script ran).",
        "",
        "| server | cores | 1 image x 64: images/s | p99 ms | server CPU | growth | "
        "32 images x 16: images/s | p99 ms | server CPU | growth | ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios, fewest = growth(results), _fewest(results)
    for name, entry in results["servers"].items():
        cells = []
        for i, ratio in enumerate(ratios[name]):
            point = _point(entry, i)
            if point is None:
                cells += ["-"] * 4
                continue
            cpu = point.get("server_cpu_cores")
            cells += [
                f"{point['images_per_s']:,.0f}",
                f"{point['latency_ms']['p99']}",
                "-" if cpu is None else f"{cpu:.2f}",
                "-" if ratio is None else f"{ratio:.2f}x",
            ]
        ideal = entry["cores"] / fewest[_kind(name)]["cores"]
        lines.append(f"| {name} | {entry['cores']} | {' | '.join(cells)} | {ideal:g}x |")
    return "\n".join(lines) + "\n"


def save(results: dict[str, Any], out: Path) -> None:
    """``scaling.json`` (with each server's growth) and ``scaling.md`` in ``out``."""
    results["growth"] = growth(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "scaling.md").write_text(markdown(results))


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    args.work = args.work.resolve()
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.scaling", *argv]),
        "machine": machine(),
        "git": git_state(),
        "servers": {},
    }
    steps = plan(args)
    fp32 = args.work / "fashion-fp32.onnx"  # PyTriton's copy of the model (FP32 input)
    if not args.no_pytriton:
        surgery.write_fp32_model(inprocess.model_path(args.model_repo, 0), fp32)
        if not args.no_install:
            venvs.ensure(venvs.ENVS["pytriton"], args.work / "install-pytriton.log")
    everything = os.sched_getaffinity(0)
    try:  # an error half-way must not leave this process pinned to a few cores
        os.sched_setaffinity(0, cores(args.client_cores))  # the load generator's processes
        with LoadGenerator(args.processes or len(cores(args.client_cores))) as load:
            for name, cpus in steps:
                os.sched_setaffinity(0, cpus)  # the server started next inherits it
                n = len(cpus)
                if _kind(name) == "ours":
                    extra = [f"--workers={n}", "--threads=1"] if n > 1 else [f"--threads={n}"]

                    def start(extra: list[str] = extra) -> Any:
                        return start_server(args.model_repo, extra)

                    def target_of(s: Any) -> Target:
                        return Target(s.target, f"127.0.0.1:{s.metrics_port}", s.pid)

                    points = POINTS
                else:

                    def start(n: int = n) -> Any:
                        return servers.start_pytriton(fp32, args.base_port, args.work, n)

                    def target_of(s: Any) -> Target:
                        return Target(s.target, None, s.pid)

                    points = PEER_POINTS
                try:
                    peers._with_server(results, name, start, target_of, points, load, args)
                finally:
                    os.sched_setaffinity(0, everything)
                    if name in results["servers"]:  # absent when it never started
                        results["servers"][name]["cores"] = n
                    # What is measured so far is kept if a server fails (to start, or to
                    # restart after a crash): on a lent machine the run may not be repeatable.
                    save(results, args.out)
    finally:
        os.sched_setaffinity(0, everything)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.perf_analyzer = False
    t0 = time.monotonic()
    results = run(args, argv)
    results["wall_s"] = round(time.monotonic() - t0, 1)
    save(results, args.out)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
