"""The Open Inference Protocol over HTTP/REST, with the real curl, against a real server.

Same process, event loop, batcher and data plane as gRPC: the answers are compared
with the gRPC ones, and Triton's config and statistics with the gRPC messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import grpc
import numpy as np
import pytest

from client.oip import infer_request
from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.process_metrics import children_of, role
from server.rest_codec import message_json
from tests.e2e.conftest import queued_images, scrape
from tests.e2e.curl import Reply, curl

JSON = ("-H", "Content-Type: application/json")


def base(app) -> str:
    return f"http://127.0.0.1:{app.http_port}"


def json_body(images: np.ndarray, *, datatype: str = "UINT8", nested: bool = False, **extra):
    values = images.astype(np.float32) / 255.0 if datatype == "FP32" else images
    data = values.tolist() if nested else values.ravel().tolist()
    tensor = {"name": "images", "shape": list(images.shape), "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def tensor_body(datatype: str, shape: list[int], data: object) -> bytes:
    tensor = {"name": "images", "datatype": datatype, "shape": shape, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def binary_body(images: np.ndarray, *, binary_output: bool = True) -> tuple[bytes, int]:
    raw = np.ascontiguousarray(images, np.uint8).tobytes()
    head = {
        "inputs": [
            {
                "name": "images",
                "shape": list(images.shape),
                "datatype": "UINT8",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": binary_output}}],
    }
    text = json.dumps(head).encode()
    return text + raw, len(text)


def probabilities_of(reply: Reply) -> np.ndarray:
    length = reply.headers.get("inference-header-content-length")
    if length is None:
        (output,) = reply.json()["outputs"]
        return np.asarray(output["data"], np.float32).reshape(output["shape"])
    head = json.loads(reply.body[: int(length)])
    (output,) = head["outputs"]
    raw = reply.body[int(length) :]
    assert len(raw) == output["parameters"]["binary_data_size"]
    return np.frombuffer(raw, "<f4").reshape(output["shape"])


async def grpc_probabilities(app, images: np.ndarray) -> np.ndarray:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        reply = await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            infer_request(images), timeout=10
        )
    return np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(len(images), 10)


async def infer(app, body: bytes, *args: str, path: str = "/v2/models/fashion/infer") -> Reply:
    return await curl(base(app) + path, *JSON, *args, data=body)


async def assert_still_serving(app) -> None:
    reply = await infer(app, json_body(np.zeros((1, 28, 28), np.uint8)))
    assert reply.status == 200, reply


async def test_json_infer_as_curl_sends_it_equals_grpc(app, test_set) -> None:
    images = test_set[0][:8]
    reply = await infer(app, json_body(images, id="req-9"))
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    document = reply.json()
    assert (document["model_name"], document["model_version"], document["id"]) == (
        "fashion",
        "1",
        "req-9",
    )
    assert document["outputs"][0]["datatype"] == "FP32"
    # JSON numbers carry every float32 exactly: the same bits as over gRPC.
    np.testing.assert_array_equal(probabilities_of(reply), await grpc_probabilities(app, images))


@pytest.mark.parametrize(
    "variant",
    ["uint8-nested", "fp32-flat", "fp32-nested", "nhwc", "binary-in-json-out", "binary"],
)
async def test_every_encoding_gives_the_same_answer(app, test_set, variant) -> None:
    images = test_set[0][:3]
    expected = await grpc_probabilities(app, images)
    args: tuple[str, ...] = ()
    if variant == "uint8-nested":
        body = json_body(images, nested=True)
    elif variant.startswith("fp32"):
        body = json_body(images, datatype="FP32", nested=variant.endswith("nested"))
    elif variant == "nhwc":
        body = json_body(images.reshape(3, 28, 28, 1), nested=True)
    else:
        body, length = binary_body(images, binary_output=variant == "binary")
        args = ("-H", f"Inference-Header-Content-Length: {length}")
    reply = await infer(app, body, *args)
    assert reply.status == 200, reply.body
    binary = "inference-header-content-length" in reply.headers
    assert binary == (variant == "binary")
    if binary:
        assert reply.headers["content-type"] == "application/octet-stream"
    np.testing.assert_array_equal(probabilities_of(reply), expected)


async def test_binary_data_output_parameter_asks_for_binary(app) -> None:
    images = np.zeros((2, 28, 28), np.uint8)
    body = json_body(images, parameters={"binary_data_output": True})
    reply = await infer(app, body)
    assert reply.status == 200 and "inference-header-content-length" in reply.headers
    assert probabilities_of(reply).shape == (2, 10)


async def test_versioned_path_and_health_and_metadata(app) -> None:
    url = base(app)
    assert (await curl(url + "/v2/health/live")).json() == {"live": True}
    assert (await curl(url + "/v2/health/ready")).json() == {"ready": True}
    server = (await curl(url + "/v2")).json()
    assert server["name"] == "fashion-serving"
    assert {"statistics", "model_configuration", "binary_tensor_data"} <= set(server["extensions"])
    for path in ("/v2/models/fashion", "/v2/models/fashion/versions/1"):
        metadata = (await curl(url + path)).json()
        assert metadata["versions"] == ["1"]
        images = {"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}
        assert metadata["inputs"] == [images]
        assert metadata["outputs"] == [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
        ]
        assert (await curl(url + path + "/ready")).json() == {"name": "fashion", "ready": True}
    reply = await infer(
        app, json_body(np.zeros((1, 28, 28), np.uint8)), path="/v2/models/fashion/versions/1/infer"
    )
    assert reply.status == 200 and reply.json()["model_version"] == "1"
    index = await curl(url + "/v2/repository/index", "-X", "POST")
    assert index.json() == [{"name": "fashion", "version": "1", "state": "READY", "reason": ""}]


async def test_config_and_stats_are_the_grpc_messages_in_json(app) -> None:
    url = base(app)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        grpc_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        config = await grpc_stub.ModelConfig(oip.ModelConfigRequest(name="fashion"))
        before = (await curl(url + "/v2/models/fashion/stats")).json()
        for n in (1, 4):
            reply = await infer(app, json_body(np.zeros((n, 28, 28), np.uint8)))
            assert reply.status == 200
        after = (await curl(url + "/v2/models/fashion/versions/1/stats")).json()
        grpc_stats = await grpc_stub.ModelStatistics(oip.ModelStatisticsRequest(name="fashion"))
    assert (await curl(url + "/v2/models/fashion/config")).json() == message_json(config.config)
    assert after == message_json(grpc_stats)  # nothing was sent in between
    (old,), (new,) = before["model_stats"], after["model_stats"]
    assert new["inference_count"] - old["inference_count"] == 5  # numbers, not strings
    success = (new["inference_stats"]["success"], old["inference_stats"]["success"])
    assert success[0]["count"] - success[1]["count"] == 2
    assert (await curl(url + "/v2/models/stats")).json() == after


BAD_BODIES = {
    "not-json": (b"{bad", 400, "not valid JSON"),
    "not-utf8": (b'{"inputs": "\xff"}', 400, "not valid JSON"),
    "array": (b"[1, 2]", 400, "must be a JSON object, got an array"),
    "deep": (b"[" * 100_000, 400, "not valid JSON"),
    "no-inputs": (b"{}", 400, "'inputs' must be an array"),
    "unknown-field": (b'{"inputs": [], "input": []}', 400, "unknown request fields ['input']"),
    "wrong-name": (b'{"inputs": [{"name": "x"}]}', 400, "exactly one input named 'images'"),
    "datatype": (tensor_body("INT8", [1, 28, 28], []), 400, "datatype 'INT8'"),
    "shape": (tensor_body("UINT8", [1, 27, 28], []), 400, "expected [N, 28, 28]"),
    "short-data": (
        tensor_body("UINT8", [1, 28, 28], [0]),
        400,
        "input 'images' 'data' has 1 values; shape [1, 28, 28] needs 784",
    ),
    "pixel-256": (tensor_body("UINT8", [1, 28, 28], [256] * 784), 400, "between 0 and 255"),
    "booleans": (
        tensor_body("UINT8", [1, 28, 28], [True] * 784),
        400,
        "integers between 0 and 255",
    ),
    "nan": (
        tensor_body("FP32", [1, 28, 28], [0.0]).replace(b"0.0", b"NaN"),
        400,
        "not valid JSON",
    ),
    "fp32-not-k-over-255": (
        json_body(np.zeros((1, 28, 28), np.uint8), datatype="FP32").replace(b"0.0,", b"0.5,", 1),
        400,
        "multiples of 1/255",
    ),
    "too-many-images": (json_body(np.zeros((9, 28, 28), np.uint8)), 400, "at most 8 per request"),
    "unknown-parameter": (
        json_body(np.zeros((1, 28, 28), np.uint8), parameters={"priority": 1}),
        400,
        "request parameters ['priority'] are not supported",
    ),
    "classification": (
        json_body(
            np.zeros((1, 28, 28), np.uint8),
            outputs=[{"name": "probabilities", "parameters": {"classification": 3}}],
        ),
        400,
        "classification extension is not supported",
    ),
    "unknown-output": (
        json_body(np.zeros((1, 28, 28), np.uint8), outputs=[{"name": "logits"}]),
        400,
        "unknown output 'logits'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_bad_body_gets_4xx_json_error_and_server_keeps_serving(start_app, case) -> None:
    app = await start_app(max_images_per_request=8)
    body, status, fragment = BAD_BODIES[case]
    reply = await infer(app, body)
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    assert fragment in reply.json()["error"]
    await assert_still_serving(app)
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{code=INVALID_ARGUMENT,method=HTTP/ModelInfer}"] == 1
    assert metrics["fashion_requests_total{code=OK,method=HTTP/ModelInfer}"] == 1


@pytest.mark.parametrize(
    ("header", "body_extra", "fragment"),
    [
        ("99999", b"", "but the body has only"),
        ("-1", b"", "must be a byte count"),
        (None, bytes(784), "bytes after the JSON but no input sets binary_data_size"),
        ("LEN", bytes(700), "binary data after the JSON"),
    ],
)
async def test_bad_binary_framing_is_400(app, header, body_extra, fragment) -> None:
    head, length = binary_body(np.zeros((1, 28, 28), np.uint8))
    text = head[:length]
    if header is None:  # the data is in the JSON, yet bytes follow it
        text = json_body(np.zeros((1, 28, 28), np.uint8))
        header = str(len(text))
    elif header == "LEN":
        header = str(length)
    args = ("-H", f"Inference-Header-Content-Length: {header}")
    reply = await infer(app, text + body_extra, *args)
    assert reply.status == 400, reply.body
    assert fragment in reply.json()["error"]
    await assert_still_serving(app)


async def test_unknown_model_version_and_path_are_404_json(app) -> None:
    url = base(app)
    unknown = (
        "/v2/models/other",
        "/v2/models/fashion/versions/7",
        "/v2/models/fashion/versions/01",
    )
    for path in unknown:
        reply = await curl(url + path)
        assert reply.status == 404 and "error" in reply.json(), (path, reply.body)
    reply = await infer(app, json_body(np.zeros((1, 28, 28), np.uint8)), path="/v2/models/x/infer")
    assert reply.status == 404 and "unknown model 'x'" in reply.json()["error"]
    reply = await curl(url + "/v3/nothing")
    assert reply.status == 404 and "no such endpoint" in reply.json()["error"]
    reply = await curl(url + "/v2/models/fashion/infer")  # GET
    assert reply.status == 405 and "POST" in reply.json()["error"]


async def test_large_json_is_parsed_off_the_loop_with_the_same_answers(app, test_set) -> None:
    """Bodies from 64 KiB go to the parse worker process: same probabilities as gRPC, the
    same refusals, and a decoding error still comes after the model's NOT_FOUND."""
    images = test_set[0][:40]
    body = json_body(images, datatype="FP32", nested=True)
    assert len(body) > 64 * 1024
    reply = await infer(app, body)
    assert reply.status == 200, reply.body
    np.testing.assert_array_equal(probabilities_of(reply), await grpc_probabilities(app, images))
    bad = json_body(np.full((40, 28, 28), 300, np.int64))
    reply = await infer(app, bad)
    assert reply.status == 400 and "between 0 and 255" in reply.json()["error"]
    reply = await infer(app, bad, path="/v2/models/other/infer")
    assert reply.status == 404 and "unknown model 'other'" in reply.json()["error"]
    reply = await infer(app, b"[" * 100_000)
    assert reply.status == 400 and "nested too deeply" in reply.json()["error"]


