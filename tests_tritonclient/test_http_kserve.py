"""KServe's own Python clients (kserve 0.21, protocol v2), unchanged, against REST and gRPC.

kserve cannot live in the project's venv (it needs psutil<6, the dev extra pins psutil 7),
so scripts/bootstrap.sh ``ensure_kserve_client`` makes ``.venv-kserve`` and the client runs
there (tests_tritonclient/kserve_rest_client.py); its answers must equal tritonclient.grpc's
for the same images. Under CI=true a missing client fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
CLIENT = Path(__file__).with_name("kserve_rest_client.py")


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    path = Path(os.environ.get("KSERVE_PYTHON", ROOT / ".venv-kserve" / "bin" / "python"))
    if not path.is_file():
        hint = "source scripts/bootstrap.sh && ensure_kserve_client"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"KServe's client is not installed; {hint}")
        pytest.skip(f"KServe's client is not installed; {hint}")
    return path


def test_kserve_rest_client_gets_the_grpc_answers(kserve_python, server_process) -> None:
    seed = 5
    url = f"http://127.0.0.1:{server_process.http_port}"
    done = subprocess.run(
        [str(kserve_python), str(CLIENT), url, str(seed), server_process.target],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["server_ready"] is True and result["model_ready"] is True
    images = np.random.default_rng(seed).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    with grpcclient.InferenceServerClient(server_process.target) as client:
        tensor = grpcclient.InferInput("images", [3, 28, 28], "UINT8")
        tensor.set_data_from_numpy(images)
        expected = client.infer("fashion", [tensor]).as_numpy("probabilities")
    for mode in ("json", "binary"):
        answer = result[mode]
        assert answer["id"] == f"kserve-{mode == 'binary'}" and answer["name"] == "probabilities"
        np.testing.assert_array_equal(np.asarray(answer["probabilities"], np.float32), expected)
    # A refusal's message reaches KServe's exception: its client reads it only from an answer
    # whose Content-Type is exactly application/json.
    assert "unknown model 'nope'" in result["rest_error"], result["rest_error"]
    # KServe's gRPC client keeps the input parameter binary_data_size beside
    # raw_input_contents: the same request as over REST, answered the same.
    assert result["grpc"].get("id") == "kserve-grpc", result["grpc"]
    np.testing.assert_array_equal(np.asarray(result["grpc"]["probabilities"], np.float32), expected)
