"""Manifest-driven smoke test: run the server exactly as the rendered Deployment describes it
(command, args, environment), probe it the way the kubelet does, then terminate it the way
the kubelet does and check that it drains and exits 0 within the grace period."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.app import READINESS_SERVICE
from tests.deploy.manifests import (
    IMAGES,
    container_env,
    dockerfile,
    image_name_and_tag,
    one,
    render,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
# Only these are changed from the manifest: where the model is and where to listen.
REMAPPED = ("FASHION_MODEL_REPO", "FASHION_HOST", "FASHION_PORT", "FASHION_METRICS_PORT")
# The kubelet probes every periodSeconds; a shorter period keeps the test fast.
PROBE_INTERVAL_S = 0.05


def probe(port: int, spec: dict[str, Any]) -> int | None:
    """One kubelet gRPC probe: a fresh connection, Health/Check, timeoutSeconds. None = error."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=spec["grpc"].get("service", ""))
        try:
            return stub.Check(request, timeout=spec.get("timeoutSeconds", 1)).status
        except grpc.RpcError:
            return None


class ServerLog:
    """Collects stderr in a thread; finds the gRPC port logged when the server starts listening
    (before the model is loaded, so readiness can be seen turning SERVING)."""

    PATTERN = re.compile(r"listening on \S+:(\d+) \(gRPC\)")

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.port: int | None = None
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)
            match = self.PATTERN.search(line)
            if match and self.port is None:
                self.port = int(match[1])
                self.listening.set()
        self.listening.set()  # the process ended

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "".join(self.lines)


def test_server_started_from_the_deployment_turns_ready_and_drains_on_sigterm(
    model_repo: Path,
) -> None:
    docs = render("overlays/cpu")
    spec = one(docs, "Deployment", "fashion-serving")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    image = dockerfile(IMAGES[image_name_and_tag(container["image"])[0]])
    # The container's environment: the image's ENV, then the manifest's envFrom and env.
    image_env = {k: v for k, v in image.env().items() if k.startswith(("FASHION_", "PYTHON"))}
    env = container_env(container, docs, image_env)
    assert set(REMAPPED) <= env.keys(), "the manifest must set the model path and the ports"
    env |= {
        "FASHION_MODEL_REPO": str(model_repo),
        "FASHION_HOST": "127.0.0.1",
        "FASHION_PORT": "0",
        "FASHION_METRICS_PORT": "0",
    }
    # This machine's variables minus any FASHION_* (the container sees only the manifest's).
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("FASHION_")} | env
    executable, *rest = container["command"]
    command = [str(Path(sys.executable).parent / executable), *rest, *container.get("args", [])]
    assert Path(command[0]).is_file(), f"{executable} is not a console script of this install"

    startup = container["startupProbe"]
    readiness = container["readinessProbe"]
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace_s = spec["terminationGracePeriodSeconds"]

    process = subprocess.Popen(
        command, env=process_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = ServerLog(process.stderr)
    try:
        startup_budget_s = startup["periodSeconds"] * startup["failureThreshold"]
        assert log.listening.wait(startup_budget_s) and log.port, log.text()
        port = log.port

        # Startup (the process, service ""), then readiness (the named service): the
        # kubelet's gRPC probes, readiness only once startup has succeeded.
        deadline = time.monotonic() + startup_budget_s
        for stage in (startup, readiness):
            while probe(port, stage) != SERVING:
                assert process.poll() is None, f"server exited early:\n{log.text()}"
                assert time.monotonic() < deadline, f"not SERVING within the budget: {stage}"
                time.sleep(PROBE_INTERVAL_S)
        assert readiness["grpc"]["service"] == READINESS_SERVICE
        assert probe(port, container["livenessProbe"]) == SERVING

        # Ready means it serves predictions and metrics.
        # With FASHION_WAIT_FOR_MODEL a "waiting for a model" line may come first.
        line = process.stdout.readline()  # type: ignore[union-attr]
        if "waiting for a model" in line:
            line = process.stdout.readline()  # type: ignore[union-attr]
        assert "serving on port" in line, line
        words = line.split()
        metrics_port = int(words[words.index("metrics") + 1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.PredictionServiceStub(channel).Predict(
                pb.PredictRequest(images=[pb.Image(raw=bytes(784))]), timeout=10
            )
            assert len(reply.predictions) == 1
        url = f"http://127.0.0.1:{metrics_port}{spec_annotation(docs, 'path')}"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200 and b"fashion_" in response.read()

        # Termination: the kubelet runs preStop (sleep; the server keeps serving), then
        # sends SIGTERM and waits for what is left of terminationGracePeriodSeconds.
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        while probe(port, readiness) == SERVING:
            assert time.monotonic() - sent < readiness["periodSeconds"], "still ready"
            time.sleep(PROBE_INTERVAL_S)
        assert process.wait(timeout=grace_s - pre_stop_s) == 0, log.text()
        assert time.monotonic() - sent < grace_s - pre_stop_s
        assert "stopped" in log.text()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        log.text()
        for stream in (process.stdout, process.stderr):
            stream.close()  # type: ignore[union-attr]


def spec_annotation(docs: list[dict[str, Any]], key: str) -> str:
    deployment = one(docs, "Deployment", "fashion-serving")
    return deployment["spec"]["template"]["metadata"]["annotations"][f"prometheus.io/{key}"]
