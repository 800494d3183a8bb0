"""KServe's own Python clients (kserve.InferenceRESTClient and InferenceGRPCClient, protocol
v2) against a server.

Run with the interpreter of a venv that has ``kserve`` (scripts/bootstrap.sh
``ensure_kserve_client``: it cannot share the project's dev venv, see docs/DEVELOPMENT.md), as
``python kserve_rest_client.py http://HOST:PORT SEED [GRPC_HOST:PORT]``. Prints one JSON
object: readiness as KServe's client reads it, the probabilities it decoded for the same
three images sent as JSON data and as binary data, the message of the exception a refused
request raises, and, with a gRPC target, the gRPC client's probabilities (or its error).
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _request(
    images: np.ndarray, binary: bool, request_id: str, model: str = "fashion"
) -> InferRequest:
    tensor = InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return InferRequest(model, [tensor], request_id=request_id)


async def main(base_url: str, seed: int, grpc_target: str | None) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    images = np.random.default_rng(seed).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    out: dict[str, object] = {
        "server_ready": await client.is_server_ready(base_url),
        "model_ready": await client.is_model_ready(base_url, "fashion"),
    }
    for binary in (False, True):
        request = _request(images, binary, f"kserve-{binary}")
        response = await client.infer(base_url, request, model_name="fashion")
        (output,) = response.outputs
        out["binary" if binary else "json"] = {
            "id": response.id,
            "name": output.name,
            "probabilities": output.as_numpy().astype(np.float32).tolist(),
        }
    try:
        nope = _request(images, True, "kserve-nope", model="nope")
        await client.infer(base_url, nope, model_name="nope")
    except httpx.HTTPStatusError as exc:
        out["rest_error"] = str(exc)
    await client.close()
    if grpc_target is not None:
        # The default form: set_data_from_numpy(binary_data=True), then InferRequest.to_grpc.
        async with InferenceGRPCClient(grpc_target, retries=0, timeout=30) as grpc_client:
            try:
                response = await grpc_client.infer(_request(images, True, "kserve-grpc"))
            except grpc.RpcError as exc:
                out["grpc"] = {"error": f"{exc.code().name}: {exc.details()}"}  # type: ignore[attr-defined]
            else:
                (output,) = response.outputs
                out["grpc"] = {
                    "id": response.id,
                    "probabilities": output.as_numpy().astype(np.float32).tolist(),
                }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