def parse_workers() -> list[int]:
    """The REST parse workers this (test) process has started: the running app's only."""
    return [c for c in children_of()(os.getpid()) if role(c) == "rest-parse"]


async def test_a_killed_parse_worker_costs_at_most_its_request_and_comes_back(app, test_set):
    """The parse worker killed (say by the OOM killer): the body it had, or the next one,
    gets 503 and a retry hint, never a hang or a 500; the one after starts a new worker and
    is answered; gRPC never noticed."""
    images = test_set[0][:40]
    body = json_body(images, datatype="FP32", nested=True)
    assert (await infer(app, body)).status == 200
    (first,) = parse_workers()
    os.kill(first, signal.SIGKILL)
    statuses = []
    for _ in range(5):
        reply = await infer(app, body)
        statuses.append(reply.status)
        if reply.status == 503:
            assert "parser was restarted; retry" in reply.json()["error"]
        if reply.status == 200:
            break
    assert statuses[-1] == 200 and statuses.count(503) <= 1, statuses
    np.testing.assert_array_equal(probabilities_of(reply), await grpc_probabilities(app, images))
    (second,) = parse_workers()
    assert second != first
    await assert_still_serving(app)


async def test_body_above_max_message_bytes_is_refused_declared_or_chunked(start_app) -> None:
    app = await start_app(max_message_bytes=64 * 1024)
    body = json_body(np.full((40, 28, 28), 200, np.uint8))  # ~125 KiB of JSON
    assert len(body) > 64 * 1024
    for args in ((), ("-H", "Transfer-Encoding: chunked")):
        reply = await infer(app, body, *args)
        assert reply.status == 413, reply.body  # Payload Too Large, and the body is not read
        assert reply.headers["connection"] == "close"
        assert "at most 65536 (--max-message-bytes)" in reply.json()["error"]
    await assert_still_serving(app)


