"""Property-based fuzzing of every decode path: only InvalidInput, never anything else."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.inference import grpc_predict_v2_pb2 as oip
from server.codec import prepare_images
from server.errors import InvalidInput
from server.oip_codec import decode_infer_request


def decode_images(request, max_images: int) -> np.ndarray:
    """The request's images, decoding encoded ones inline (the server defers them)."""
    prepared = prepare_images(request, max_images)
    return prepared if isinstance(prepared, np.ndarray) else prepared()


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _encoded(fmt: str, size: tuple[int, int], mode: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size[::-1], np.uint8))
    image.convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


VALID_FILES = [
    _encoded(f, s, m)
    for f in ("PNG", "JPEG")
    for s in ((28, 28), (27, 28), (56, 56))
    for m in ("L", "RGB")
]


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A real PNG/JPEG with random bytes flipped, cut or appended."""
    data = bytearray(draw(st.sampled_from(VALID_FILES)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=32))


images = st.builds(
    pb.Image,
    raw=st.one_of(st.just(b""), st.binary(max_size=1600), st.just(bytes(784))),
    encoded=st.one_of(st.just(b""), st.binary(max_size=200), corrupted()),
)


def _accepts_or_invalid(decode, request) -> np.ndarray | None:
    try:
        out = decode(request)
    except InvalidInput:
        return None
    assert out.dtype == np.uint8 and out.shape[1:] == (28, 28)
    return out


@FUZZ
@given(st.lists(images, max_size=6))
def test_predict_decode_never_fails_unexpectedly(image_list) -> None:
    request = pb.PredictRequest(images=image_list)
    out = _accepts_or_invalid(lambda r: decode_images(r, 4), request)
    if out is not None:
        assert len(out) == len(image_list)


Tensor = oip.ModelInferRequest.InferInputTensor
dims = st.one_of(st.integers(-3, 40), st.sampled_from([28, 1, 2**40, -(2**40)]))


@st.composite
def infer_requests(draw: st.DrawFn) -> oip.ModelInferRequest:
    datatype = draw(st.sampled_from(["UINT8", "FP32", "INT32", "BYTES", "FP16", "", "uint8"]))
    shape = draw(
        st.one_of(
            st.lists(dims, max_size=5),
            st.tuples(st.integers(-1, 5), st.just(28), st.just(28)).map(list),
        )
    )
    contents = draw(
        st.one_of(
            st.none(),
            st.builds(
                oip.InferTensorContents,
                uint_contents=st.lists(st.integers(0, 2**32 - 1), max_size=1600),
            ),
            st.builds(
                oip.InferTensorContents,
                fp32_contents=st.lists(st.floats(width=32, allow_nan=True), max_size=1600),
            ),
            st.builds(
                oip.InferTensorContents, int_contents=st.lists(st.integers(-5, 5), max_size=9)
            ),
        )
    )
    tensor = Tensor(name=draw(st.sampled_from(["images", "x", ""])), datatype=datatype, shape=shape)
    if contents is not None:
        tensor.contents.CopyFrom(contents)
    raw = draw(st.lists(st.binary(max_size=3200), max_size=2))
    return oip.ModelInferRequest(model_name="fashion", inputs=[tensor], raw_input_contents=raw)


@FUZZ
@given(infer_requests())
def test_oip_decode_never_fails_unexpectedly(request) -> None:
    _accepts_or_invalid(lambda r: decode_infer_request(r, 4), request)
