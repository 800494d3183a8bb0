"""The real ``curl`` binary as a test client: what a person types, byte for byte on the wire.

Run as a subprocess so the server (on the test's event loop) keeps serving while
curl waits. Under CI=true a missing curl fails instead of skipping (scripts/test.sh
installs it: scripts/bootstrap.sh ``ensure_container_tools``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def curl_binary() -> str:
    found = shutil.which("curl")
    if found is None:
        hint = "install curl (scripts/bootstrap.sh ensure_container_tools does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"curl is not installed; {hint}")
        pytest.skip(f"curl is not installed; {hint}")
    return found


def parse_reply(raw: bytes) -> Reply:
    """``curl -i`` output -> the final response (interim 100 Continue answers skipped)."""
    while True:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status != 100:
            break
        raw = rest
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, rest)


async def curl(url: str, *args: str, data: bytes | None = None, timeout_s: float = 20) -> Reply:
    """``curl -sS -i [args] url``; ``data`` goes on stdin (``--data-binary @-``, a POST)."""
    argv = [curl_binary(), "-sS", "-i", "--max-time", str(timeout_s), *args]
    if data is not None:
        argv += ["--data-binary", "@-"]
    process = await asyncio.create_subprocess_exec(
        *argv,
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(data)
    assert process.returncode == 0, f"curl exited {process.returncode}: {err.decode()}"
    return parse_reply(out)
