"""Open Inference Protocol requests for the ``fashion`` model (raw UINT8, the fast path).

Kept apart from :mod:`client.predictor`: importing the ``inference`` stubs registers the
protocol's messages in protobuf's default pool, which tritonclient's own copy would clash with.
"""

from __future__ import annotations

import numpy as np

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server.contract import INPUT_DATATYPE, INPUT_NAME, MODEL_NAME


def infer_request(
    images: np.ndarray, *, model_name: str = MODEL_NAME, **fields: object
) -> oip.ModelInferRequest:
    """uint8 [N, 28, 28] (or [N, 28, 28, 1]) -> a ModelInferRequest carrying raw bytes."""
    batch = np.ascontiguousarray(images, dtype=np.uint8)
    return oip.ModelInferRequest(
        model_name=model_name,
        inputs=[
            oip.ModelInferRequest.InferInputTensor(
                name=INPUT_NAME, datatype=INPUT_DATATYPE, shape=list(batch.shape)
            )
        ],
        raw_input_contents=[batch.tobytes()],
        **fields,  # type: ignore[arg-type]
    )
