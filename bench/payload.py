"""Pre-serialised requests for both APIs, and the check of a response's size.

The load generator sends bytes and receives bytes (no protobuf work per call on the
client side), so the client spends its CPU on gRPC itself, not on messages.
"""

from __future__ import annotations

import json

import numpy as np

from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.inference import grpc_predict_v2_pb2 as oip
from server.contract import (
    IMAGE_SHAPE,
    INPUT_DATATYPE,
    INPUT_NAME,
    MODEL_NAME,
    NUM_CLASSES,
    OIP_DATATYPE,
    OUTPUT_DTYPE,
)

# "stream": PredictStream, one long-lived stream per client, one request in flight on it.
# "http-json" / "http-binary": the REST API's infer (KServe v2 JSON data; Triton's binary
# tensors in and out), one keep-alive HTTP/1.1 connection per client.
APIS = ("predict", "oip", "stream", "http-json", "http-binary")
HTTP_APIS = ("http-json", "http-binary")
HTTP_INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
METHOD = {
    "predict": "/fashion.v1.PredictionService/Predict",
    "oip": "/inference.GRPCInferenceService/ModelInfer",
    "stream": "/fashion.v1.PredictionService/PredictStream",
    "oip-stream": "/inference.GRPCInferenceService/ModelStreamInfer",
    "oip-fp32": "/inference.GRPCInferenceService/ModelInfer",
    "oip-fp32-stream": "/inference.GRPCInferenceService/ModelStreamInfer",
}
# "oip-stream": Triton's ModelStreamInfer, one long-lived stream per client like "stream".
# "oip-fp32*": float32 [N, 28, 28, 1] in [0, 1], the input of the stripped model that the
# ready-made servers serve (bench.peers); our server takes UINT8 and refuses it.
STREAM_APIS = ("stream", "oip-stream", "oip-fp32-stream")
PEER_APIS = ("oip-fp32", "oip-fp32-stream")
# Raw bytes of one image's answer (FP32 probabilities, one per class).
ANSWER_BYTES = np.dtype(OUTPUT_DTYPE).itemsize * NUM_CLASSES


def images(count: int, *, seed: int) -> np.ndarray:
    """Deterministic uint8 [count, 28, 28] (the CNN's cost does not depend on pixel values)."""
    return np.random.default_rng(seed).integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)


def request_bytes(api: str, batch: np.ndarray) -> bytes:
    if api in ("predict", "stream"):
        return bytes(
            pb.PredictRequest(
                images=[pb.Image(raw=row.tobytes()) for row in batch]
            ).SerializeToString()
        )
    if api in ("oip", "oip-stream"):
        return bytes(infer_request(batch).SerializeToString())
    if api in PEER_APIS:
        scaled = (batch.astype(np.float32) / np.float32(255.0))[..., np.newaxis]
        request = infer_request(batch)
        request.inputs[0].datatype = OIP_DATATYPE[scaled.dtype.name]
        request.inputs[0].shape[:] = list(scaled.shape)
        request.raw_input_contents[0] = scaled.tobytes()
        return bytes(request.SerializeToString())
    if api in HTTP_APIS:
        return http_request(api, batch)
    raise ValueError(f"unknown api {api!r}; expected one of {', '.join(APIS)}")


def http_request(api: str, batch: np.ndarray, host: str = "127.0.0.1") -> bytes:
    """A whole HTTP/1.1 POST of ``batch`` to the REST infer endpoint, as curl would send it."""
    shape = list(batch.shape)
    headers = [f"POST {HTTP_INFER_PATH} HTTP/1.1", f"Host: {host}"]
    if api == "http-json":
        tensor = {"name": INPUT_NAME, "datatype": INPUT_DATATYPE, "shape": shape}
        tensor["data"] = batch.ravel().tolist()
        body = json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()
        headers.append("Content-Type: application/json")
    else:
        raw = np.ascontiguousarray(batch, np.uint8).tobytes()
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": INPUT_NAME,
                        "datatype": INPUT_DATATYPE,
                        "shape": shape,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            },
            separators=(",", ":"),
        ).encode()
        body = head + raw
        headers += [
            "Content-Type: application/octet-stream",
            f"Inference-Header-Content-Length: {len(head)}",
        ]
    headers.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def answered_images(api: str, response: bytes) -> int:
    """How many images a serialised response answers (to check the server's work).

    For HTTP, ``response`` is the body's JSON (a binary body's first
    Inference-Header-Content-Length bytes).
    """
    if api in HTTP_APIS:
        return int(json.loads(response)["outputs"][0]["shape"][0])
    if api in ("predict", "stream"):
        return len(pb.PredictResponse.FromString(response).predictions)
    if api in ("oip-stream", "oip-fp32-stream"):
        streamed = oip.ModelStreamInferResponse.FromString(response)
        if streamed.error_message:
            return 0
        parsed = streamed.infer_response
    else:
        parsed = oip.ModelInferResponse.FromString(response)
    if parsed.raw_output_contents:
        return len(parsed.raw_output_contents[0]) // ANSWER_BYTES
    # A server may answer in typed contents instead (the protocol allows both).
    return len(parsed.outputs[0].contents.fp32_contents) // NUM_CLASSES if parsed.outputs else 0
