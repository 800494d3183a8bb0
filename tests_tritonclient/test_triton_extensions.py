"""Triton's gRPC extensions through Triton's own client: config, statistics, streaming, index.

Responses are decoded by tritonclient's descriptors, so every check here is also a
check that our bytes mean what Triton's schema says they mean.
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench.serverproc import start_server
from client.predictor import PredictClient
from training.data import load_fashion_mnist

# Distinct values for every batching setting, so each field is checked against its own flag.
FLAGS = {
    "--max-images-per-request": "48",
    "--max-batch-size": "32",
    "--max-batch-delay-ms": "1.5",
    "--batch-concurrency": "2",
    "--max-queue": "512",
}


@pytest.fixture(scope="module")
def target(model_repo: Path):
    process = start_server(model_repo, [a for pair in FLAGS.items() for a in pair])
    yield process.target
    assert process.stop() == 0


@pytest.fixture(scope="module")
def client(target: str):
    with triton.InferenceServerClient(target) as c:
        yield c


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_fashion_mnist(allow_download=False).test_images[:64]


@pytest.fixture(scope="module")
def expected(client, images) -> np.ndarray:
    """Probabilities of each image, computed one image per request."""
    return np.concatenate(
        [_infer(client, images[i : i + 1]).as_numpy("probabilities") for i in range(len(images))]
    )


def _input(array: np.ndarray, datatype: str = "UINT8") -> triton.InferInput:
    tensor = triton.InferInput("images", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _infer(client, array: np.ndarray):
    return client.infer("fashion", [_input(array)])


def test_server_metadata_lists_exactly_the_implemented_extensions(client) -> None:
    meta = client.get_server_metadata(as_json=True)
    assert meta["extensions"] == ["model_configuration", "model_repository", "statistics"]


def test_model_config_describes_the_model_and_the_real_batcher(client) -> None:
    config = client.get_model_config("fashion").config
    assert (config.name, config.platform, config.backend) == (
        "fashion",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config.max_batch_size == 48  # the most images one request may carry
    [tensor_in] = config.input
    assert (tensor_in.name, tensor_in.data_type, list(tensor_in.dims)) == (
        "images",
        mc.TYPE_UINT8,
        [28, 28],
    )
    [tensor_out] = config.output
    assert (tensor_out.name, tensor_out.data_type, list(tensor_out.dims)) == (
        "probabilities",
        mc.TYPE_FP32,
        [10],
    )
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [32]
    assert batching.max_queue_delay_microseconds == 1500
    assert batching.default_queue_policy.max_queue_size == 512
    [group] = config.instance_group
    assert (group.kind, group.count) == (mc.ModelInstanceGroup.KIND_CPU, 2)
    assert config.version_policy.latest.num_versions == 1
    assert config.parameters["version"].string_value == "1"
    assert config.parameters["execution_provider"].string_value == "CPUExecutionProvider"
    assert config.parameters["max_queue_images"].string_value == "512"
    assert client.get_model_config("fashion", "1").config.name == "fashion"


@pytest.mark.parametrize(
    ("name", "version", "fragment"),
    [("resnet", "", "unknown model"), ("fashion", "9", "not served")],
)
def test_model_config_of_an_unknown_model_or_version_is_not_found(
    client, name, version, fragment
) -> None:
    with pytest.raises(triton.InferenceServerException) as info:
        client.get_model_config(name, version)
    assert "NOT_FOUND" in str(info.value.status())
    assert fragment in info.value.message()


def _stats(client):
    [stats] = client.get_inference_statistics("fashion", "1").model_stats
    assert (stats.name, stats.version) == ("fashion", "1")
    return stats


def _batch_counts(stats) -> dict[int, int]:
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def test_statistics_move_by_exactly_the_traffic_sent(client, target, images) -> None:
    before = _stats(client)
    started_ms = time.time_ns() // 1_000_000
    # One request at a time: each one is a batch of its own.
    for i in range(5):
        _infer(client, images[3 * i : 3 * i + 3])
    for i in range(2):
        _infer(client, images[i : i + 1])
    with PredictClient(target) as predict:  # fashion.v1 traffic reaches the same model
        predict.predict(images[:7])
    with pytest.raises(triton.InferenceServerException):  # a bad shape: one failure
        _infer(client, np.zeros((1, 28, 27), np.uint8))
    after = _stats(client)
    finished_ms = time.time_ns() // 1_000_000

    def moved(field: str) -> int:
        return getattr(after, field) - getattr(before, field)

    def moved_count(field: str) -> int:
        return (
            getattr(after.inference_stats, field).count
            - getattr(before.inference_stats, field).count
        )

    assert moved("inference_count") == 5 * 3 + 2 + 7
    assert moved("execution_count") == 8
    for field in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert moved_count(field) == 8, field
    assert moved_count("fail") == 1
    grown = {
        size: count - _batch_counts(before).get(size, 0)
        for size, count in _batch_counts(after).items()
    }
    assert {size: n for size, n in grown.items() if n} == {3: 5, 1: 2, 7: 1}
    assert started_ms <= after.last_inference <= finished_ms
    # Every part of a request's time is inside its whole time in the server.
    s = after.inference_stats
    assert s.success.ns > 0 and s.compute_infer.ns > 0
    parts = s.queue.ns + s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
    assert parts <= s.success.ns


def test_statistics_of_every_version_and_of_unknown_ones(client) -> None:
    everything = client.get_inference_statistics().model_stats
    assert [(s.name, s.version) for s in everything] == [("fashion", "1")]
    with pytest.raises(triton.InferenceServerException) as info:
        client.get_inference_statistics("resnet")
    assert "NOT_FOUND" in str(info.value.status())


def test_a_thousand_streamed_requests_are_all_answered_and_correct(
    client, images, expected
) -> None:
    answers: queue.Queue = queue.Queue()
    before = _stats(client)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sizes = [1 + i % 4 for i in range(1000)]
    bad = {100, 555, 999}  # wrong shape: answered with an error, the stream goes on
    try:
        for i, n in enumerate(sizes):
            start = (7 * i) % (len(images) - n)
            array = np.zeros((n, 28, 27), np.uint8) if i in bad else images[start : start + n]
            client.async_stream_infer(
                "fashion",
                [_input(array)],
                request_id=str(i),
                # Asked for by half the requests: every answer here is final anyway.
                enable_empty_final_response=i % 2 == 0,
            )
        received = [answers.get(timeout=60) for _ in sizes]
    finally:
        client.stop_stream()
    for i, (result, error) in enumerate(received):  # answers come in request order
        if i in bad:
            assert result is None and "expected [N, 28, 28]" in error.message(), i
            continue
        assert error is None, (i, error)
        response = result.get_response()
        assert (response.id, response.model_name, response.model_version) == (
            str(i),
            "fashion",
            "1",
        )
        n = sizes[i]
        start = (7 * i) % (len(images) - n)
        got = result.as_numpy("probabilities")
        np.testing.assert_allclose(got, expected[start : start + n], atol=1e-5)
        assert (got.argmax(1) == expected[start : start + n].argmax(1)).all()
    assert answers.empty()
    after = _stats(client)
    good = [n for i, n in enumerate(sizes) if i not in bad]
    assert after.inference_count - before.inference_count == sum(good)
    assert after.inference_stats.success.count - before.inference_stats.success.count == len(good)
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == len(bad)
    executions = after.execution_count - before.execution_count
    print(f"{len(good)} streamed requests in {executions} batches")
    assert executions < len(good)  # pipelined requests were batched together
    assert client.is_server_ready()


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("triton_enable_empty_final_response", {"bool_param": True}, None),
        ("triton_enable_empty_final_response", {"bool_param": False}, None),
        ("triton_enable_empty_final_response", {"string_param": "yes"}, "must be a bool"),
        ("priority", {"int64_param": 1}, "['priority'] are not supported"),
    ],
)
def test_triton_request_parameters(target, key, value, fragment) -> None:
    """perf_analyzer sends triton_enable_empty_final_response on every request."""
    request = service_pb2.ModelInferRequest(
        model_name="fashion",
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="images", datatype="UINT8", shape=[1, 28, 28]
            )
        ],
        raw_input_contents=[bytes(784)],
    )
    request.parameters[key].CopyFrom(service_pb2.InferParameter(**value))
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        if fragment is None:
            assert stub.ModelInfer(request, timeout=10).model_version == "1"
            return
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()


def test_repository_index_lists_the_served_version_ready(client) -> None:
    index = client.get_model_repository_index().models
    assert [(m.name, m.version, m.state, m.reason) for m in index] == [
        ("fashion", "1", "READY", "")
    ]


def _publish_copy(repo: Path, version: int) -> None:
    """Version 1's files as ``version`` (its metadata records the number it is served as)."""
    target = repo / "fashion" / str(version)
    shutil.copytree(repo / "fashion" / "1", target)
    metadata = json.loads((target / "metadata.json").read_text())
    (target / "metadata.json").write_text(json.dumps({**metadata, "version": version}))