async def test_not_ready_is_503_with_the_reason_then_serves(start_app) -> None:
    app = await start_app(load=False)
    url = base(app)
    for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/fashion/ready"):
        reply = await curl(url + path)
        assert reply.status == 503, (path, reply.body)
        assert "still loading" in reply.json()["error"]
        assert reply.headers["retry-after"] == "1"
    reply = await infer(app, json_body(np.zeros((1, 28, 28), np.uint8)))
    assert reply.status == 503 and "still loading" in reply.json()["error"]
    await app.load()
    assert (await curl(url + "/v2/health/ready")).status == 200
    await assert_still_serving(app)


async def test_full_queue_is_429_and_expired_timeout_is_504(start_app, faults) -> None:
    app = await start_app(max_queue=4, max_images_per_request=4)
    faults.hold()
    running = asyncio.ensure_future(infer(app, json_body(np.zeros((1, 28, 28), np.uint8))))
    await asyncio.to_thread(faults.entered.wait, 5)
    queued = asyncio.ensure_future(infer(app, json_body(np.zeros((3, 28, 28), np.uint8))))
    while queued_images(app) < 3:
        await asyncio.sleep(0.001)
    full = await infer(app, json_body(np.zeros((2, 28, 28), np.uint8)))
    assert full.status == 429 and "queue full" in full.json()["error"]
    assert full.headers["retry-after"] == "1"
    # Triton's "timeout" parameter (microseconds) is the request's deadline.
    one = np.zeros((1, 28, 28), np.uint8)
    late = await infer(app, json_body(one, parameters={"timeout": 1000}))
    assert late.status == 504, late.body
    faults.release.set()
    assert (await running).status == 200 and (await queued).status == 200


