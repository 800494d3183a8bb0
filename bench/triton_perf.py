"""Triton's perf_analyzer against fashion-serve: the Triton-compatible path, by Triton's tool.

    python -m bench.triton_perf --model-repo models [--interval-ms 2000] [--concurrency 1:8:7]
                                [--out docs/perf] [-- FASHION-SERVE FLAGS]

Starts a server (as :mod:`bench.serverproc` does), then runs ``perf_analyzer -i grpc``
three ways against it: unary single images, unary ``-b 8`` and ``--streaming``
(ModelStreamInfer); then ``-i http`` (the REST API) unary and ``-b 8``. Prints
perf_analyzer's own output and a markdown table of its client figures and
server-side breakdown (from our ModelStatistics); with ``--out``
also writes them to ``perf_analyzer.txt`` and ``perf_analyzer.md`` there. The binary is
the one ``scripts/bootstrap.sh``'s ``ensure_perf_analyzer`` installs (``$PERF_ANALYZER``,
else ``.venv-perf/perf_analyzer``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.contract import MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = ROOT / ".venv-perf" / "perf_analyzer"
MODES: dict[str, list[str]] = {
    "unary, 1 image": [],
    "unary, -b 8": ["-b", "8"],
    "streaming, 1 image": ["--streaming"],
}
# The same over REST (-i http: JSON header + binary tensors); HTTP has no streaming.
HTTP_MODES: dict[str, list[str]] = {
    "http, 1 image": [],
    "http, -b 8": ["-b", "8"],
}

_SUMMARY = re.compile(r"^Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec$")
_BLOCK = re.compile(r"^Request concurrency: (\d+)$")
_CLIENT = re.compile(r"Client:\s+Request count: (\d+)")
_SERVER = re.compile(
    r"Inference count: (\d+)\s+Execution count: (\d+)\s+Successful request count: (\d+)\s+"
    r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ "
    r"compute input (\d+) usec \+ compute infer (\d+) usec \+ compute output (\d+) usec\)"
)


@dataclass(frozen=True)
class ServerSide:
    """perf_analyzer's server-side breakdown of one measurement (from ModelStatistics)."""

    inference_count: int
    execution_count: int
    request_count: int
    latency_us: int
    overhead_us: int
    queue_us: int
    compute_input_us: int
    compute_infer_us: int
    compute_output_us: int


@dataclass(frozen=True)
class Point:
    concurrency: int
    throughput: float  # inferences (images) per second, as perf_analyzer counts them
    latency_us: int  # client-side average
    server: ServerSide | None
    client_requests: int | None = None  # requests the client completed in the measurement


def find_binary() -> Path | None:
    """$PERF_ANALYZER, else the bootstrap's .venv-perf/perf_analyzer, else None."""
    named = os.environ.get("PERF_ANALYZER")
    path = Path(named) if named else DEFAULT_BINARY
    return path if path.is_file() and os.access(path, os.X_OK) else None


def command(
    binary: Path,
    target: str,
    mode: Sequence[str],
    *,
    concurrency: str = "1:2",
    interval_ms: int = 1000,
    stability_percent: int = 50,
    protocol: str = "grpc",
) -> list[str]:
    """``target`` is host:port of the gRPC port, or of --http-port with ``protocol="http"``."""
    return [
        str(binary),
        "-m",
        MODEL_NAME,
        "-i",
        protocol,
        "-u",
        target,
        "--concurrency-range",
        concurrency,
        "--measurement-interval",
        str(interval_ms),
        # perf_analyzer retries a concurrency until three windows agree within this; on a
        # shared machine the default (10 %) can take every trial and still fail.
        "--stability-percentage",
        str(stability_percent),
        *mode,
    ]


def parse(output: str) -> list[Point]:
    """perf_analyzer's text output -> one Point per concurrency (summary lines + server blocks)."""
    servers: dict[int, ServerSide] = {}
    clients: dict[int, int] = {}
    blocks = re.split(r"^(?=Request concurrency: )", output, flags=re.MULTILINE)
    for block in blocks:
        head = _BLOCK.match(block.splitlines()[0]) if block.strip() else None
        if not head:
            continue
        if found := _SERVER.search(block):
            servers[int(head.group(1))] = ServerSide(*(int(g) for g in found.groups()))
        if counted := _CLIENT.search(block):
            clients[int(head.group(1))] = int(counted.group(1))
    points = []
    for line in output.splitlines():
        if match := _SUMMARY.match(line.strip()):
            concurrency = int(match.group(1))
            points.append(
                Point(
                    concurrency,
                    float(match.group(2)),
                    int(match.group(3)),
                    servers.get(concurrency),
                    clients.get(concurrency),
                )
            )
    return points


def run(argv: Sequence[str], timeout_s: float = 300.0) -> tuple[int, str]:
    """Run perf_analyzer; (exit code, stdout + stderr)."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    return done.returncode, done.stdout + done.stderr


def table(results: dict[str, list[Point]]) -> str:
    lines = [
        "| mode | concurrency | throughput (img/s) | client latency (us) | server latency (us) "
        "| queue | compute infer | overhead | executions / requests |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, points in results.items():
        for p in points:
            s = p.server
            server = (
                f"{s.latency_us} | {s.queue_us} | {s.compute_infer_us} | {s.overhead_us} "
                f"| {s.execution_count / max(1, s.request_count):.2f}"
                if s
                else "- | - | - | - | -"
            )
            lines.append(
                f"| {mode} | {p.concurrency} | {p.throughput:,.0f} | {p.latency_us} | {server} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.serverproc import start_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=ROOT / "models")
    parser.add_argument("--concurrency", default="1:8:7", help="perf_analyzer's range")
    parser.add_argument("--interval-ms", type=int, default=2000)
    parser.add_argument("--stability-percent", type=int, default=50)
    parser.add_argument("--out", type=Path, help="directory for perf_analyzer.{txt,md}")
    parser.add_argument("server_args", nargs="*", help="extra fashion-serve flags (after --)")
    args = parser.parse_args(argv)
    binary = find_binary()
    if binary is None:
        print(
            "perf_analyzer not found: run `source scripts/bootstrap.sh && ensure_perf_analyzer`",
            file=sys.stderr,
        )
        return 2
    server = start_server(args.model_repo, args.server_args)
    results: dict[str, list[Point]] = {}
    transcript: list[str] = []
    try:
        runs = [(name, mode, "grpc", server.target) for name, mode in MODES.items()]
        http_target = f"127.0.0.1:{server.http_port}"
        runs += [(name, mode, "http", http_target) for name, mode in HTTP_MODES.items()]
        for name, mode, protocol, target in runs:
            argv_pa = command(
                binary,
                target,
                mode,
                concurrency=args.concurrency,
                interval_ms=args.interval_ms,
                stability_percent=args.stability_percent,
                protocol=protocol,
            )
            shown = " ".join(["perf_analyzer", *argv_pa[1:]])
            print("$", shown, flush=True)
            code, output = run(argv_pa)
            print(output, flush=True)
            transcript += [f"$ {shown}", output]
            if code != 0:
                print(f"perf_analyzer exited {code} ({name})", file=sys.stderr)
                return 1
            results[name] = parse(output)
    finally:
        server.stop()
    summary = table(results)
    print(summary)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "perf_analyzer.txt").write_text("\n".join(transcript))
        (args.out / "perf_analyzer.md").write_text(summary + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
