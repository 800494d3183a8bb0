"""The REST codec alone: round trips, fuzzed bodies (only InvalidInput, never another error),
protobuf -> JSON that protobuf's own parser reads back, and the one HTTP status table."""

from __future__ import annotations

import gc
import io
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import parse_process
from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import model_config_pb2 as mc
from server.errors import Code, InvalidInput
from server.rest import HTTP_STATUS
from server.rest_codec import (
    HEADER_LENGTH,
    REST_INFER,
    decode_images,
    encode_response,
    message_json,
    parse_and_decode,
    parse_header_length,
    parse_index_body,
    parse_infer_body,
)

MAX_IMAGES = 8
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode(body: bytes, header: str | None = None) -> np.ndarray:
    parsed = parse_infer_body(body, header, model_name="fashion", model_version="")
    return decode_images(parsed, MAX_IMAGES)


def body_of(images: np.ndarray, datatype: str, nested: bool, binary: bool):
    values = images.astype("<f4") / np.float32(255) if datatype == "FP32" else images
    tensor: dict = {"name": "images", "datatype": datatype, "shape": list(images.shape)}
    if binary:
        raw = np.ascontiguousarray(values).tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps({"inputs": [tensor]}).encode()
        return head + raw, str(len(head))
    tensor["data"] = values.tolist() if nested else values.ravel().tolist()
    return json.dumps({"inputs": [tensor]}).encode(), None


@FUZZ
@given(
    n=st.integers(1, 3),
    datatype=st.sampled_from(["UINT8", "FP32"]),
    nested=st.booleans(),
    binary=st.booleans(),
    nhwc=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_encoding_decodes_to_the_same_pixels(n, datatype, nested, binary, nhwc, seed):
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    sent = images.reshape(n, 28, 28, 1) if nhwc else images
    body, header = body_of(sent, datatype, nested, binary)
    np.testing.assert_array_equal(decode(body, header), images)


@FUZZ
@given(body=st.binary(max_size=2048), header=st.none() | st.text(max_size=8))
def test_arbitrary_bytes_are_only_ever_invalid_input(body, header) -> None:
    try:
        decode(body, header)
    except InvalidInput:
        pass


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


def shapes():
    return st.lists(st.integers(-2, 30), max_size=5) | st.just([1, 28, 28]) | JSON_VALUES


@FUZZ
@given(
    datatype=st.sampled_from(["UINT8", "FP32", "INT8"]) | JSON_VALUES,
    shape=shapes(),
    data=JSON_VALUES | st.lists(st.integers(-1, 300), min_size=784, max_size=784),
    parameters=st.none() | JSON_VALUES | st.fixed_dictionaries({"binary_data_size": JSON_VALUES}),
    request_parameters=st.none() | JSON_VALUES,
    outputs=st.none() | JSON_VALUES,
    tail=st.binary(max_size=800),
    use_header=st.booleans(),
)
def test_structured_garbage_is_only_ever_invalid_input(
    datatype, shape, data, parameters, request_parameters, outputs, tail, use_header
) -> None:
    tensor = {"name": "images", "datatype": datatype, "shape": shape, "data": data}
    if parameters is not None:
        tensor["parameters"] = parameters
    document: dict = {"inputs": [tensor]}
    if request_parameters is not None:
        document["parameters"] = request_parameters
    if outputs is not None:
        document["outputs"] = outputs
    head = json.dumps(document).encode()
    header = str(len(head)) if use_header else None
    try:
        parsed = parse_infer_body(
            head + (tail if use_header else b""), header, model_name="fashion", model_version=""
        )
        from server.rest_codec import REST_INFER

        REST_INFER.target(parsed)
        images = decode_images(parsed, MAX_IMAGES)
    except InvalidInput as exc:
        assert len(str(exc)) < 400  # client text is cut, never echoed whole
        return
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 50_000, "nested too deeply"),
        (b'{"inputs": [], "id": 3}', "'id' must be a string"),
        (
            b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 28, 28], '
            b'"data": [Infinity]}]}',
            "not valid JSON",
        ),
    ],
)
def test_specific_refusals(body, fragment) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        decode(body)