@pytest.mark.parametrize(("timeout", "status"), [(0, 200), (-1, 400), (True, 400)])
async def test_triton_timeout_of_zero_is_no_timeout(app, timeout, status) -> None:
    """Triton: "The default is 0 which indicates that the request has no timeout"."""
    reply = await infer(
        app, json_body(np.zeros((1, 28, 28), np.uint8), parameters={"timeout": timeout})
    )
    assert reply.status == status, reply.body
    if status == 400:
        assert "'timeout' must be a non-negative integer" in reply.json()["error"]


async def test_unexpected_error_is_500_with_the_generic_message(start_app, faults, caplog):
    app = await start_app()
    faults.fail("secret internal detail")
    reply = await infer(app, json_body(np.zeros((1, 28, 28), np.uint8)))
    assert reply.status == 500
    assert "secret" not in reply.json()["error"] and "internal error" in reply.json()["error"]
    assert "secret internal detail" in caplog.text
    faults.clear()
    await assert_still_serving(app)


async def test_http_port_off_and_tls_with_the_grpc_certificate(start_app, tmp_path) -> None:
    from tests.reliability.certs import CertificateAuthority

    off = await start_app(http_port=-1)
    assert off.http_port == 0 and off.rest is None
    ca = CertificateAuthority(tmp_path, "test-ca")
    server = ca.issue("server", server=True)
    app = await start_app(tls_cert=str(server.cert), tls_key=str(server.key))
    url = f"https://localhost:{app.http_port}/v2/health/ready"
    reply = await curl(url, "--cacert", str(ca.pair.cert))
    assert reply.status == 200 and reply.json() == {"ready": True}
    plain = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5", url.replace("https", "http"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await plain.communicate()
    assert plain.returncode != 0 or b'"ready"' not in out  # plaintext gets no answer


