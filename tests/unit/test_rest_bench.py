"""fashion-bench's HTTP requests are what the REST codec accepts; its answer check reads ours."""

from __future__ import annotations

import numpy as np
import pytest

from bench.payload import HTTP_INFER_PATH, answered_images, http_request
from server.rest_codec import decode_images, encode_response, parse_infer_body


@pytest.mark.parametrize("api", ["http-json", "http-binary"])
def test_bench_request_decodes_to_its_images_and_the_answer_is_counted(api) -> None:
    batch = np.random.default_rng(3).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    request = http_request(api, batch)
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"POST {HTTP_INFER_PATH} HTTP/1.1"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert int(fields["Content-Length"]) == len(body)
    parsed = parse_infer_body(
        body,
        fields.get("Inference-Header-Content-Length"),
        model_name="fashion",
        model_version="",
    )
    np.testing.assert_array_equal(decode_images(parsed, 8), batch)
    binary = api == "http-binary"
    assert parsed.parameters.get("binary_data_output", False) is binary
    encoded = encode_response(
        np.zeros((5, 10), np.float32),
        model_name="fashion",
        version=1,
        request_id="",
        binary=binary,
    )
    json_part = (
        encoded.body if encoded.header_length is None else encoded.body[: encoded.header_length]
    )
    assert answered_images(api, json_part) == 5
