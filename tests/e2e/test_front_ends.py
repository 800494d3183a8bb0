"""Every front end answers the same bad input with the same status: one data plane decides.

Predict, PredictStream and the Open Inference Protocol's ModelInfer carry the
same request in different messages; each case sends it through all three, and
through Triton's ModelStreamInfer, which answers a failure in ``error_message``
(with ModelInfer's message) instead of ending the stream.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.inference import grpc_predict_v2_pb2 as oip

Tensor = oip.ModelInferRequest.InferInputTensor
PREDICT = "/fashion.v1.PredictionService/Predict"
STREAM = "/fashion.v1.PredictionService/PredictStream"
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def _images(n: int) -> np.ndarray:
    return np.zeros((n, 28, 28), np.uint8)


def _predict(images: np.ndarray, **fields: object) -> bytes:
    request = pb.PredictRequest(images=[pb.Image(raw=a.tobytes()) for a in images], **fields)
    return request.SerializeToString()


def _infer(images: np.ndarray, **fields: object) -> bytes:
    return infer_request(images, **fields).SerializeToString()


def _short_pixels() -> tuple[bytes, bytes]:
    predict = pb.PredictRequest(images=[pb.Image(raw=bytes(700))])
    infer = oip.ModelInferRequest(
        model_name="fashion",
        inputs=[Tensor(name="images", datatype="UINT8", shape=[1, 28, 28])],
        raw_input_contents=[bytes(700)],
    )
    return predict.SerializeToString(), infer.SerializeToString()


def _no_images() -> tuple[bytes, bytes]:
    infer = oip.ModelInferRequest(
        model_name="fashion",
        inputs=[Tensor(name="images", datatype="UINT8", shape=[0, 28, 28])],
        raw_input_contents=[b""],
    )
    return pb.PredictRequest().SerializeToString(), infer.SerializeToString()


CASES = {
    "no-images": (*_no_images(), grpc.StatusCode.INVALID_ARGUMENT),
    "too-many-images": (_predict(_images(9)), _infer(_images(9)), grpc.StatusCode.INVALID_ARGUMENT),
    "short-pixels": (*_short_pixels(), grpc.StatusCode.INVALID_ARGUMENT),
    "unknown-version": (
        _predict(_images(1), model_version=9),
        _infer(_images(1), model_version="9"),
        grpc.StatusCode.NOT_FOUND,
    ),
    "malformed-protobuf": (b"\x0f\x00", b"\x0f\x00", grpc.StatusCode.INVALID_ARGUMENT),
}


async def statuses(app, predict: bytes, infer: bytes) -> dict[str, grpc.StatusCode]:
    """The status each front end ends the call with (OK when it answered).

    Also checks ModelStreamInfer: one answer, carrying ModelInfer's message when
    ModelInfer failed and outputs when it did not.
    """
    out = {}
    details = ""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        for name, path, data in (("Predict", PREDICT, predict), ("ModelInfer", INFER, infer)):
            try:
                await channel.unary_unary(path)(data, timeout=10)
                out[name] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                out[name] = exc.code()
                details = exc.details() if name == "ModelInfer" else details
        call = channel.stream_stream(STREAM)(iter([predict]), timeout=10)
        try:
            async for _ in call:
                pass
            out["PredictStream"] = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            out["PredictStream"] = exc.code()
        stream_infer = channel.stream_stream(
            STREAM_INFER, response_deserializer=oip.ModelStreamInferResponse.FromString
        )
        try:
            answers = [r async for r in stream_infer(iter([infer]), timeout=10)]
        except grpc.aio.AioRpcError as exc:
            # Bytes that are no ModelInferRequest break the request stream itself: it ends
            # with ModelInfer's status and message (Triton answers in-band what it parsed).
            assert (exc.code(), exc.details()) == (out["ModelInfer"], details)
        else:
            (answer,) = answers
            assert answer.error_message == details
            # As Triton's: a failure's infer_response names the request, without outputs.
            assert bool(answer.infer_response.outputs) == (out["ModelInfer"] == grpc.StatusCode.OK)
    return out


@pytest.mark.parametrize("case", list(CASES))
async def test_same_bad_input_gets_the_same_status_everywhere(start_app, case) -> None:
    predict, infer, expected = CASES[case]
    app = await start_app(max_images_per_request=8)
    assert await statuses(app, predict, infer) == {
        "Predict": expected,
        "ModelInfer": expected,
        "PredictStream": expected,
    }


async def test_not_ready_is_unavailable_everywhere(start_app) -> None:
    app = await start_app(load=False)
    found = await statuses(app, _predict(_images(1)), _infer(_images(1)))
    assert set(found.values()) == {grpc.StatusCode.UNAVAILABLE}


async def test_unexpected_error_is_internal_everywhere(start_app, faults) -> None:
    app = await start_app()
    faults.fail("secret")
    found = await statuses(app, _predict(_images(1)), _infer(_images(1)))
    assert set(found.values()) == {grpc.StatusCode.INTERNAL}
