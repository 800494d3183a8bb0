"""Triton's perf_analyzer, unchanged, against a real server: unary, -b 8 and --streaming over
gRPC; unary and -b 8 over HTTP (``-i http``: the REST API's config and statistics JSON, a JSON
header with binary tensors).

perf_analyzer needs ModelConfig before it sends anything, ModelStatistics (and
"statistics" in ServerMetadata.extensions) for its server-side breakdown, and
aborts on statistics whose counts disagree. scripts/test.sh installs it
(scripts/bootstrap.sh: ensure_perf_analyzer); under CI=true a missing binary fails.

With ``--workers 2`` the statistics it reads are the workers' summed by the supervisor, asked
of every worker at each read, whichever worker perf_analyzer's call reached; over HTTP its
connections (one per concurrent request) land on both workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.serverproc import ServerProcess, start_server
from bench.triton_perf import HTTP_MODES, MODES, command, find_binary, parse, run

CASES = [(mode, "grpc") for mode in MODES] + [(mode, "http") for mode in HTTP_MODES]
# Against --workers 2: one case of each kind (batched, streamed, REST) keeps the time down.
WORKERS_CASES = [("unary, -b 8", "grpc"), ("streaming, 1 image", "grpc"), ("http, -b 8", "http")]


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    binary = find_binary()
    if binary is None:
        hint = "scripts/test.sh installs it: source scripts/bootstrap.sh && ensure_perf_analyzer"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"perf_analyzer is not installed; {hint}")
        pytest.skip(f"perf_analyzer is not installed; {hint}")
    return binary


@pytest.fixture(scope="module")
def workers_process(model_repo: Path) -> Iterator[ServerProcess]:
    process = start_server(model_repo, ["--max-images-per-request", "64", "--workers", "2"])
    yield process
    assert process.stop() == 0


@pytest.mark.parametrize(("mode", "protocol"), CASES)
def test_perf_analyzer_measures_the_server(
    perf_analyzer, server_process, mode, protocol, capsys
) -> None:
    _measure(perf_analyzer, server_process, mode, protocol, capsys)


@pytest.mark.parametrize(("mode", "protocol"), WORKERS_CASES)
def test_perf_analyzer_measures_a_server_with_workers(
    perf_analyzer, workers_process, mode, protocol, capsys
) -> None:
    # Up to 4 connections over HTTP: all on one worker in 1 run of 8, so the sum is tested.
    _measure(perf_analyzer, workers_process, mode, protocol, capsys, concurrency=(1, 4))


def _measure(
    perf_analyzer: Path,
    process: ServerProcess,
    mode: str,
    protocol: str,
    capsys: pytest.CaptureFixture[str],
    concurrency: tuple[int, int] = (1, 2),
) -> None:
    low, high = concurrency
    flags = {**MODES, **HTTP_MODES}[mode]
    port = process.port if protocol == "grpc" else process.http_port
    argv = command(
        perf_analyzer,
        f"127.0.0.1:{port}",
        flags,
        protocol=protocol,
        concurrency=f"{low}:{high}:{high - low}",
        interval_ms=1000,
        # A few seconds on a shared machine: lenient stability, still three agreeing windows.
        stability_percent=200,
    )
    code, output = run(argv, timeout_s=240)
    figures = output[output.find("Request concurrency:") :]
    with capsys.disabled():  # perf_analyzer's figures, server-side breakdown included
        print(f"\n$ {' '.join(argv)}\n{figures}")
    assert code == 0, output
    points = parse(output)
    assert [p.concurrency for p in points] == [low, high], output
    batch = 8 if "-b" in flags else 1
    for point in points:
        assert point.throughput > 0
        s = point.server
        assert s is not None, f"no server-side breakdown:\n{output}"
        assert s.request_count > 0
        # The statistics count what the client sent (summed over the workers, with workers),
        # give or take what was in flight at the measurement's edges and, with workers, what
        # was answered while the supervisor's read went round them (2 %: a sum that missed a
        # worker would be about half).
        assert point.client_requests is not None, output
        slack = 2 * point.concurrency + 0.02 * point.client_requests
        assert abs(s.request_count - point.client_requests) <= slack, (s, point)
        # Images counted as computed, requests as answered: they differ only by what was in
        # flight at the window's two edges.
        in_flight = 2 * point.concurrency * batch
        assert abs(s.inference_count - batch * s.request_count) <= in_flight, s
        assert s.execution_count <= s.request_count + 2 * point.concurrency, s
        parts = s.queue_us + s.compute_input_us + s.compute_infer_us + s.compute_output_us
        assert parts <= s.latency_us, s  # every part lies within the request's time