def test_repository_index_says_why_a_version_is_unavailable(model_repo, tmp_path) -> None:
    """Version 3 is corrupt (refused; the server falls back to 2), version 1 is older."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    for version in (2, 3):
        _publish_copy(repo, version)
    (repo / "fashion" / "3" / "model.onnx").write_bytes(b"not an onnx model")
    process = start_server(repo)
    try:
        with triton.InferenceServerClient(process.target) as c:
            index = [(m.version, m.state, m.reason) for m in c.get_model_repository_index().models]
            assert index == [
                ("1", "UNAVAILABLE", "not served: version policy latest 1 serves version 2"),
                ("2", "READY", ""),
                ("3", "UNAVAILABLE", "refused: it failed to load or verify (see the log)"),
            ]
            assert c.get_model_config("fashion").config.version_policy.latest.num_versions == 1
    finally:
        assert process.stop() == 0


def test_repository_index_of_a_pinned_server(model_repo, tmp_path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    _publish_copy(repo, 2)
    process = start_server(repo, ["--model-version", "1"])
    try:
        with triton.InferenceServerClient(process.target) as c:
            index = [(m.version, m.state, m.reason) for m in c.get_model_repository_index().models]
            assert index == [
                ("1", "READY", ""),
                ("2", "UNAVAILABLE", "not served: the server is pinned to version 1"),
            ]
            assert c.get_model_config("fashion").config.version_policy.specific.versions == [1]
            assert not c.is_model_ready("fashion", "2")
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize(
    ("call", "method"),
    [
        (lambda c: c.get_system_shared_memory_status(), "SystemSharedMemoryStatus"),
        (
            lambda c: c.register_system_shared_memory("r", "/k", 16),
            "SystemSharedMemoryRegister",
        ),
        (lambda c: c.unregister_system_shared_memory(), "SystemSharedMemoryUnregister"),
        (lambda c: c.get_cuda_shared_memory_status(), "CudaSharedMemoryStatus"),
        (
            lambda c: c.register_cuda_shared_memory("r", base64.b64encode(b"handle"), 0, 16),
            "CudaSharedMemoryRegister",
        ),
        (lambda c: c.unregister_cuda_shared_memory(), "CudaSharedMemoryUnregister"),
        (lambda c: c.get_trace_settings(), "TraceSetting"),
        (lambda c: c.get_log_settings(), "LogSettings"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_unimplemented_rpcs_say_so(client, call, method) -> None:
    with pytest.raises(triton.InferenceServerException) as info:
        call(client)
    assert "UNIMPLEMENTED" in str(info.value.status())
    assert f"fashion-serve does not implement {method}: " in info.value.message()
    assert client.is_server_ready()


def test_triton_timeout_parameter_over_grpc(client, images) -> None:
    """tritonclient.grpc ``infer(timeout=us)`` sends Triton's ``timeout`` request parameter:
    honoured as a deadline (issue #28 item 9: it used to be refused over gRPC)."""
    tensor = triton.InferInput("images", [1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(images[:1])
    result = client.infer("fashion", [tensor], timeout=10_000_000)  # 10 s: met
    assert result.as_numpy("probabilities").shape == (1, 10)
    # Triton: "The default is 0 which indicates that the request has no timeout".
    assert client.infer("fashion", [tensor], timeout=0).as_numpy("probabilities").shape == (1, 10)
    with pytest.raises(triton.InferenceServerException) as info:
        client.infer("fashion", [tensor], timeout=1)  # 1 us: passes before the answer
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED", info.value
    assert "deadline" in info.value.message() or "timeout" in info.value.message()


def test_a_stream_read_until_each_final_response_ends(client, target, images) -> None:
    """A client that sends ``triton_enable_empty_final_response`` (PyTriton's, or decoupled
    code written against Triton) reads each request's responses until one says
    ``triton_final_response``: Triton sets it on every response of a stream, true for a model
    that is not decoupled, and sends no empty final response for one (its one response is
    final). A failed request is named by its id, model name and version, as Triton does."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    bad = {1, 4}  # wrong shape: answered with an error, the stream goes on
    try:
        for i in range(6):
            array = np.zeros((1, 28, 27), np.uint8) if i in bad else images[i : i + 1]
            client.async_stream_infer(
                "fashion", [_input(array)], request_id=f"r{i}", enable_empty_final_response=True
            )
        received = []
        for i in range(6):
            while True:  # the reading loop of a client of a decoupled model
                result, error = answers.get(timeout=10)
                received.append((i, result, error))
                if error is not None:
                    break
                final = result.get_response().parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    break
        with pytest.raises(queue.Empty):
            answers.get(timeout=0.5)  # no response beyond one per request
    finally:
        client.stop_stream()
    assert [i for i, _, _ in received] == list(range(6))
    for i, result, error in received:
        if i in bad:
            assert result is None and "expected [N, 28, 28]" in error.message(), i
            continue
        response = result.get_response()
        assert response.id == f"r{i}" and result.as_numpy("probabilities").shape == (1, 10)

    # What tritonclient does not show on a failure: the response's fields (read raw).
    bad_request = service_pb2.ModelInferRequest(
        model_name="fashion",
        model_version="1",
        id="bad-1",
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="images", datatype="UINT8", shape=[1, 28, 27]
            )
        ],
        raw_input_contents=[bytes(28 * 27)],
    )
    bad_request.parameters["triton_enable_empty_final_response"].bool_param = True
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        (answer,) = stub.ModelStreamInfer(iter([bad_request]), timeout=10)
    assert "expected [N, 28, 28]" in answer.error_message
    failed = answer.infer_response
    assert (failed.id, failed.model_name, failed.model_version) == ("bad-1", "fashion", "1")
    assert failed.parameters["triton_final_response"].bool_param and not failed.outputs
