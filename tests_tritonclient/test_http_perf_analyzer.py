"""Triton's perf_analyzer, unchanged, over HTTP (``-i http``) against a real server's REST API.

perf_analyzer's HTTP client reads the model config and statistics as JSON (64-bit
counts as numbers), sends a JSON header with binary tensors and asks for binary
outputs. scripts/test.sh installs it (scripts/bootstrap.sh: ensure_perf_analyzer);
under CI=true a missing binary fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.serverproc import ServerProcess, start_server
from bench.triton_perf import HTTP_MODES, command, parse, run
from tests_tritonclient.test_perf_analyzer import perf_analyzer  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def rest_server(model_repo: Path) -> Iterator[ServerProcess]:
    process = start_server(model_repo, ["--max-images-per-request", "64"])
    yield process
    assert process.stop() == 0


@pytest.mark.parametrize("mode", list(HTTP_MODES))
def test_perf_analyzer_over_http_measures_the_server(
    perf_analyzer,  # noqa: F811
    rest_server,
    mode,
    capsys,
) -> None:
    argv = command(
        perf_analyzer,
        f"127.0.0.1:{rest_server.http_port}",
        HTTP_MODES[mode],
        concurrency="1:2",
        interval_ms=1000,
        stability_percent=200,
        protocol="http",
    )
    code, output = run(argv, timeout_s=240)
    with capsys.disabled():
        print(f"\n$ {' '.join(argv)}\n{output[output.find('Request concurrency:') :]}")
    assert code == 0, output
    points = parse(output)
    assert [p.concurrency for p in points] == [1, 2], output
    batch = 8 if "-b" in HTTP_MODES[mode] else 1
    for point in points:
        assert point.throughput > 0
        s = point.server
        assert s is not None, f"no server-side breakdown:\n{output}"
        assert s.request_count > 0
        in_flight = 2 * point.concurrency * batch
        assert abs(s.inference_count - batch * s.request_count) <= in_flight, s
