"""Client load for the e2e test: unary Predict callers and pipelined PredictStream callers,
each on a thread and a channel of its own, counting the status codes they get."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator

import grpc
import numpy as np

from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc

CALL_TIMEOUT_S = 60.0


def images(count: int, seed: int = 0) -> np.ndarray:
    """Reproducible uint8 28x28 images (the server classifies any valid pixels)."""
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8)


def request(pixels: np.ndarray) -> pb.PredictRequest:
    return pb.PredictRequest(images=[pb.Image(raw=p.tobytes()) for p in pixels])


class Load:
    """Callers that send until :meth:`stop`. A refused call (RESOURCE_EXHAUSTED, UNAVAILABLE)
    is retried after ``backoff_s``, as a well-behaved client would."""

    def __init__(
        self,
        address: str,
        *,
        callers: int,
        images_per_request: int = 1,
        stream: bool = False,
        pause_s: float = 0.0,
        backoff_s: float = 0.2,
    ) -> None:
        self.address = address
        self.request = request(images(images_per_request))
        self.stream = stream
        self.pause_s = pause_s
        self.backoff_s = backoff_s
        self.codes: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{n}", daemon=True)
            for n in range(callers)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CALL_TIMEOUT_S + 10)

    def _count(self, code: str, n: int = 1) -> None:
        with self._lock:
            self.codes[code] += n

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                code = self._stream(stub) if self.stream else self._unary(stub)
                if code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE") and self._stop.wait(
                    self.backoff_s
                ):
                    return
                if self.pause_s and self._stop.wait(self.pause_s):
                    return

    def _unary(self, stub: pb_grpc.PredictionServiceStub) -> str:
        try:
            stub.Predict(self.request, timeout=CALL_TIMEOUT_S)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        self._count(code)
        return code

    def _stream(self, stub: pb_grpc.PredictionServiceStub) -> str:
        """One stream, fed as fast as flow control lets it, until stopped."""

        def requests() -> Iterator[pb.PredictRequest]:
            while not self._stop.is_set():
                yield self.request

        call = stub.PredictStream(requests(), timeout=CALL_TIMEOUT_S)
        try:
            for _ in call:
                self._count("OK")
            return "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
            self._count(code)
            return code
