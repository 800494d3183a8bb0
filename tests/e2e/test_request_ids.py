"""Request ids on a real server (issue #26 item 3): taken from the client or generated,
sent back on every binding, and the same id in the JSON log lines about the request.

gRPC: ``x-request-id`` metadata in, trailing metadata out (success and failure); REST:
the ``x-request-id`` header both ways; the Open Inference Protocol's own ``id`` wins over
the transport's; stream messages are ``STREAM.1``, ``STREAM.2``, ... The log lines are
the server's own JSON formatter and filter (server.logs) on the root logger.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.logs import ACCESS_LOGGER, JsonFormatter, RequestIdFilter
from server.request_context import MAX_REQUEST_ID_CHARS
from tests.e2e.test_bad_input import assert_status
from tests.e2e.test_rest import infer, json_body

GENERATED = re.compile(r"[0-9a-f]{16}")
HEADER = "x-request-id"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class JsonLines(logging.Handler):
    """Every log line of the process, formatted as ``--log-format json`` writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def documents(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]  # every line parses

    def access(self, request_id: str) -> dict:
        (line,) = [
            d
            for d in self.documents()
            if d["logger"] == ACCESS_LOGGER and d.get("request_id") == request_id
        ]
        return line


@pytest.fixture
def logs() -> Iterator[JsonLines]:
    handler = JsonLines()
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    level = access.level
    root.addHandler(handler)
    access.setLevel(logging.INFO)  # what --access-log does
    yield handler
    access.setLevel(level)
    root.removeHandler(handler)


@pytest.fixture
async def app(start_app):
    return await start_app(access_log=True)


@pytest.fixture
def oip_stub(channel) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(channel)


def trailing_id(metadata) -> str:
    (value,) = [v for k, v in metadata if k == HEADER]
    return value


def predict_request(images: np.ndarray) -> pb.PredictRequest:
    return pb.PredictRequest(images=[pb.Image(raw=image.tobytes()) for image in images])


async def test_predict_sends_back_and_logs_the_id_it_was_given(app, stub, logs, test_set) -> None:
    call = stub.Predict(predict_request(test_set[0][:3]), metadata=((HEADER, "ticket-42"),))
    await call
    assert trailing_id(await call.trailing_metadata()) == "ticket-42"
    line = logs.access("ticket-42")
    assert {k: line[k] for k in ("method", "status", "model", "version", "images")} == {
        "method": "Predict",
        "status": "OK",
        "model": "fashion",
        "version": "1",
        "images": 3,
    }
    assert line["latency_ms"] > 0 and line["batch"] >= 1 and line["peer"].startswith("ipv4:")
    assert line["level"] == "INFO" and line["message"] == "request"


async def test_a_request_without_an_id_gets_a_generated_one(app, stub, logs) -> None:
    call = stub.Predict(predict_request(np.zeros((1, 28, 28), np.uint8)))
    await call
    generated = trailing_id(await call.trailing_metadata())
    assert GENERATED.fullmatch(generated)
    assert logs.access(generated)["status"] == "OK"
    reply = await infer(app, json_body(np.zeros((1, 28, 28), np.uint8)))
    assert reply.status == 200 and GENERATED.fullmatch(reply.headers[HEADER])
    assert reply.headers[HEADER] != generated
    assert "id" not in reply.json()  # the body echoes only an id the client sent
    assert logs.access(reply.headers[HEADER])["method"] == "HTTP/ModelInfer"


async def test_the_open_inference_protocol_id_wins_over_the_header(
    app, oip_stub, logs, test_set
) -> None:
    images = test_set[0][:2]
    call = oip_stub.ModelInfer(infer_request(images, id="oip-7"), metadata=((HEADER, "hdr-7"),))
    response = await call
    assert response.id == "oip-7" and trailing_id(await call.trailing_metadata()) == "oip-7"
    assert logs.access("oip-7")["images"] == 2
    reply = await infer(app, json_body(images, id="rest-7"), "-H", f"{HEADER}: hdr-8")
    assert reply.status == 200
    assert reply.json()["id"] == reply.headers[HEADER] == "rest-7"
    assert logs.access("rest-7")["method"] == "HTTP/ModelInfer"
    reply = await infer(app, json_body(images), "-H", f"{HEADER}: hdr-9")
    assert reply.headers[HEADER] == "hdr-9" and logs.access("hdr-9")["status"] == "OK"


