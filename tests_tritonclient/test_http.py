"""tritonclient.http, unchanged, against a real fashion-serve over REST (KServe v2 + Triton's).

Every answer is checked against tritonclient.grpc on the same server: the two
bindings share one data plane, so they must agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bench.serverproc import ServerProcess

MAX_IMAGES = 64  # conftest's server_process: --max-images-per-request 64


@pytest.fixture(scope="module")
def client(server_process: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(f"127.0.0.1:{server_process.http_port}") as c:
        yield c


@pytest.fixture(scope="module")
def grpc_client(server_process: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server_process.target) as c:
        yield c


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def grpc_probabilities(grpc_client, batch: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    return grpc_client.infer("fashion", [tensor]).as_numpy("probabilities")


def test_health_and_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fashion") and client.is_model_ready("fashion", "1")
    server = client.get_server_metadata()
    assert server["name"] == "fashion-serving"
    assert {"statistics", "model_configuration", "binary_tensor_data"} <= set(server["extensions"])
    metadata = client.get_model_metadata("fashion")
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}]


def test_model_config_is_triton_shaped(client, grpc_client) -> None:
    config = client.get_model_config("fashion")
    assert config["max_batch_size"] == MAX_IMAGES  # a number, as Triton writes it
    assert config["input"][0]["data_type"] == "TYPE_UINT8"
    assert config["input"][0]["dims"] == [28, 28]
    assert config["output"][0]["dims"] == [10]
    assert "dynamic_batching" in config and "sequence_batching" not in config
    from_grpc = grpc_client.get_model_config("fashion", as_json=True)["config"]
    assert config["name"] == from_grpc["name"] and config["platform"] == from_grpc["platform"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == int(
        from_grpc["dynamic_batching"]["max_queue_delay_microseconds"]
    )


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_with_binary_data_on_and_off(client, grpc_client, binary_in, binary_out) -> None:
    batch = images(5, seed=int(binary_in) * 2 + int(binary_out))
    tensor = httpclient.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch, binary_data=binary_in)
    output = httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)
    result = client.infer("fashion", [tensor], outputs=[output], request_id="r-1")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (5, 10) and probabilities.dtype == np.float32
    np.testing.assert_array_equal(probabilities, grpc_probabilities(grpc_client, batch))
    response = result.get_response()
    assert (response["model_version"], response["id"]) == ("1", "r-1")


def test_fp32_input_and_no_requested_outputs_and_compression(client, grpc_client) -> None:
    batch = images(3, seed=7)
    tensor = httpclient.InferInput("images", [3, 28, 28, 1], "FP32")
    tensor.set_data_from_numpy((batch.astype(np.float32) / 255).reshape(3, 28, 28, 1))
    result = client.infer(
        "fashion",
        [tensor],
        model_version="1",
        request_compression_algorithm="gzip",
        response_compression_algorithm="gzip",
    )
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"), grpc_probabilities(grpc_client, batch)
    )


def test_async_infer_answers_every_concurrent_request(server_process, grpc_client) -> None:
    url = f"127.0.0.1:{server_process.http_port}"
    with httpclient.InferenceServerClient(url, concurrency=8) as concurrent:
        batches = [images(2, seed=s) for s in range(16)]
        pending = []
        for batch in batches:
            tensor = httpclient.InferInput("images", [2, 28, 28], "UINT8")
            tensor.set_data_from_numpy(batch)
            pending.append(concurrent.async_infer("fashion", [tensor]))
        for batch, request in zip(batches, pending, strict=True):
            np.testing.assert_array_equal(
                request.get_result().as_numpy("probabilities"),
                grpc_probabilities(grpc_client, batch),
            )


def test_statistics_move_by_exactly_the_traffic_sent(client) -> None:
    def counts() -> tuple[int, int]:
        (stats,) = client.get_inference_statistics("fashion")["model_stats"]
        return stats["inference_count"], stats["inference_stats"]["success"]["count"]

    before = counts()
    for n in (1, 3, 8):
        tensor = httpclient.InferInput("images", [n, 28, 28], "UINT8")
        tensor.set_data_from_numpy(images(n))
        client.infer("fashion", [tensor])
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (12, 3)
    all_models = client.get_inference_statistics()
    assert all_models["model_stats"][0]["name"] == "fashion"


def test_bad_requests_are_4xx_with_a_message(client) -> None:
    tensor = httpclient.InferInput("images", [1, 27, 28], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 27, 28), np.uint8))
    with pytest.raises(InferenceServerException) as info:
        client.infer("fashion", [tensor])
    assert info.value.status() == "400"
    assert "expected [N, 28, 28]" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("fashion", "9")
    assert info.value.status() == "404"
    too_many = httpclient.InferInput("images", [MAX_IMAGES + 1, 28, 28], "UINT8")
    too_many.set_data_from_numpy(images(MAX_IMAGES + 1))
    with pytest.raises(InferenceServerException) as info:
        client.infer("fashion", [too_many])
    assert info.value.status() == "400" and f"at most {MAX_IMAGES}" in info.value.message()
    assert client.is_server_ready()


@pytest.mark.parametrize(
    ("call", "method"),
    [
        (lambda c: c.get_trace_settings(), "TraceSetting"),
        (lambda c: c.update_trace_settings(settings={"trace_level": ["OFF"]}), "TraceSetting"),
        (lambda c: c.get_log_settings(), "LogSettings"),
        (lambda c: c.get_system_shared_memory_status(), "SystemSharedMemoryStatus"),
        (lambda c: c.register_system_shared_memory("r", "/k", 16), "SystemSharedMemoryRegister"),
        (lambda c: c.unregister_cuda_shared_memory(), "CudaSharedMemoryUnregister"),
    ],
    ids=["trace", "trace-update", "log", "shm-status", "shm-register", "cuda-unregister"],
)
def test_unimplemented_extensions_give_the_grpc_reason(client, grpc_client, call, method) -> None:
    """tritonclient.http's calls of the extensions this server lacks get the reason the same
    call gets over gRPC (UNIMPLEMENTED, 501 here), not a bare "no such endpoint"."""
    with pytest.raises(InferenceServerException) as info:
        call(client)
    assert info.value.status() == "501"
    assert info.value.message().startswith(f"fashion-serve does not implement {method}: ")
    if method == "LogSettings":
        with pytest.raises(InferenceServerException) as over_grpc:
            grpc_client.get_log_settings()
        assert info.value.message() == over_grpc.value.message()
    assert client.is_server_ready()
