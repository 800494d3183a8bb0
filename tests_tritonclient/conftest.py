"""tritonclient against a real `fashion-serve` process.

This directory runs as its own pytest session (scripts/test.sh): tritonclient's
generated `inference` messages and the server's own cannot be registered in one
process's protobuf pool, so nothing here imports server.app or server.oip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.serverproc import ServerProcess, start_server
from tests.conftest import model_repo  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="module")
def server_process(model_repo: Path) -> Iterator[ServerProcess]:  # noqa: F811
    """A server process on 127.0.0.1, every port 0 (gRPC, REST, metrics)."""
    process = start_server(model_repo, ["--max-images-per-request", "64"])
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def server(server_process: ServerProcess) -> str:
    """That server's gRPC "host:port"."""
    return server_process.target