async def test_failures_send_back_and_log_their_id(app, stub, oip_stub, logs) -> None:
    call = stub.Predict(pb.PredictRequest(), metadata=((HEADER, "bad-1"),))
    await assert_status(call, INVALID, "no images")
    assert trailing_id(await call.trailing_metadata()) == "bad-1"
    assert logs.access("bad-1")["status"] == "INVALID_ARGUMENT"
    assert logs.access("bad-1")["model"] == "fashion"  # it reached a version, then was refused
    call = oip_stub.ModelInfer(infer_request(np.zeros((1, 28, 28), np.uint8), model_name="nope"))
    await assert_status(call, grpc.StatusCode.NOT_FOUND, "nope")
    line = logs.access(trailing_id(await call.trailing_metadata()))
    assert line["status"] == "NOT_FOUND" and "model" not in line  # it reached no model
    reply = await infer(app, b"{", "-H", f"{HEADER}: bad-2")
    assert reply.status == 400 and reply.headers[HEADER] == "bad-2"
    assert logs.access("bad-2")["status"] == "INVALID_ARGUMENT"
    # Every route, not only inference.
    ready = await infer(app, b"", "-X", "GET", "-H", f"{HEADER}: probe-1", path="/v2/health/ready")
    assert ready.status == 200 and ready.headers[HEADER] == "probe-1"
    # The router's own 404 and 405 too: the client's id, else a generated one.
    for method, path, status in (("GET", "/v3/nothing", 404), ("GET", "/v2/models/x/infer", 405)):
        reply = await infer(app, b"", "-X", method, "-H", f"{HEADER}: route-1", path=path)
        assert reply.status == status and reply.headers[HEADER] == "route-1", reply.body
        reply = await infer(app, b"", "-X", method, path=path)
        assert reply.status == status and GENERATED.fullmatch(reply.headers[HEADER])


async def test_an_unexpected_errors_traceback_line_carries_the_request_id(
    app, oip_stub, logs, faults
) -> None:
    faults.fail("the model broke")
    call = oip_stub.ModelInfer(
        infer_request(np.zeros((1, 28, 28), np.uint8)), metadata=((HEADER, "boom-1"),)
    )
    await assert_status(call, grpc.StatusCode.INTERNAL, "internal error")
    assert trailing_id(await call.trailing_metadata()) == "boom-1"
    (failed,) = [d for d in logs.documents() if d["message"].startswith("ModelInfer failed")]
    assert failed["request_id"] == "boom-1" and failed["level"] == "ERROR"
    assert "RuntimeError: the model broke" in failed["exception"]
    # The batch's own line is about the batch (its id), not about one of its requests.
    (batch,) = [d for d in logs.documents() if re.match(r"batch \d+ of 1 images", d["message"])]
    assert "request_id" not in batch and batch["batch"] >= 1


