"""``python -m bench.memory``: resident memory of ``fashion-serve --workers N``, per process.

For each N in ``--workers`` (default 1,2,4): start the server on the model repository,
send ``--requests`` single-image and 64-image Predict calls over several connections
(so every worker has served and grown its arenas), then read VmRSS of the supervisor
and of every worker from /proc. Then send REST JSON bodies of 256 images (the largest a
request may hold, parsed off the event loop) on fresh connections until every worker has
started its REST parse worker, and read again: each worker, and what it started (its parse
worker). Prints a markdown table and writes
``memory.json`` to ``--out``: what a pod's memory limit must allow as N grows.

``--versions 1,2,4`` measures the other axis instead, in one process: K loaded versions of
one model (copies of the repository's newest version of ``--model``, served together by a
``config.json`` policy ``latest: K``), each having answered single images and 64-image
batches; writes ``memory-versions.json``: what each loaded version adds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.serverproc import ServerProcess, descendants, memory_mib, start_server
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.contract import CONFIG_FILE, METADATA_FILE
from server.process_metrics import children_by_parent, role
from server.repository import latest_version
from server.rest_worker import OFF_LOOP_BYTES


def exercise(target: str, requests: int, *, model: str = "", version: int = 0) -> None:
    """Single images and 64-image batches over a few connections of their own."""
    image = pb.Image(raw=bytes(784))
    for i in range(requests):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(target, options=options) as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            request = pb.PredictRequest(
                images=[image] * (64 if i % 2 else 1), model_name=model, model_version=version
            )
            stub.Predict(request, timeout=60)


def large_json_body(images: int = 256) -> bytes:
    """A REST infer body parsed in the REST parse worker process (UINT8 pixels of 255)."""
    tensor = {"name": "images", "datatype": "UINT8", "shape": [images, 28, 28]}
    body = json.dumps({"inputs": [{**tensor, "data": [255] * (images * 784)}]}).encode()
    assert len(body) >= OFF_LOOP_BYTES, "would be parsed on the event loop"
    return body


def post(url: str, body: bytes) -> int:
    """On a connection of its own: the kernel picks the worker that answers."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.status)


def start_parse_workers(server: ServerProcess, count: int, body: bytes, tries: int = 80) -> None:
    """Large JSON bodies until ``count`` REST parse workers run (one per server process)."""
    url = f"http://127.0.0.1:{server.http_port}/v2/models/fashion/infer"
    for _ in range(tries):
        if post(url, body) != 200:
            raise SystemExit("bench.memory: a REST infer call failed")
        if len([c for c in descendants(server.pid) if role(c) == "rest-parse"]) == count:
            return
    raise SystemExit(f"bench.memory: {tries} bodies did not reach every worker")


def measure_versions(model_repo: Path, model: str, count: int, requests: int) -> dict[str, Any]:
    """One process serving ``count`` copies of ``model``'s newest version at once."""
    newest = latest_version(model_repo, model)
    if newest is None:
        raise SystemExit(f"bench.memory: {model_repo} has no version of {model!r}")
    with tempfile.TemporaryDirectory(prefix="fashion-memory-") as tmp:
        root = Path(tmp) / model
        for version in range(1, count + 1):
            copy = root / str(version)
            shutil.copytree(model_repo / model / str(newest), copy)
            # A version is served only under the number its metadata records.
            meta = json.loads((copy / METADATA_FILE).read_text())
            (copy / METADATA_FILE).write_text(json.dumps({**meta, "version": version}))
        policy = {"version_policy": {"latest": count}}
        (root / CONFIG_FILE).write_text(json.dumps(policy) + "\n")
        server = start_server(Path(tmp), [f"--default-model={model}"], timeout_s=180)
        try:
            for version in range(1, count + 1):
                exercise(server.target, requests, model=model, version=version)
            return {"versions": count, "process_mib": memory_mib(server.pid)["rss_mib"]}
        finally:
            server.stop()


def measure(model_repo: Path, workers: int, requests: int) -> dict[str, Any]:
    server = start_server(model_repo, [f"--workers={workers}"], timeout_s=180)
    try:
        exercise(server.target, requests)
        servers = sorted(children_by_parent().get(server.pid, [])) if workers > 1 else []
        top = memory_mib(server.pid)["rss_mib"]
        per_worker = [memory_mib(pid)["rss_mib"] for pid in servers]
        total = top + sum(per_worker)
        start_parse_workers(server, workers, large_json_body())
        # What each server process started: its REST parse worker.
        started = [descendants(pid) for pid in (servers or [server.pid])]
        parse = [round(sum(memory_mib(c)["rss_mib"] for c in kids), 1) for kids in started]
        everything = [server.pid, *descendants(server.pid)]
        # The workers grew too: a 256-image batch's buffers stay in onnxruntime's arena.
        grown = [memory_mib(pid)["rss_mib"] for pid in (servers or [server.pid])]
        return {
            "workers": workers,
            "supervisor_mib" if workers > 1 else "process_mib": top,
            "worker_mib": per_worker,
            "total_mib": round(total, 1),
            "worker_mib_after_256_image_bodies": grown,
            "rest_parse_mib": parse,
            "rest_parse_processes_per_worker": [len(kids) for kids in started],
            "total_with_rest_parse_mib": round(
                sum(memory_mib(pid)["rss_mib"] for pid in everything), 1
            ),
        }
    finally:
        server.stop()


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workers | supervisor MiB | each worker MiB | all processes MiB | each worker, after "
        "256-image REST bodies MiB | its REST parse processes MiB | all processes then MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        grown = ", ".join(str(m) for m in row["worker_mib_after_256_image_bodies"])
        parse = ", ".join(str(m) for m in row["rest_parse_mib"])
        after = f"{grown} | {parse} | {row['total_with_rest_parse_mib']}"
        if row["workers"] == 1:
            lines.append(
                f"| 1 (one process) | — | {row['process_mib']} | {row['total_mib']} | {after} |"
            )
        else:
            each = ", ".join(str(w) for w in row["worker_mib"])
            lines.append(
                f"| {row['workers']} | {row['supervisor_mib']} | {each} | {row['total_mib']} "
                f"| {after} |"
            )
    return "\n".join(lines)


def markdown_versions(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| loaded versions | process MiB | per version beyond the first MiB |",
        "|---|---|---|",
    ]
    first = rows[0]
    for row in rows:
        extra = row["versions"] - first["versions"]
        each = round((row["process_mib"] - first["process_mib"]) / extra, 1) if extra else "—"
        lines.append(f"| {row['versions']} | {row['process_mib']} | {each} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--model-repo", type=Path, default=Path("models"))
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--versions", default="", help="e.g. 1,2,4: loaded versions, not workers")
    p.add_argument("--model", default="fashion", help="the model --versions copies")
    p.add_argument("--out", type=Path, default=Path("docs/perf/workers"))
    args = p.parse_args(argv)
    if args.versions:
        counts = [int(n) for n in args.versions.split(",")]
        found = [measure_versions(args.model_repo, args.model, k, args.requests) for k in counts]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory-versions.json").write_text(json.dumps(found, indent=2) + "\n")
        print(markdown_versions(found))
        return 0
    rows = [measure(args.model_repo, int(n), args.requests) for n in args.workers.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
