"""Open Inference Protocol endpoint through our own stubs: errors, parity with Predict, batching.

tritonclient cannot share a process with these stubs (both register the
`inference` package in protobuf's default pool); its conformance tests live in
tests_tritonclient/ and run as a separate pytest session (scripts/test.sh).
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.oip_codec import parameter_values
from tests.e2e.conftest import queued_images, scrape
from tests.e2e.test_bad_input import assert_status

Tensor = oip.ModelInferRequest.InferInputTensor
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.fixture
def oip_stub(channel) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(channel)


async def test_model_infer_equals_predict(app, oip_stub, stub, test_set) -> None:
    images = test_set[0][:16]
    response = await oip_stub.ModelInfer(infer_request(images, id="req-7"), timeout=10)
    assert (response.model_name, response.model_version, response.id) == ("fashion", "1", "req-7")
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP32", [16, 10])
    probabilities = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(16, 10)
    predicted = await stub.Predict(
        pb.PredictRequest(
            images=[pb.Image(raw=a.tobytes()) for a in images], include_probabilities=True
        )
    )
    expected = np.array([list(p.probabilities) for p in predicted.predictions], np.float32)
    np.testing.assert_array_equal(probabilities, expected)


async def test_fp32_and_typed_contents_and_nhwc_give_the_same_result(
    app, oip_stub, test_set
) -> None:
    images = test_set[0][:4]
    base = await oip_stub.ModelInfer(infer_request(images))
    fp32 = (images.astype(np.float32) / 255.0).reshape(4, 28, 28, 1)
    variants = [
        oip.ModelInferRequest(
            model_name="fashion",
            inputs=[Tensor(name="images", datatype="FP32", shape=[4, 28, 28, 1])],
            raw_input_contents=[fp32.astype("<f4").tobytes()],
        ),
        oip.ModelInferRequest(
            model_name="fashion",
            inputs=[
                Tensor(
                    name="images",
                    datatype="FP32",
                    shape=[4, 28, 28],
                    contents=oip.InferTensorContents(fp32_contents=fp32.ravel().tolist()),
                )
            ],
        ),
        oip.ModelInferRequest(
            model_name="fashion",
            model_version="1",
            inputs=[
                Tensor(
                    name="images",
                    datatype="UINT8",
                    shape=[4, 28, 28],
                    contents=oip.InferTensorContents(uint_contents=images.ravel().tolist()),
                )
            ],
            outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
        ),
    ]
    for request in variants:
        response = await oip_stub.ModelInfer(request, timeout=10)
        assert response.raw_output_contents[0] == base.raw_output_contents[0]


def _raw(datatype: str, shape: list[int], data: bytes, **kw) -> oip.ModelInferRequest:
    return oip.ModelInferRequest(
        model_name="fashion",
        inputs=[Tensor(name="images", datatype=datatype, shape=shape)],
        raw_input_contents=[data],
        **kw,
    )


BAD = [
    (
        "wrong-datatype",
        _raw("INT32", [1, 28, 28], bytes(784 * 4)),
        INVALID,
        "datatype 'INT32'; expected UINT8",
    ),
    (
        "wrong-shape",
        _raw("UINT8", [1, 784], bytes(784)),
        INVALID,
        "shape [1, 784]; expected [N, 28, 28] or [N, 28, 28, 1]",
    ),
    ("zero-batch", _raw("UINT8", [0, 28, 28], b""), INVALID, "batch size 0"),
    (
        "byte-count",
        _raw("UINT8", [2, 28, 28], bytes(784)),
        INVALID,
        "has 784 bytes; shape [2, 28, 28] of UINT8 needs 1568",
    ),
    (
        "both-contents",
        oip.ModelInferRequest(
            model_name="fashion",
            inputs=[
                Tensor(
                    name="images",
                    datatype="UINT8",
                    shape=[1, 28, 28],
                    contents=oip.InferTensorContents(uint_contents=[0] * 784),
                )
            ],
            raw_input_contents=[bytes(784)],
        ),
        INVALID,
        "not both",
    ),
    (
        "no-contents",
        oip.ModelInferRequest(
            model_name="fashion",
            inputs=[Tensor(name="images", datatype="UINT8", shape=[1, 28, 28])],
        ),
        INVALID,
        "has no data",
    ),
    (
        "typed-count",
        oip.ModelInferRequest(
            model_name="fashion",
            inputs=[
                Tensor(
                    name="images",
                    datatype="UINT8",
                    shape=[1, 28, 28],
                    contents=oip.InferTensorContents(uint_contents=[0] * 10),
                )
            ],
        ),
        INVALID,
        "contents.uint_contents has 10 values; shape [1, 28, 28] needs 784",
    ),
    (
        "typed-range",
        oip.ModelInferRequest(
            model_name="fashion",
            inputs=[
                Tensor(
                    name="images",
                    datatype="UINT8",
                    shape=[1, 28, 28],
                    contents=oip.InferTensorContents(uint_contents=[256] * 784),
                )
            ],
        ),
        INVALID,
        "between 0 and 255",
    ),
    (
        "fp32-not-pixels",
        _raw("FP32", [1, 28, 28], np.full(784, 0.5, "<f4").tobytes()),
        INVALID,
        "multiples of 1/255",
    ),
    (
        "fp32-nan",
        _raw("FP32", [1, 28, 28], np.full(784, np.nan, "<f4").tobytes()),
        INVALID,
        "multiples of 1/255",
    ),
    (
        "input-name",
        oip.ModelInferRequest(
            model_name="fashion",
            inputs=[Tensor(name="x", datatype="UINT8", shape=[1, 28, 28])],
            raw_input_contents=[bytes(784)],
        ),
        INVALID,
        "exactly one input named 'images', got ['x']",
    ),
    (
        "unknown-output",
        _raw(
            "UINT8",
            [1, 28, 28],
            bytes(784),
            outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
        ),
        INVALID,
        "unknown output 'logits'",
    ),
    ("too-many", _raw("UINT8", [9, 28, 28], bytes(784 * 9)), INVALID, "at most 8 per request"),
    (
        "parameter",
        _raw(
            "UINT8",
            [1, 28, 28],
            bytes(784),
            parameters={"priority": oip.InferParameter(int64_param=1)},
        ),
        INVALID,
        "request parameters ['priority'] are not supported",
    ),
    (
        "unknown-model",
        oip.ModelInferRequest(model_name="mnist"),
        NOT_FOUND,
        "unknown model 'mnist'",
    ),
    (
        "unknown-version",
        _raw("UINT8", [1, 28, 28], bytes(784), model_version="7"),
        NOT_FOUND,
        "model 'fashion' version 7 is not served",
    ),
    (
        "bad-version",
        _raw("UINT8", [1, 28, 28], bytes(784), model_version="latest"),
        NOT_FOUND,
        "versions are positive integers",
    ),
]


@pytest.mark.parametrize(
    ("request_", "code", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
async def test_malformed_infer_request_is_refused(start_app, request_, code, fragment) -> None:
    app = await start_app(max_images_per_request=8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        await assert_status(stub.ModelInfer(request_, timeout=5), code, fragment)
        ok = await stub.ModelInfer(infer_request(np.zeros((1, 28, 28), np.uint8)), timeout=5)
        assert len(ok.raw_output_contents[0]) == 40


async def test_metadata_and_readiness(start_app) -> None:
    app = await start_app(load=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        # Listening while the first model loads: neither live nor ready, as health "" says.
        assert not (await stub.ServerLive(oip.ServerLiveRequest())).live
        assert not (await stub.ServerReady(oip.ServerReadyRequest())).ready
        assert not (await stub.ModelReady(oip.ModelReadyRequest(name="fashion"))).ready
        await app.load()
        assert (await stub.ServerLive(oip.ServerLiveRequest())).live
        assert (await stub.ServerReady(oip.ServerReadyRequest())).ready
        assert (await stub.ModelReady(oip.ModelReadyRequest(name="fashion", version="1"))).ready
        assert not (await stub.ModelReady(oip.ModelReadyRequest(name="fashion", version="3"))).ready
        await assert_status(
            stub.ModelMetadata(oip.ModelMetadataRequest(name="cifar")),
            NOT_FOUND,
            "unknown model 'cifar'",
        )
        meta = await stub.ModelMetadata(oip.ModelMetadataRequest(name="fashion"))
        assert (meta.name, list(meta.versions), meta.platform) == (
            "fashion",
            ["1"],
            "onnxruntime_onnx",
        )
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("images", "UINT8", [-1, 28, 28])
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("probabilities", "FP32", [-1, 10])
        ]
        server = await stub.ServerMetadata(oip.ServerMetadataRequest())
        assert server.name == "fashion-serving" and server.version
        stopping = asyncio.create_task(app.stop(grace_s=1.0))
        await asyncio.sleep(0.05)
        assert not (await stub.ServerReady(oip.ServerReadyRequest())).ready
        assert not (await stub.ServerLive(oip.ServerLiveRequest())).live
        await stopping


async def test_concurrent_model_infer_and_predict_share_batches(start_app, test_set) -> None:
    app = await start_app(max_batch_size=64)
    images = test_set[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        stub = pb_grpc.PredictionServiceStub(channel)

        async def infer_client(i: int) -> None:
            for j in range(15):
                await oip_stub.ModelInfer(infer_request(images[i + j : i + j + 1]))

        async def predict_client(i: int) -> None:
            for j in range(15):
                await stub.Predict(
                    pb.PredictRequest(images=[pb.Image(raw=images[i + j].tobytes())])
                )

        await asyncio.gather(
            *(infer_client(i) for i in range(16)), *(predict_client(i) for i in range(16))
        )
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{code=OK,method=ModelInfer}"] == 240
    assert metrics["fashion_requests_total{code=OK,method=Predict}"] == 240
    assert metrics["fashion_batch_size_images_sum{}"] == 480
    # Fewer batches than requests: the two APIs' requests were merged.
    assert metrics["fashion_batch_size_images_count{}"] < 480


async def test_one_predict_and_one_model_infer_land_in_one_batch(start_app, faults) -> None:
    app = await start_app()
    faults.hold()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        first = asyncio.ensure_future(
            stub.Predict(pb.PredictRequest(images=[pb.Image(raw=bytes(784))]))
        )
        await asyncio.to_thread(faults.entered.wait, 5)
        mixed = [
            asyncio.ensure_future(
                stub.Predict(pb.PredictRequest(images=[pb.Image(raw=bytes(784))]))
            ),
            asyncio.ensure_future(
                oip_stub.ModelInfer(infer_request(np.zeros((2, 28, 28), np.uint8)))
            ),
        ]
        while queued_images(app) < 3:
            await asyncio.sleep(0.001)
        faults.release.set()
        await asyncio.gather(first, *mixed)
    metrics = await scrape(app)
    # Two batches: the lone first request, then 1 Predict image + 2 ModelInfer images together.
    assert metrics["fashion_batch_size_images_count{}"] == 2
    assert metrics["fashion_batch_size_images_bucket{le=2.0}"] == 1
    assert metrics["fashion_batch_size_images_bucket{le=4.0}"] == 2


async def test_stream_responses_are_final_and_a_failure_names_its_request(app, oip_stub) -> None:
    """As Triton's ModelStreamInfer: every response says ``triton_final_response`` (true: the
    model is not decoupled, one response per request), with no extra empty final response
    when the request asks for one; a failure carries the request's id, model name and
    version ("so that client knows which request failed"). ModelInfer's answer is as before."""
    one = np.zeros((1, 28, 28), np.uint8)
    first = infer_request(one, id="ok-1")
    failing = infer_request(np.zeros((1, 28, 27), np.uint8), id="bad-2", model_version="1")
    asking = infer_request(one, id="ok-3")
    for request in (failing, asking):
        request.parameters["triton_enable_empty_final_response"].bool_param = True
    unnamed = infer_request(one, model_name="mnist")  # no id: none to echo
    call = oip_stub.ModelStreamInfer(iter([first, failing, asking, unnamed]), timeout=10)
    answers = [answer async for answer in call]
    assert len(answers) == 4
    final = {"triton_final_response": True}
    assert [parameter_values(a.infer_response.parameters) for a in answers] == [final] * 4
    ok, failed, asked, unknown = answers
    assert (ok.error_message, asked.error_message) == ("", "")
    assert [a.infer_response.id for a in (ok, asked)] == ["ok-1", "ok-3"]
    assert "expected [N, 28, 28]" in failed.error_message
    assert (
        failed.infer_response.id,
        failed.infer_response.model_name,
        failed.infer_response.model_version,
    ) == ("bad-2", "fashion", "1")
    assert not failed.infer_response.outputs and not failed.infer_response.raw_output_contents
    assert "unknown model 'mnist'" in unknown.error_message
    assert (unknown.infer_response.id, unknown.infer_response.model_name) == ("", "mnist")
    unary = await oip_stub.ModelInfer(first, timeout=10)
    assert not unary.parameters and unary.id == "ok-1"


