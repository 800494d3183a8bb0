"""Triton's perf_analyzer, unchanged, against a real server: unary, -b 8 and --streaming over
gRPC; unary and -b 8 over HTTP (``-i http``: the REST API's config and statistics JSON, a JSON
header with binary tensors).

perf_analyzer needs ModelConfig before it sends anything, ModelStatistics (and
"statistics" in ServerMetadata.extensions) for its server-side breakdown, and
aborts on statistics whose counts disagree. scripts/test.sh installs it
(scripts/bootstrap.sh: ensure_perf_analyzer); under CI=true a missing binary fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.triton_perf import HTTP_MODES, MODES, command, find_binary, parse, run

CASES = [(mode, "grpc") for mode in MODES] + [(mode, "http") for mode in HTTP_MODES]


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    binary = find_binary()
    if binary is None:
        hint = "scripts/test.sh installs it: source scripts/bootstrap.sh && ensure_perf_analyzer"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"perf_analyzer is not installed; {hint}")
        pytest.skip(f"perf_analyzer is not installed; {hint}")
    return binary


@pytest.mark.parametrize(("mode", "protocol"), CASES)
def test_perf_analyzer_measures_the_server(
    perf_analyzer, server_process, mode, protocol, capsys
) -> None:
    flags = {**MODES, **HTTP_MODES}[mode]
    port = server_process.port if protocol == "grpc" else server_process.http_port
    argv = command(
        perf_analyzer,
        f"127.0.0.1:{port}",
        flags,
        protocol=protocol,
        concurrency="1:2",
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
    assert [p.concurrency for p in points] == [1, 2], output
    batch = 8 if "-b" in flags else 1
    for point in points:
        assert point.throughput > 0
        s = point.server
        assert s is not None, f"no server-side breakdown:\n{output}"
        assert s.request_count > 0
        # Images counted as computed, requests as answered: they differ only by what was in
        # flight at the window's two edges.
        in_flight = 2 * point.concurrency * batch
        assert abs(s.inference_count - batch * s.request_count) <= in_flight, s
        assert s.execution_count <= s.request_count + 2 * point.concurrency, s
        parts = s.queue_us + s.compute_input_us + s.compute_infer_us + s.compute_output_us
        assert parts <= s.latency_us, s  # every part lies within the request's time
