"""promtool and a real Prometheus server (Debian's ``prometheus`` package) for the tests.

Missing binaries skip the test with the reason; with CI=true they fail it instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

INSTALL = "Debian's package prometheus; scripts/test.sh installs it with apt-get"
# Prometheus binds port 0 and logs the address it got (exporter-toolkit, 2.x).
LISTENING = re.compile(r'msg="Listening on" address=(\S+)')
START_TIMEOUT_S = 30.0


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: the monitoring tests must run, but {reason}")
    pytest.skip(reason)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed ({INSTALL})")
    return str(path)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


class QueryError(Exception):
    """The Prometheus HTTP API answered with status "error"."""


@dataclass
class Prometheus:
    """A Prometheus server on 127.0.0.1 (any free port), data in a temporary directory."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    def start(
        cls, directory: Path, config: dict[str, Any], *, lookback_delta: str = "5m"
    ) -> Prometheus:
        directory.mkdir(parents=True, exist_ok=True)
        config_file = directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        log = directory / "prometheus.log"
        command = [
            binary("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={directory / 'data'}",
            "--web.listen-address=127.0.0.1:0",
            f"--query.lookback-delta={lookback_delta}",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        address = None
        while address is None:
            match = LISTENING.search(log.read_text(errors="replace"))
            if match:
                address = match[1]
            elif process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(5)
                raise RuntimeError(f"prometheus did not start:\n{log.read_text()[-3000:]}")
            else:
                time.sleep(0.05)
        server = cls(process, f"http://{address}", log)
        server.wait_ready(deadline)
        return server

    def wait_ready(self, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus never became ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a success, QueryError otherwise."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: a query that does not parse or run
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the result vector (a scalar comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