async def test_a_stream_failure_does_not_echo_what_was_refused(app, oip_stub) -> None:
    """A request refused for its id (too long) or its model name gets neither echoed back: a
    stream of them must not hold each twice (issue #28)."""
    one = np.zeros((1, 28, 28), np.uint8)
    long_id = infer_request(one, id="i" * 5000)
    long_name = infer_request(one, model_name="m" * 5000, model_version="v" * 5000)
    call = oip_stub.ModelStreamInfer(iter([long_id, long_name]), timeout=10)
    answers = [answer async for answer in call]
    assert "the request id has 5000 characters" in answers[0].error_message
    assert "unknown model" in answers[1].error_message
    echoed = [(a.infer_response.id, a.infer_response.model_name) for a in answers]
    assert echoed == [("", "fashion"), ("", "")]
    assert answers[1].infer_response.model_version == ""
    assert all(answer.ByteSize() < 2000 for answer in answers)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"int64_param": 0}, None),  # Triton: "The default is 0 ... the request has no timeout"
        ({"int64_param": 10_000_000}, None),
        ({"int64_param": -1}, "'timeout' must be a non-negative integer (microseconds; 0: none)"),
        ({"double_param": 1.5}, "'timeout' must be a non-negative integer"),
    ],
    ids=["zero", "ten-seconds", "negative", "double"],
)
async def test_triton_timeout_parameter_zero_means_no_timeout(
    app, oip_stub, value, fragment
) -> None:
    request = infer_request(np.zeros((1, 28, 28), np.uint8))
    request.parameters["timeout"].CopyFrom(oip.InferParameter(**value))
    if fragment is None:
        response = await oip_stub.ModelInfer(request, timeout=10)
        assert len(response.raw_output_contents[0]) == 40
    else:
        await assert_status(oip_stub.ModelInfer(request, timeout=10), INVALID, fragment)


