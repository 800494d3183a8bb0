"""Pre-serialised requests for both APIs, and the check of a response's size.

The load generator sends bytes and receives bytes (no protobuf work per call on the
client side), so the client spends its CPU on gRPC itself, not on messages.
"""

from __future__ import annotations

import numpy as np

from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.inference import grpc_predict_v2_pb2 as oip

# "stream": PredictStream, one long-lived stream per client, one request in flight on it.
APIS = ("predict", "oip", "stream")
METHOD = {
    "predict": "/fashion.v1.PredictionService/Predict",
    "oip": "/inference.GRPCInferenceService/ModelInfer",
    "stream": "/fashion.v1.PredictionService/PredictStream",
}
IMAGE_SHAPE = (28, 28)


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
    if api == "oip":
        return bytes(infer_request(batch).SerializeToString())
    raise ValueError(f"unknown api {api!r}; expected one of {', '.join(APIS)}")


def answered_images(api: str, response: bytes) -> int:
    """How many images a serialised response answers (to check the server's work)."""
    if api in ("predict", "stream"):
        return len(pb.PredictResponse.FromString(response).predictions)
    parsed = oip.ModelInferResponse.FromString(response)
    return len(parsed.raw_output_contents[0]) // (4 * 10) if parsed.raw_output_contents else 0