PARITY = {
    "no-images": (np.zeros((0, 28, 28), np.uint8), "", grpc.StatusCode.INVALID_ARGUMENT),
    "too-many-images": (np.zeros((9, 28, 28), np.uint8), "", grpc.StatusCode.INVALID_ARGUMENT),
    "unknown-version": (np.zeros((1, 28, 28), np.uint8), "9", grpc.StatusCode.NOT_FOUND),
    "odd-version": (np.zeros((1, 28, 28), np.uint8), "01", grpc.StatusCode.NOT_FOUND),
}


@pytest.mark.parametrize("case", list(PARITY))
async def test_rest_and_grpc_answer_the_same_bad_input_with_the_same_code(start_app, case):
    from server.errors import Code
    from server.rest import HTTP_STATUS

    app = await start_app(max_images_per_request=8)
    images, version, code = PARITY[case]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(infer_request(images, model_version=version), timeout=10)
    assert info.value.code() == code
    path = f"/v2/models/fashion/versions/{version}/infer" if version else "/v2/models/fashion/infer"
    reply = await infer(app, json_body(images), path=path)
    assert reply.status == HTTP_STATUS[Code[code.name]], reply.body
    assert reply.json()["error"] == info.value.details()  # one message, whichever protocol


async def test_shutdown_lets_an_in_flight_rest_request_finish(start_app, faults) -> None:
    from server.readiness import Phase

    app = await start_app()
    faults.hold()
    running = asyncio.ensure_future(infer(app, json_body(np.zeros((2, 28, 28), np.uint8))))
    await asyncio.to_thread(faults.entered.wait, 5)
    stopping = asyncio.ensure_future(app.stop(grace_s=5))
    while app.plane.readiness.phase is not Phase.STOPPING:
        await asyncio.sleep(0.001)
    faults.release.set()
    reply = await running
    assert reply.status == 200, reply.body
    assert probabilities_of(reply).shape == (2, 10)
    await stopping


async def test_unreadable_body_is_400_not_500(app, caplog) -> None:
    """``Content-Encoding: gzip`` on bytes that are not gzip: a client mistake, not ours."""
    reply = await infer(
        app, json_body(np.zeros((1, 28, 28), np.uint8)), "-H", "Content-Encoding: gzip"
    )
    assert reply.status == 400, reply.body
    assert "the request body cannot be read" in reply.json()["error"]
    assert "unexpected error" not in caplog.text
    await assert_still_serving(app)
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{code=INVALID_ARGUMENT,method=HTTP/ModelInfer}"] == 1


async def test_every_json_answer_is_plain_application_json(app) -> None:
    """``Content-Type: application/json``, as Triton and KServe's server send it: RFC 8259
    defines no charset parameter for it, and KServe's own REST client
    (``InferenceRESTClient._construct_http_status_error``) reads an error's message only when
    the header is exactly ``application/json``; with ``; charset=utf-8`` its exception said
    only "'400 Bad Request' for url ...", not what to change."""
    url = base(app)
    replies = {
        "bad body": await infer(app, b"{bad"),
        "unknown model": await infer(
            app, json_body(np.zeros((1, 28, 28), np.uint8)), path="/v2/models/x/infer"
        ),
        "no such path": await curl(url + "/v3/nothing"),
        "wrong method": await curl(url + "/v2/models/fashion/infer"),
        "metadata": await curl(url + "/v2/models/fashion"),
        "ready": await curl(url + "/v2/health/ready"),
        "infer": await infer(app, json_body(np.zeros((1, 28, 28), np.uint8))),
    }
    found = {what: reply.headers["content-type"] for what, reply in replies.items()}
    assert found == dict.fromkeys(replies, "application/json")
    assert "not valid JSON" in replies["bad body"].json()["error"]