async def test_binary_data_size_input_parameter_as_kserve_sends_it_over_grpc(
    app, oip_stub, test_set
) -> None:
    """KServe's Python client (``InferInput.set_data_from_numpy``, binary by default, then
    ``InferRequest.to_grpc``) sends the bytes in ``raw_input_contents`` *and* keeps the input
    parameter ``binary_data_size`` (int64_param) that its REST form needs: the same request
    REST accepts. It is accepted when it agrees with the bytes sent, and refused, saying
    what disagrees, when it does not."""
    images = test_set[0][:3]
    expected = await oip_stub.ModelInfer(infer_request(images), timeout=10)
    request = infer_request(images)
    request.inputs[0].parameters["binary_data_size"].int64_param = images.nbytes
    response = await oip_stub.ModelInfer(request, timeout=10)
    assert response.raw_output_contents == expected.raw_output_contents
    request.inputs[0].parameters["binary_data_size"].int64_param = 784
    await assert_status(
        oip_stub.ModelInfer(request, timeout=10),
        INVALID,
        "input 'images' binary_data_size is 784 but raw_input_contents[0] has 2352 bytes",
    )
    typed = oip.ModelInferRequest(
        model_name="fashion",
        inputs=[
            Tensor(
                name="images",
                datatype="UINT8",
                shape=[1, 28, 28],
                contents=oip.InferTensorContents(uint_contents=[0] * 784),
                parameters={"binary_data_size": oip.InferParameter(int64_param=784)},
            )
        ],
    )
    await assert_status(
        oip_stub.ModelInfer(typed, timeout=10),
        INVALID,
        "sets binary_data_size, which describes raw_input_contents",
    )


@pytest.mark.parametrize(
    ("name", "version"),
    [("mnist", ""), ("fashion", "3"), ("fashion", "01"), ("", "")],
    ids=["unknown-model", "unknown-version", "not-a-version", "no-name"],
)
async def test_model_ready_of_what_is_not_served_is_false_not_an_error(
    app, oip_stub, name, version
) -> None:
    """ModelReady answers the question: a model or version that is not served is not ready
    (OK, ``ready: false``), as Triton answers it (``InferenceServer::ModelIsReady``) and as
    REST does for HTTP clients (a 404 is "false" to tritonclient.http and KServe's client).
    A NOT_FOUND error made tritonclient.grpc's ``is_model_ready`` raise where
    tritonclient.http's returns False, e.g. in a loop waiting for a version to be loaded."""
    answer = await oip_stub.ModelReady(oip.ModelReadyRequest(name=name, version=version))
    assert answer.ready is False
    assert (await oip_stub.ModelReady(oip.ModelReadyRequest(name="fashion"))).ready
