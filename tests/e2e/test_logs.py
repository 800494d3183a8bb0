"""The real ``fashion-serve`` process's stderr with ``--log-format json|text --access-log``
(issue #26 item 3): every line parses, the access lines carry what the client was sent
back, and nothing a client sent breaks a line."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from tests.e2e.curl import curl
from tests.e2e.test_lifecycle import NO_TENSORFLOW
from tests.e2e.test_request_ids import GENERATED, HEADER, trailing_id
from tests.e2e.test_rest import JSON, json_body

READY = re.compile(r"fashion-serve: serving on port (\d+) metrics (-?\d+) http (\d+)")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


class Server:
    """``fashion-serve`` with stderr in a file, stopped with SIGTERM like a pod."""

    def __init__(self, model_repo: Path, stderr: Path, args: list[str], env: dict[str, str]):
        command = [sys.executable, "-c", NO_TENSORFLOW, "--model-repo", str(model_repo)]
        command += ["--port", "0", "--metrics-port", "-1", "--http-port", "0", *args]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FASHION_")}
        self.stderr_path = stderr
        with stderr.open("w") as err:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, text=True, env={**environ, **env}
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 1.0)
            line = self.process.stdout.readline() if ready else ""
            match = READY.search(line)
            if match:
                self.port, self.http_port = int(match.group(1)), int(match.group(3))
                return
            if self.process.poll() is not None:
                break
        self.process.kill()
        raise AssertionError(f"fashion-serve did not start: {stderr.read_text()}")

    def stop(self) -> list[str]:
        """SIGTERM, wait for exit 0; the lines it wrote on stderr."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(30) == 0
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.stderr_path.read_text().splitlines()


async def drive(server: Server, images: np.ndarray) -> dict[str, str]:
    """One request per binding, and a refused one; what each was sent back as its id."""
    ids = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        request = pb.PredictRequest(images=[pb.Image(raw=image.tobytes()) for image in images])
        call = pb_grpc.PredictionServiceStub(channel).Predict(
            request, metadata=((HEADER, "log-1"),)
        )
        await call
        ids["Predict"] = trailing_id(await call.trailing_metadata())
        oip = oip_grpc.GRPCInferenceServiceStub(channel)
        response = await oip.ModelInfer(infer_request(images, id="log-2"))
        ids["ModelInfer"] = response.id
    url = f"http://127.0.0.1:{server.http_port}/v2/models/fashion/infer"
    reply = await curl(url, *JSON, "-H", f"{HEADER}: log 3", data=json_body(images))
    assert reply.status == 200
    ids["HTTP/ModelInfer"] = reply.headers[HEADER]
    refused = await curl(url, *JSON, data=b'{"inputs": "no"}')
    assert refused.status == 400
    ids["refused"] = refused.headers[HEADER]
    return ids


@pytest.fixture
def images(test_set) -> np.ndarray:
    return test_set[0][:2]


async def test_json_lines_parse_and_carry_the_ids_sent_back(model_repo, tmp_path, images) -> None:
    server = Server(
        model_repo,
        tmp_path / "stderr",
        [],
        {"FASHION_LOG_FORMAT": "json", "FASHION_ACCESS_LOG": "true"},  # the variables work too
    )
    try:
        ids = await drive(server, images)
    finally:
        lines = server.stop()
    documents = [json.loads(line) for line in lines]  # every line, start to exit
    assert all({"time", "level", "logger", "message"} <= set(d) for d in documents)
    assert any(d["message"].startswith("ready: fashion") for d in documents)
    assert any(d["message"] == "stopped" for d in documents)
    access = {d["request_id"]: d for d in documents if d["logger"] == "server.access"}
    assert ids["Predict"] == "log-1" and ids["ModelInfer"] == "log-2"
    assert ids["HTTP/ModelInfer"] == "log 3" and GENERATED.fullmatch(ids["refused"])
    for method in ("Predict", "ModelInfer", "HTTP/ModelInfer"):
        line = access[ids[method]]
        assert (line["method"], line["status"], line["model"], line["version"]) == (
            method,
            "OK",
            "fashion",
            "1",
        )
        assert line["images"] == 2 and line["latency_ms"] > 0 and line["batch"] >= 1
    assert access[ids["refused"]]["status"] == "INVALID_ARGUMENT"
    assert access[ids["refused"]]["method"] == "HTTP/ModelInfer"
    assert images.tobytes()[300:340].hex() not in "".join(lines)


async def test_text_lines_are_one_per_event_with_key_value_fields(
    model_repo, tmp_path, images
) -> None:
    server = Server(
        model_repo, tmp_path / "stderr", ["--log-format", "text", "--access-log", "true"], {}
    )
    try:
        ids = await drive(server, images)
    finally:
        lines = server.stop()
    assert all(TEXT_LINE.match(line) for line in lines), lines
    access = [line for line in lines if " server.access: request " in line]
    assert len(access) == 4
    predict = next(line for line in access if line.endswith(" request_id=log-1"))
    assert " method=Predict status=OK model=fashion version=1 images=2 batch=" in predict
    assert re.search(r" peer=ipv4:127\.0\.0\.1:\d+ latency_ms=[0-9.]+ request_id=log-1$", predict)
    assert any(line.endswith(' request_id="log 3"') for line in access)  # quoted: a space
    assert any(line.endswith(f" request_id={ids['refused']}") for line in access)


async def test_without_access_log_no_line_per_request(model_repo, tmp_path, images) -> None:
    server = Server(model_repo, tmp_path / "stderr", ["--log-format", "json"], {})
    try:
        await drive(server, images)
    finally:
        lines = server.stop()
    assert not [line for line in lines if '"server.access"' in line]