def test_parse_and_decode_sends_back_only_images_and_keeps_a_decode_error_for_later() -> None:
    """What the parse worker returns: the images instead of the inputs, or the decoding
    error, raised only when the data plane decodes (after the model is resolved)."""
    images = np.random.default_rng(3).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    for datatype, binary in (("UINT8", False), ("FP32", False), ("UINT8", True)):
        body, header = body_of(images, datatype, nested=False, binary=binary)
        parsed = parse_and_decode(
            body, header, model_name="fashion", model_version="", max_images=MAX_IMAGES
        )
        assert parsed.inputs == [] and parsed.binary == b""
        np.testing.assert_array_equal(REST_INFER.decode(parsed, MAX_IMAGES), images)
    bad = json.dumps(
        {"id": "x", "inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28],
                                "data": [300] * 784}]}
    ).encode()  # fmt: skip
    parsed = parse_and_decode(bad, None, model_name="m", model_version="", max_images=MAX_IMAGES)
    assert parsed.id == "x" and REST_INFER.target(parsed).model == "m"
    with pytest.raises(InvalidInput, match="between 0 and 255"):
        REST_INFER.decode(parsed, MAX_IMAGES)
    with pytest.raises(InvalidInput, match="not valid JSON"):  # structure: raised at once
        parse_and_decode(b"{", None, model_name="m", model_version="", max_images=MAX_IMAGES)


def test_a_body_refused_in_the_parse_worker_is_freed_at_once() -> None:
    """A decoding error sent back from the parse worker holds neither its traceback nor the
    error it was raised from: their frames hold the parsed body; returned from them it
    would be a reference cycle keeping every number of the body as a Python object until
    the worker's next full collection (measured: a worker grew to 323 MiB on twenty
    refused 3 MB bodies), and a context kept until the next body arrives."""
    refused = {
        "divided by 255": {"datatype": "FP32", "data": [0.123456789] * (2 * 784)},
        "between 0 and 255": {"datatype": "UINT8", "data": [300] * (2 * 784)},  # from None
    }
    for message, tensor in refused.items():
        bad = json.dumps({"inputs": [{"name": "images", "shape": [2, 28, 28], **tensor}]})
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        try:
            parsed = parse_and_decode(
                bad.encode(), None, model_name="m", model_version="", max_images=8
            )
            error = parsed.decode_error
            assert isinstance(error, InvalidInput) and message in str(error)
            assert error.__traceback__ is None and error.__context__ is None
            del parsed, error
            assert gc.collect() == 0, "the refused body was kept by a reference cycle"
        finally:
            if enabled:
                gc.enable()


def test_the_parse_worker_loads_neither_onnxruntime_nor_grpc() -> None:
    """The REST parse worker (``python -m server.parse_process``) imports this codec and
    what it needs: numpy and orjson, not the server's heavy modules (onnxruntime alone
    added ~17 MiB to every worker's parse worker when the codec imported the model module)."""
    code = (
        "import sys, server.parse_process, server.orphans, server.rest_codec; "
        "print(sorted(m for m in ('grpc', 'onnxruntime', 'aiohttp', 'prometheus_client', "
        "'multiprocessing') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_parse_process_answers_each_framed_body_in_order() -> None:
    """server/parse_process.py's loop, on in-memory streams: a body's images, a body that
    cannot be decoded (its error, without a traceback), one that is not JSON, then the end
    of the input ends it."""
    images = np.random.default_rng(5).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    good, header = body_of(images, "UINT8", nested=False, binary=False)
    bad = json.dumps(
        {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 28, 28],
                     "data": [300] * 784}]}
    ).encode()  # fmt: skip
    limits = {"model_name": "fashion", "model_version": "", "max_images": MAX_IMAGES}
    requests = io.BytesIO()
    for body in (good, bad, b"{"):
        parse_process.write_frame(requests, pickle.dumps((body, header, limits)))
    requests.seek(0)
    answers = io.BytesIO()
    parse_process.serve(requests, answers)
    answers.seek(0)
    outcomes = []
    while (frame := parse_process.read_frame(answers)) is not None:
        outcomes.append(pickle.loads(frame))
    assert [ok for ok, _ in outcomes] == [True, True, False]
    np.testing.assert_array_equal(REST_INFER.decode(outcomes[0][1], MAX_IMAGES), images)
    with pytest.raises(InvalidInput, match="between 0 and 255"):
        REST_INFER.decode(outcomes[1][1], MAX_IMAGES)
    error = outcomes[2][1]
    assert isinstance(error, InvalidInput) and "not valid JSON" in str(error)


