"""The soak's request mix: valid Predict/ModelInfer calls checked for correctness, and
invalid calls that must get INVALID_ARGUMENT. Everything else counts as unexpected."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from server.contract import IMAGE_BYTES, NUM_CLASSES

MAX_DETAILS = 20


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    expected_errors: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    wrong_answers: int = 0
    cancelled_by_client: int = 0
    versions_seen: set[str] = field(default_factory=set)
    # Predict's version_label -> the versions that answered it (soak/flip_phase.py).
    versions_by_label: dict[str, set[str]] = field(default_factory=dict)
    # The first unexpected errors in full (call, code, message, seconds into the run).
    unexpected_details: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)


class Traffic:
    def __init__(
        self, channel: grpc.aio.Channel, images: np.ndarray, labels: np.ndarray, seed: int
    ) -> None:
        self.predict = pb_grpc.PredictionServiceStub(channel)
        self.oip = oip_grpc.GRPCInferenceServiceStub(channel)
        self.images, self.labels = images, labels  # labels = the model's own argmax
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.started = time.perf_counter()

    def _pick(self, n: int) -> np.ndarray:
        start = self.rng.randrange(0, len(self.images) - n)
        return np.arange(start, start + n)

    async def one(self, label: str = "") -> None:
        """One call of the mix; with ``label``, a Predict call that asks for that label."""
        kinds = ["predict1", "predict32", "infer1", "infer16", "invalid_raw", "invalid_oip"]
        weights = [40, 10, 30, 10, 5, 5]
        if label:  # labels are our Predict API's (the Open Inference Protocol names numbers)
            kinds, weights = kinds[:2], weights[:2]
        kind = self.rng.choices(kinds, weights=weights)[0]
        tag = f"{kind}@{label}" if label else kind  # how the tally names it
        self.tally.sent[tag] += 1
        t0 = time.perf_counter()
        try:
            if kind.startswith("predict"):
                idx = self._pick(1 if kind == "predict1" else 32)
                r = await self.predict.Predict(
                    pb.PredictRequest(
                        images=[pb.Image(raw=self.images[i].tobytes()) for i in idx],
                        version_label=label,
                    ),
                    timeout=10,
                )
                got = [p.label for p in r.predictions]
                version = str(r.model_version)
            elif kind.startswith("infer"):
                idx = self._pick(1 if kind == "infer1" else 16)
                batch = self.images[idx]
                r2 = await self.oip.ModelInfer(
                    infer_request(batch),
                    timeout=10,
                )
                probabilities = np.frombuffer(r2.raw_output_contents[0], "<f4").reshape(
                    -1, NUM_CLASSES
                )
                got = probabilities.argmax(axis=1).tolist()
                version = r2.model_version
            elif kind == "invalid_raw":
                await self.predict.Predict(
                    pb.PredictRequest(
                        images=[pb.Image(raw=bytes(self.rng.randrange(0, IMAGE_BYTES)))]
                    ),
                    timeout=10,
                )
                self.tally.unexpected[f"{kind}:accepted"] += 1
                return
            else:
                request = infer_request(self.images[:1])
                request.raw_input_contents[0] = bytes(100)  # not the shape's one image
                await self.oip.ModelInfer(request, timeout=10)
                self.tally.unexpected[f"{kind}:accepted"] += 1
                return
        except grpc.aio.AioRpcError as exc:
            if kind.startswith("invalid") and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                self.tally.expected_errors[kind] += 1
            else:
                self.tally.unexpected[f"{tag}:{exc.code().name}"] += 1
                if len(self.tally.unexpected_details) < MAX_DETAILS:
                    at = time.perf_counter() - self.started
                    self.tally.unexpected_details.append(
                        f"{at:.2f}s {tag} {exc.code().name}: {exc.details()}"
                    )
            return
        self.tally.latencies_s.append(time.perf_counter() - t0)
        self.tally.ok[tag] += 1
        self.tally.versions_seen.add(version)
        if label:
            self.tally.versions_by_label.setdefault(label, set()).add(version)
        if got != self.labels[idx].tolist():
            self.tally.wrong_answers += 1

    async def worker(self, stop: asyncio.Event, label: str = "") -> None:
        while not stop.is_set():
            await self.one(label)

    async def cancellation_storm(self, calls: int, channel: grpc.aio.Channel) -> None:
        """Many calls that give up mid-call: must not disturb anyone else.

        On a connection of their own, as other clients' calls would be: the server allows
        ``--max-concurrent-streams`` (256) calls per connection, and a client that opens
        more than that at once and cancels them makes the server refuse its next streams
        (HTTP/2 REFUSED_STREAM, UNAVAILABLE: the client frees a slot when it sends the
        reset, the server when it reads it), which would land on the steady traffic."""
        predict = pb_grpc.PredictionServiceStub(channel)
        request = pb.PredictRequest(images=[pb.Image(raw=self.images[0].tobytes())])
        pending = [
            asyncio.ensure_future(predict.Predict(request, timeout=10)) for _ in range(calls)
        ]
        await asyncio.sleep(0.002)
        for call in pending:
            call.cancel()
        results = await asyncio.gather(*pending, return_exceptions=True)
        self.tally.cancelled_by_client += sum(
            isinstance(r, asyncio.CancelledError | grpc.aio.AioRpcError) for r in results
        )
