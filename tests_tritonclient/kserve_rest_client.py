"""KServe's own Python REST client (kserve.InferenceRESTClient, protocol v2) against a server.

Run with the interpreter of a venv that has ``kserve`` (scripts/bootstrap.sh
``ensure_kserve_client``: it cannot share the project's dev venv, see docs/DEVELOPMENT.md), as
``python kserve_rest_client.py http://HOST:PORT SEED``. Prints one JSON object:
readiness as KServe's client reads it, and the probabilities it decoded for the same
three images sent as JSON data and as binary data.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(base_url: str, seed: int) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    images = np.random.default_rng(seed).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    out: dict[str, object] = {
        "server_ready": await client.is_server_ready(base_url),
        "model_ready": await client.is_model_ready(base_url, "fashion"),
    }
    for binary in (False, True):
        tensor = InferInput("images", [3, 28, 28], "UINT8")
        tensor.set_data_from_numpy(images, binary_data=binary)
        request = InferRequest("fashion", [tensor], request_id=f"kserve-{binary}")
        response = await client.infer(base_url, request, model_name="fashion")
        (output,) = response.outputs
        out["binary" if binary else "json"] = {
            "id": response.id,
            "name": output.name,
            "probabilities": output.as_numpy().astype(np.float32).tolist(),
        }
    await client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
