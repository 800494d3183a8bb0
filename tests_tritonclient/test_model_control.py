"""Triton's model repository extension as tritonclient calls it (#24): ``load_model`` and
``unload_model`` over gRPC and HTTP against a real ``fashion-serve --model-control-mode
explicit`` process, with a control token, a config override, and two models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from bench.serverproc import ServerProcess, start_server

TOKEN = "s3cret-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def explicit_server(
    model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """fashion 1, 2 and other 1 in the repository; only fashion loaded at start."""
    repo = tmp_path_factory.mktemp("explicit") / "models"
    for model, version in (("fashion", 1), ("fashion", 2), ("other", 1)):
        target = repo / model / str(version)
        shutil.copytree(model_repo / "fashion" / "1", target)
        meta = json.loads((target / "metadata.json").read_text())
        (target / "metadata.json").write_text(
            json.dumps({**meta, "name": model, "version": version})
        )
    process = start_server(
        repo,
        ["--model-control-mode", "explicit", "--load-model", "fashion",
         "--model-control-token", TOKEN],
    )  # fmt: skip
    yield process
    assert process.stop() == 0


def infer_version(client: triton_grpc.InferenceServerClient, model: str, version: str = "") -> str:
    tensor = triton_grpc.InferInput("images", [1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 28, 28), np.uint8))
    result = client.infer(model, [tensor], model_version=version)
    return str(result.get_response().model_version)


def test_grpc_load_and_unload_as_tritonclient_calls_them(explicit_server: ServerProcess) -> None:
    with triton_grpc.InferenceServerClient(explicit_server.target) as client:
        assert not client.is_model_ready("other")
        with pytest.raises(InferenceServerException) as info:
            client.load_model("other")  # no token
        assert "UNAUTHENTICATED" in str(info.value.status())
        client.load_model("other", headers=AUTH)
        assert client.is_model_ready("other")
        assert infer_version(client, "other") == "1"
        states = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
        assert states[("other", "1")] == "READY"
        # A config override (tritonclient's config=): the two newest, canary labelled.
        config = json.dumps({"version_policy": {"latest": 2}, "labels": {"stable": 1}})
        client.load_model("fashion", config=config, headers=AUTH)
        assert client.is_model_ready("fashion", "1") and client.is_model_ready("fashion", "2")
        assert infer_version(client, "fashion") == "1"  # stable is the default
        assert infer_version(client, "fashion", "2") == "2"
        client.unload_model("other", headers=AUTH)
        assert not client.is_model_ready("other")
        with pytest.raises(InferenceServerException) as info:
            infer_version(client, "other")
        assert "NOT_FOUND" in str(info.value.status())
        with pytest.raises(InferenceServerException) as info:
            client.load_model("missing", headers=AUTH)
        assert "no model 'missing' in the repository" in info.value.message()


def test_http_load_and_unload_as_tritonclient_calls_them(explicit_server: ServerProcess) -> None:
    url = f"127.0.0.1:{explicit_server.http_port}"
    with triton_http.InferenceServerClient(url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("fashion")
        assert info.value.status() == "401"
        client.load_model("other", headers=AUTH)
        assert client.is_model_ready("other")
        client.unload_model("other", headers=AUTH, unload_dependents=True)
        assert not client.is_model_ready("other")
        bad = json.dumps({"labels": {"stable": 9}})
        with pytest.raises(InferenceServerException) as info:
            client.load_model("fashion", config=bad, headers=AUTH)
        assert info.value.status() == "400"
        assert "point at versions that are not loaded" in info.value.message()
        assert client.is_model_ready("fashion")  # the refused load changed nothing
