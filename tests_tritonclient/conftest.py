"""tritonclient against a real `fashion-serve` process.

This directory runs as its own pytest session (scripts/test.sh): tritonclient's
generated `inference` messages and the server's own cannot be registered in one
process's protobuf pool, so nothing here imports server.app or server.oip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import model_repo  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[str]:  # noqa: F811
    """A server process on 127.0.0.1 port 0 -> its "host:port"."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.main",
            "--model-repo",
            str(model_repo),
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--max-images-per-request",
            "64",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "serving on port" not in line:
        process.kill()
        pytest.fail(f"server did not start: {process.communicate()[1]}")
    port = int(line.split("serving on port ")[1].split()[0])
    yield f"127.0.0.1:{port}"
    process.terminate()
    assert process.wait(timeout=30) == 0
    process.communicate()