@pytest.mark.parametrize(
    ("hostile", "fragment"),
    [
        ("evil\n" + json.dumps({"level": "ERROR", "message": "forged"}), "'\\n' at position 4"),
        ("\x1b[2Jclear", "'\\x1b' at position 0"),
        ("x" * 10_000, "the request id has 10000 characters; at most 1024"),
    ],
)
async def test_hostile_protocol_ids_are_refused_and_never_logged(
    app, oip_stub, logs, hostile, fragment
) -> None:
    images = np.zeros((1, 28, 28), np.uint8)
    call = oip_stub.ModelInfer(infer_request(images, id=hostile))
    await assert_status(call, INVALID, fragment)
    generated = trailing_id(await call.trailing_metadata())
    assert GENERATED.fullmatch(generated)
    assert logs.access(generated)["status"] == "INVALID_ARGUMENT"
    reply = await infer(app, json_body(images, id=hostile))
    assert reply.status == 400 and fragment in reply.json()["error"]
    assert GENERATED.fullmatch(reply.headers[HEADER])
    assert logs.access(reply.headers[HEADER])["status"] == "INVALID_ARGUMENT"
    assert not any(hostile in line or hostile[:64] in line for line in logs.lines)
    assert all(d.get("message") != "forged" for d in logs.documents())


async def test_hostile_transport_ids_are_refused_with_a_generated_id(app, stub, logs) -> None:
    images = np.zeros((1, 28, 28), np.uint8)
    long_id = "L" * (MAX_REQUEST_ID_CHARS + 1)
    call = stub.Predict(predict_request(images), metadata=((HEADER, long_id),))
    await assert_status(call, INVALID, f"x-request-id has {MAX_REQUEST_ID_CHARS + 1} characters")
    assert GENERATED.fullmatch(trailing_id(await call.trailing_metadata()))
    # gRPC clients cannot send control characters in metadata; HTTP clients can send a tab
    # and bytes beyond ASCII.
    for value, fragment in (
        ("a\tb", "'\\t' at position 1"),
        ("café", "printable ASCII"),
        (long_id, "1025 characters"),
    ):
        reply = await infer(app, json_body(images), "-H", f"{HEADER}: {value}")
        assert reply.status == 400 and fragment in reply.json()["error"], reply
        assert GENERATED.fullmatch(reply.headers[HEADER])
    assert not any(long_id[:64] in line for line in logs.lines)
    # Beyond the HTTP server's own header limit (8190 bytes) the request never reaches a
    # route: 431 (server/http_limits.py), the value neither echoed nor logged.
    reply = await infer(app, json_body(images), "-H", f"{HEADER}: {'z' * 10_000}")
    assert reply.status == 431 and HEADER not in reply.headers
    assert "8190 bytes" in reply.json()["error"]
    assert not any("z" * 101 in line for line in logs.lines)
    ok = await infer(app, json_body(images))
    assert ok.status == 200


async def test_stream_messages_are_numbered_after_the_streams_id(app, stub, oip_stub, logs) -> None:
    images = np.zeros((1, 28, 28), np.uint8)
    call = stub.PredictStream(iter([predict_request(images)] * 3), metadata=((HEADER, "stream-9"),))
    assert len([answer async for answer in call]) == 3
    assert trailing_id(await call.trailing_metadata()) == "stream-9"
    for n in (1, 2, 3):
        assert logs.access(f"stream-9.{n}")["method"] == "PredictStream"
    requests = [infer_request(images, id="own-id"), infer_request(images)]
    call = oip_stub.ModelStreamInfer(iter(requests))
    answers = [answer async for answer in call]
    assert [a.infer_response.id for a in answers] == ["own-id", ""]
    stream_id = trailing_id(await call.trailing_metadata())
    assert GENERATED.fullmatch(stream_id)
    assert logs.access("own-id")["status"] == "OK"
    assert logs.access(f"{stream_id}.2")["method"] == "ModelStreamInfer"


