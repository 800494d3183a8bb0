"""Open Inference Protocol conformance through the reference client, tritonclient.grpc."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from client.predictor import PredictClient
from tests_tritonclient.descriptors import field_key, method_key
from training.data import load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client(server: str):
    with triton.InferenceServerClient(server) as c:
        yield c


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_fashion_mnist(allow_download=False).test_images[:32]


def test_server_and_model_are_live_and_ready(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("fashion")
    assert client.is_model_ready("fashion", "1")


def test_metadata_describes_the_real_signature(client) -> None:
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "fashion-serving"
    meta = client.get_model_metadata("fashion", as_json=True)
    assert meta["name"] == "fashion" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": ["-1", "28", "28"]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}]


def _infer(client, array: np.ndarray, datatype: str, outputs=None, request_id: str = ""):
    tensor = triton.InferInput("images", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer("fashion", [tensor], outputs=outputs, request_id=request_id)


def test_uint8_and_fp32_inference_equal_predict(client, server, images) -> None:
    with PredictClient(server) as predict:
        expected = np.array(
            [
                list(p.probabilities)
                for p in predict.predict(images, include_probabilities=True).predictions
            ],
            dtype=np.float32,
        )
    plain = _infer(client, images, "UINT8", request_id="abc")
    assert plain.get_response().id == "abc"
    assert plain.get_response().model_version == "1"
    np.testing.assert_array_equal(plain.as_numpy("probabilities"), expected)
    requested = _infer(
        client, images, "UINT8", outputs=[triton.InferRequestedOutput("probabilities")]
    )
    np.testing.assert_array_equal(requested.as_numpy("probabilities"), expected)
    fp32 = _infer(client, (images / np.float32(255)).astype(np.float32)[..., None], "FP32")
    np.testing.assert_array_equal(fp32.as_numpy("probabilities"), expected)


@pytest.mark.parametrize(
    ("call", "status", "fragment"),
    [
        (
            lambda c: _infer(c, np.zeros((1, 28, 28), np.int32), "INT32"),
            "INVALID_ARGUMENT",
            "expected UINT8",
        ),
        (
            lambda c: _infer(c, np.zeros((1, 28, 27), np.uint8), "UINT8"),
            "INVALID_ARGUMENT",
            "expected [N, 28, 28]",
        ),
        (
            lambda c: _infer(
                c,
                np.zeros((1, 28, 28), np.uint8),
                "UINT8",
                outputs=[triton.InferRequestedOutput("logits")],
            ),
            "INVALID_ARGUMENT",
            "unknown output 'logits'",
        ),
        (lambda c: c.get_model_metadata("fashion", "9"), "NOT_FOUND", "not served"),
        (lambda c: c.get_model_metadata("resnet"), "NOT_FOUND", "unknown model"),
    ],
    ids=["datatype", "shape", "output", "version", "model"],
)
def test_errors_reach_the_client_with_status(client, call, status, fragment) -> None:
    with pytest.raises(triton.InferenceServerException) as info:
        call(client)
    assert status in str(info.value.status())
    assert fragment in info.value.message()
    assert client.is_server_ready()


def test_proto_matches_the_reference_descriptors() -> None:
    """Our .proto files against tritonclient's descriptors (Triton's grpc_service.proto and
    model_config.proto): same full names, numbers, types, labels, oneofs and enum values.

    grpc_service.proto's messages and the service must be complete; of model_config.proto's
    messages we declare only what the server fills (a subset, never a different number).
    """
    dump = subprocess.run(
        [sys.executable, "-c", DUMP_OURS], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    ours = json.loads(dump)
    pool = service_pb2.DESCRIPTOR.pool
    assert "inference.ModelConfig" in ours["messages"], "model_config.proto was not walked"
    for message, fields in ours["messages"].items():
        ref = pool.FindMessageTypeByName(message)
        reference_fields = {f.name: field_key(f) for f in ref.fields}
        for name, key in fields.items():
            assert name in reference_fields, f"{message}.{name} is not in the reference"
            assert tuple(key) == reference_fields[name], f"{message}.{name}"
        if ref.file.name == service_pb2.DESCRIPTOR.name:
            missing = reference_fields.keys() - fields.keys()
            assert not missing, f"{message} lacks {sorted(missing)}"
    for enum, values in ours["enums"].items():
        ref_values = {v.name: v.number for v in pool.FindEnumTypeByName(enum).values}
        assert values == ref_values, enum
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    reference_methods = {m.name: method_key(m) for m in service.methods}
    assert {k: tuple(v) for k, v in ours["methods"].items()} == reference_methods


DUMP_OURS = """
import json
from server._proto.inference import grpc_predict_v2_pb2 as m
from server._proto.inference import model_config_pb2 as c
from tests_tritonclient.descriptors import dump
print(json.dumps(dump([m.DESCRIPTOR, c.DESCRIPTOR], "GRPCInferenceService")))
"""


def test_model_ready_of_what_is_not_served_is_false_as_over_http(client, server_process) -> None:
    """tritonclient.grpc's is_model_ready answers False for a model or version that is not
    served, as Triton's server does and as tritonclient.http's does against our REST port;
    it used to raise (NOT_FOUND)."""
    with httpclient.InferenceServerClient(f"127.0.0.1:{server_process.http_port}") as http:
        for name, version in (("nope", ""), ("fashion", "9"), ("fashion", "01")):
            assert client.is_model_ready(name, version) is False
            assert http.is_model_ready(name, version) is False
    assert client.is_model_ready("fashion")
