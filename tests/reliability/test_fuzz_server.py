"""Fuzzed requests through a real server: never INTERNAL, never a crash or hang, and
correct predictions afterwards."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.app import create_app
from server.repository import read_version
from tests.e2e.conftest import make_settings
from tests.unit.test_fuzz_codecs import images, infer_requests

EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@pytest.fixture(scope="module")
def target(model_repo) -> Iterator[str]:
    """A real server on its own event loop thread, so hypothesis can drive it synchronously."""
    loop = asyncio.new_event_loop()
    app = create_app(make_settings(model_repo, max_images_per_request=8))
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(app.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60)
    yield f"127.0.0.1:{app.port}"
    asyncio.run_coroutine_threadsafe(app.stop(grace_s=1), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    assert not thread.is_alive()
    loop.close()  # else the loop and its self-pipe are left to whichever test collects them


@pytest.fixture(scope="module")
def channel(target) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as ch:
        yield ch


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@FUZZ
@given(st.lists(images, max_size=10), st.integers(0, 12), st.integers(0, 3))
def test_fuzzed_predict_requests(channel, image_list, top_k, version) -> None:
    stub = pb_grpc.PredictionServiceStub(channel)
    request = pb.PredictRequest(images=image_list, top_k=top_k, model_version=version)
    assert _code(lambda: stub.Predict(request, timeout=10)) in EXPECTED


@FUZZ
@given(
    infer_requests(),
    st.sampled_from(["", "1", "2", "x", "-1"]),
    st.sampled_from(["fashion", "", "other"]),
)
def test_fuzzed_model_infer_requests(channel, request, version, name) -> None:
    request.model_version, request.model_name = version, name
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    assert _code(lambda: stub.ModelInfer(request, timeout=10)) in EXPECTED


def test_still_correct_after_fuzzing(channel, model_repo) -> None:
    from training.data import load_fashion_mnist

    batch = load_fashion_mnist(allow_download=False).test_images[:64]
    session = ort.InferenceSession(str(read_version(model_repo, 1).model_path))
    (expected,) = session.run(["probabilities"], {"images": batch})
    stub = pb_grpc.PredictionServiceStub(channel)
    labels = []
    for start in range(0, 64, 8):
        response = stub.Predict(
            pb.PredictRequest(images=[pb.Image(raw=a.tobytes()) for a in batch[start : start + 8]]),
            timeout=10,
        )
        labels += [p.label for p in response.predictions]
    assert labels == expected.argmax(axis=1).tolist()
