"""tritonclient against a real `fashion-serve` process.

This directory runs as its own pytest session (scripts/test.sh): tritonclient's
generated `inference` messages and the server's own cannot be registered in one
process's protobuf pool, so nothing here imports server.app or server.oip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.serverproc import start_server
from tests.conftest import model_repo  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[str]:  # noqa: F811
    """A server process on 127.0.0.1 port 0 -> its "host:port"."""
    process = start_server(model_repo, ["--max-images-per-request", "64"])
    yield process.target
    assert process.stop() == 0