async def test_a_stream_with_a_bad_id_is_refused_whole(app, stub) -> None:
    call = stub.PredictStream(
        iter([predict_request(np.zeros((1, 28, 28), np.uint8))]),
        metadata=((HEADER, "s" * 2000),),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [answer async for answer in call]
    assert info.value.code() == INVALID and "x-request-id has 2000 characters" in (
        info.value.details()
    )


async def test_access_log_lines_hold_no_pixel_data(app, stub, logs, test_set) -> None:
    images = test_set[0][:8]
    await stub.Predict(predict_request(images), metadata=((HEADER, "px-1"),))
    body = json_body(images)
    reply = await infer(app, body, "-H", f"{HEADER}: px-2")
    assert reply.status == 200
    text = "\n".join(logs.lines)
    raw = images.tobytes()
    pixels = json.dumps(images[0].ravel().tolist()[200:232])[1:-1]  # 32 values, as JSON sends
    assert base64.b64encode(raw[:48]).decode() not in text
    assert pixels not in text
    assert raw[200:232].hex() not in text
    assert all(len(line) < 600 for line in logs.lines)  # a line about 8 images, not the images
    assert logs.access("px-1")["images"] == logs.access("px-2")["images"] == 8


async def test_concurrent_requests_each_log_their_own_id(app, oip_stub, logs) -> None:
    images = np.zeros((1, 28, 28), np.uint8)
    calls = [
        oip_stub.ModelInfer(infer_request(images), metadata=((HEADER, f"c-{i}"),))
        for i in range(16)
    ]
    await asyncio.gather(*calls)
    for i, call in enumerate(calls):
        assert trailing_id(await call.trailing_metadata()) == f"c-{i}"
        assert logs.access(f"c-{i}")["images"] == 1


async def test_a_refused_streams_access_line_carries_the_id_it_was_answered_under(
    app, stub, logs
) -> None:
    """A stream refused whole (its x-request-id cannot be one) is answered under a generated
    id in its trailers; its access line must carry that id, as a refused unary call's does,
    or the operator cannot find the line the client reports."""
    call = stub.PredictStream(
        iter([predict_request(np.zeros((1, 28, 28), np.uint8))]),
        metadata=((HEADER, "s" * 2000),),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [answer async for answer in call]
    assert info.value.code() == INVALID
    generated = trailing_id(await call.trailing_metadata())
    assert GENERATED.fullmatch(generated)
    line = logs.access(generated)
    assert line["method"] == "PredictStream" and line["status"] == "INVALID_ARGUMENT"


async def test_an_unsupported_expect_is_answered_with_an_id(app) -> None:
    """aiohttp sends what an expect handler returns as is, before any middleware: the 417
    for an Expect other than 100-continue was the one REST answer without x-request-id."""
    images = np.zeros((1, 28, 28), np.uint8)
    reply = await infer(app, json_body(images), "-H", "Expect: teapot", "-H", f"{HEADER}: exp-1")
    assert reply.status == 417 and reply.headers[HEADER] == "exp-1"
    reply = await infer(app, json_body(images), "-H", "Expect: teapot")
    assert reply.status == 417 and GENERATED.fullmatch(reply.headers[HEADER])


async def test_a_rest_request_that_matches_no_route_is_counted_and_logged(app, logs) -> None:
    """A path or method the REST API does not have (a KServe v1 client's ``/v1/models/...``,
    a GET on ``infer``): 404 and 405 are counted (``method="HTTP/Unrouted"``) and logged under
    the id they are answered with; before, an operator saw nothing of a misdirected client."""
    from tests.e2e.conftest import scrape
    from tests.e2e.curl import curl

    url = f"http://127.0.0.1:{app.http_port}"
    reply = await curl(url + "/v1/models/fashion:predict", "-X", "POST", "-H", f"{HEADER}: v1-1")
    assert reply.status == 404 and reply.headers[HEADER] == "v1-1"
    line = logs.access("v1-1")
    assert (line["method"], line["status"]) == ("HTTP/Unrouted", "NOT_FOUND")
    reply = await curl(url + "/v2/models/fashion/infer")  # GET
    assert reply.status == 405
    assert logs.access(reply.headers[HEADER])["status"] == "UNIMPLEMENTED"
    metrics = await scrape(app)
    assert metrics["fashion_requests_total{code=NOT_FOUND,method=HTTP/Unrouted}"] == 1
    assert metrics["fashion_requests_total{code=UNIMPLEMENTED,method=HTTP/Unrouted}"] == 1