def test_header_length_must_be_a_count_within_the_body() -> None:
    assert parse_header_length(None, 5) is None
    assert parse_header_length(" 3 ", 5) == 3
    for bad in ("", "x", "-1", "6", "\uff11"):
        with pytest.raises(InvalidInput, match=HEADER_LENGTH):
            parse_header_length(bad, 5)


@pytest.mark.parametrize("binary", [True, False])
def test_response_round_trips(binary) -> None:
    probabilities = np.random.default_rng(1).random((3, 10), dtype=np.float32)
    encoded = encode_response(
        probabilities, model_name="fashion", version=4, request_id="x", binary=binary
    )
    if binary:
        assert encoded.header_length is not None
        head = json.loads(encoded.body[: encoded.header_length])
        got = np.frombuffer(encoded.body[encoded.header_length :], "<f4").reshape(3, 10)
        assert head["outputs"][0]["parameters"] == {"binary_data_size": 120}
    else:
        assert encoded.header_length is None
        head = json.loads(encoded.body)
        got = np.asarray(head["outputs"][0]["data"], np.float32).reshape(3, 10)
    assert (head["model_version"], head["id"]) == ("4", "x")
    np.testing.assert_array_equal(got, probabilities)


def test_message_json_reads_back_through_protobuf_and_keeps_64_bit_numbers() -> None:
    stats = oip.ModelStatisticsResponse(
        model_stats=[
            oip.ModelStatistics(
                name="fashion",
                version="1",
                inference_count=2**40,
                inference_stats=oip.InferStatistics(success=oip.StatisticDuration(count=3, ns=9)),
                batch_stats=[oip.InferBatchStatistics(batch_size=4)],
            )
        ]
    )
    document = message_json(stats)
    assert document["model_stats"][0]["inference_count"] == 2**40  # a number, not "1099511627776"
    assert json_format.ParseDict(document, oip.ModelStatisticsResponse()) == stats
    config = mc.ModelConfig(
        name="fashion",
        max_batch_size=8,
        input=[mc.ModelInput(name="images", data_type=mc.TYPE_UINT8, dims=[28, 28])],
        dynamic_batching=mc.ModelDynamicBatching(preferred_batch_size=[64]),
        parameters={"version": mc.ModelParameter(string_value="1")},
    )
    document = message_json(config)
    assert document["input"][0]["data_type"] == "TYPE_UINT8"
    assert "sequence_batching" not in document and "dynamic_batching" in document
    assert json_format.ParseDict(document, mc.ModelConfig()) == config


def test_repository_index_body() -> None:
    assert parse_index_body(b"") is False
    assert parse_index_body(b'{"ready": true}') is True
    for bad in (b"[]", b'{"ready": 1}', b'{"x": true}', b"{"):
        with pytest.raises(InvalidInput):
            parse_index_body(bad)


def test_one_http_status_per_code_as_the_readme_table_says() -> None:
    assert set(HTTP_STATUS) == set(Code)
    expected = {
        Code.INVALID_ARGUMENT: 400,
        Code.NOT_FOUND: 404,
        Code.RESOURCE_EXHAUSTED: 429,
        Code.UNAVAILABLE: 503,
        Code.DEADLINE_EXCEEDED: 504,
        Code.INTERNAL: 500,
    }
    assert {code: HTTP_STATUS[code] for code in expected} == expected


def test_model_name_and_version_in_the_body_must_agree_with_the_path() -> None:
    base = {"inputs": []}

    def parse(document: dict, version: str = ""):
        body = json.dumps({**base, **document}).encode()
        return parse_infer_body(body, None, model_name="fashion", model_version=version)

    assert parse({"model_name": "fashion", "model_version": "1"}, "1").model_version == "1"
    assert parse({"model_version": "2"}).model_version == "2"  # named only in the body
    for document, version in (
        ({"model_name": "other"}, ""),
        ({"model_version": "2"}, "1"),
        ({"model_name": 3}, ""),
    ):
        with pytest.raises(InvalidInput, match="model_"):
            parse(document, version)
