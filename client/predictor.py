"""A small synchronous client for fashion.v1.PredictionService (used by fashion-predict).

Deadlines on every call. Retries only where they are safe: Predict and
GetModelInfo are pure, so UNAVAILABLE (server starting, draining, or a
replica going away) and RESOURCE_EXHAUSTED (queue full) are retried with
exponential backoff by gRPC's own retry policy; nothing else is retried.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
import numpy as np

from client.pixels import as_pixels
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{"service": "fashion.v1.PredictionService"}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            },
        }
    ]
}


class PredictError(Exception):
    """A failed call: the gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class TlsConfig:
    """PEM files: the CA that signed the server, and our own pair for mTLS."""

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client certificate and key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_cert),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )


class PredictClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: TlsConfig | None = None,
        retries: bool = True,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1 if retries else 0),
            ("grpc.service_config", json.dumps(_RETRY_POLICY if retries else {})),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        self._stub = pb_grpc.PredictionServiceStub(self._channel)
        self.timeout_s = timeout_s
        # The largest request this client sends (gRPC refuses a bigger one before sending).
        self.max_message_bytes = max_message_bytes

    def __enter__(self) -> PredictClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel, for calls outside PredictionService (reflection, health)."""
        return self._channel

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise PredictError(exc.code(), exc.details() or "") from None

    def predict(
        self,
        images: np.ndarray | Sequence[bytes],
        *,
        top_k: int = 0,
        include_probabilities: bool = False,
        model_version: int = 0,
        model_name: str = "",
        version_label: str = "",
    ) -> pb.PredictResponse:
        """``images``: pixels, or a sequence of PNG/JPEG file contents.

        Pixels are a numpy array shaped (28, 28) (one image), (n, 28, 28) or (n, 28, 28, 1),
        uint8, or floats holding ``pixel / 255`` (converted back exactly, as the server does
        for FP32); anything else is a ValueError, never a silent cast or re-cut
        (:func:`client.pixels.as_pixels`).

        ``model_name`` "" = the server's default model; ``model_version`` 0 and
        ``version_label`` "" = that model's default version (its ``stable`` label, else the
        newest); set at most one of the two."""
        if isinstance(images, np.ndarray):
            messages = [pb.Image(raw=image.tobytes()) for image in as_pixels(images)]
        else:
            messages = [pb.Image(encoded=bytes(data)) for data in images]
        request = pb.PredictRequest(
            images=messages,
            top_k=top_k,
            include_probabilities=include_probabilities,
            model_version=model_version,
            model_name=model_name,
            version_label=version_label,
        )
        response = self._call("Predict", request)
        assert isinstance(response, pb.PredictResponse)
        return response

    def model_info(
        self, *, model_name: str = "", model_version: int = 0, version_label: str = ""
    ) -> pb.ModelInfo:
        request = pb.GetModelInfoRequest(
            model_name=model_name, model_version=model_version, version_label=version_label
        )
        response = self._call("GetModelInfo", request)
        assert isinstance(response, pb.ModelInfo)
        return response