# The HTTP paths of Triton's extensions this server does not implement, as tritonclient.http
# calls them, and the gRPC method each one mirrors.
UNIMPLEMENTED_PATHS = [
    ("GET", "/v2/trace/setting", "TraceSetting"),
    ("POST", "/v2/trace/setting", "TraceSetting"),
    ("GET", "/v2/models/fashion/trace/setting", "TraceSetting"),
    ("POST", "/v2/models/fashion/trace/setting", "TraceSetting"),
    ("GET", "/v2/logging", "LogSettings"),
    ("POST", "/v2/logging", "LogSettings"),
    ("GET", "/v2/systemsharedmemory/status", "SystemSharedMemoryStatus"),
    ("GET", "/v2/systemsharedmemory/region/r0/status", "SystemSharedMemoryStatus"),
    ("POST", "/v2/systemsharedmemory/region/r0/register", "SystemSharedMemoryRegister"),
    ("POST", "/v2/systemsharedmemory/region/r0/unregister", "SystemSharedMemoryUnregister"),
    ("POST", "/v2/systemsharedmemory/unregister", "SystemSharedMemoryUnregister"),
    ("GET", "/v2/cudasharedmemory/status", "CudaSharedMemoryStatus"),
    ("GET", "/v2/cudasharedmemory/region/r0/status", "CudaSharedMemoryStatus"),
    ("POST", "/v2/cudasharedmemory/region/r0/register", "CudaSharedMemoryRegister"),
    ("POST", "/v2/cudasharedmemory/region/r0/unregister", "CudaSharedMemoryUnregister"),
    ("POST", "/v2/cudasharedmemory/unregister", "CudaSharedMemoryUnregister"),
]


async def test_unimplemented_triton_extensions_say_so_as_over_grpc(app) -> None:
    """Triton's trace, logging and shared-memory endpoints, which tritonclient.http offers
    (``get_trace_settings``, ``get_log_settings``, ``register_system_shared_memory``, ...):
    501 with the reason the gRPC method gives (UNIMPLEMENTED), not a 404 "no such endpoint"
    that tells the client nothing of why; counted under the gRPC method's name."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LogSettings(oip.LogSettingsRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    grpc_message = info.value.details()
    assert "logging is configured at start-up" in grpc_message
    for method, path, name in UNIMPLEMENTED_PATHS:
        args = ("-X", "POST", "-d", "{}") if method == "POST" else ()
        reply = await curl(base(app) + path, *args)
        assert reply.status == 501, (method, path, reply.body)
        message = reply.json()["error"]
        assert message.startswith(f"fashion-serve does not implement {name}: "), message
        if name == "LogSettings":
            assert message == grpc_message
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{code=UNIMPLEMENTED,method=HTTP/LogSettings}"] == 2
    await assert_still_serving(app)


async def test_a_slow_upload_is_not_the_servers_latency(app) -> None:
    """The request's duration (``fashion_request_duration_seconds``, the access log, the
    latency alert) starts when its body has arrived, as a gRPC call's starts with its whole
    message: a client that takes its time to send is not the server being slow."""
    body = json_body(np.zeros((1, 28, 28), np.uint8))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
    head = (
        "POST /v2/models/fashion/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[:10])
    await writer.drain()
    await asyncio.sleep(1.5)  # the client's upload, not the server's work
    writer.write(body[10:])
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    metrics = await scrape(app)
    key = "fashion_request_duration_seconds_{}{{method=HTTP/ModelInfer}}"
    assert metrics[key.format("count")] == 1
    assert metrics[key.format("sum")] < 1.0, metrics[key.format("sum")]


async def test_an_empty_model_name_or_version_in_the_body_is_absent_as_over_grpc(app) -> None:
    """gRPC reads "" as not given (the path's model, the default version); so does the body."""
    body = json_body(np.zeros((1, 28, 28), np.uint8), model_name="", model_version="")
    for path in ("/v2/models/fashion/infer", "/v2/models/fashion/versions/1/infer"):
        reply = await infer(app, body, path=path)
        assert reply.status == 200, (path, reply.body)
        assert reply.json()["model_version"] == "1"
