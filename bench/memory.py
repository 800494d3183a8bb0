"""``python -m bench.memory``: resident memory of ``fashion-serve --workers N``, per process.

For each N in ``--workers`` (default 1,2,4): start the server on the model repository,
send ``--requests`` single-image and 64-image Predict calls over several connections
(so every worker has served and grown its arenas), then read VmRSS of the supervisor
and of every worker from /proc. Prints a markdown table and writes ``memory.json`` to
``--out``: what a pod's memory limit must allow as N grows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.serverproc import descendants, memory_mib, start_server
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc


def exercise(target: str, requests: int) -> None:
    """Single images and 64-image batches over a few connections of their own."""
    image = pb.Image(raw=bytes(784))
    for i in range(requests):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(target, options=options) as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            stub.Predict(pb.PredictRequest(images=[image] * (64 if i % 2 else 1)), timeout=60)


def measure(model_repo: Path, workers: int, requests: int) -> dict[str, Any]:
    server = start_server(model_repo, [f"--workers={workers}"], timeout_s=180)
    try:
        exercise(server.target, requests)
        children = sorted(descendants(server.pid)) if workers > 1 else []
        top = memory_mib(server.pid)["rss_mib"]
        per_worker = [memory_mib(pid)["rss_mib"] for pid in children]
        total = top + sum(per_worker)
        return {
            "workers": workers,
            "supervisor_mib" if workers > 1 else "process_mib": top,
            "worker_mib": per_worker,
            "total_mib": round(total, 1),
        }
    finally:
        server.stop()


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workers | supervisor MiB | each worker MiB | all processes MiB |",
        "|---|---|---|---|",
    ]
    for row in rows:
        if row["workers"] == 1:
            lines.append(f"| 1 (one process) | — | {row['process_mib']} | {row['total_mib']} |")
        else:
            each = ", ".join(str(w) for w in row["worker_mib"])
            lines.append(
                f"| {row['workers']} | {row['supervisor_mib']} | {each} | {row['total_mib']} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--model-repo", type=Path, default=Path("models"))
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("docs/perf/workers"))
    args = p.parse_args(argv)
    rows = [measure(args.model_repo, int(n), args.requests) for n in args.workers.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
