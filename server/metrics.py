"""All Prometheus metrics, created on an injected registry (prefix ``fashion_``), plus the
standard ``process_*``, ``python_info`` and ``python_gc_*`` series every exporter has."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from server.statistics import InferenceStatistics

if TYPE_CHECKING:
    from server.model import LoadedModel

# A CNN batch takes ~0.1-5 ms here: the default buckets start at 5 ms and would
# put every request into the first one.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, registry: CollectorRegistry, class_names: Sequence[str] = ()) -> None:
        self.registry = registry
        # Triton's per-version statistics (ModelStatistics), fed by the same observations.
        self.statistics = InferenceStatistics()
        # A fresh registry has none of the default collectors: resident memory, CPU seconds,
        # open fds and start time are what operator dashboards and alerts expect.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter(
            "fashion_requests",
            "RPCs handled, by method and gRPC status code",
            ["method", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "fashion_request_duration_seconds",
            "RPC latency inside the server, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "fashion_queue_wait_seconds",
            "Time a request waited in the batcher queue",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "fashion_inference_duration_seconds",
            "onnxruntime time per batch",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_images = Histogram(
            "fashion_batch_size_images",
            "Images per batch handed to the model",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_flushes = Counter(
            "fashion_batch_flushes",
            "Batches flushed, by reason (full, idle, delay, shutdown)",
            ["reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "fashion_queue_depth_images",
            "Images waiting in the batcher queue",
            registry=registry,
        )
        self.images = Counter(
            "fashion_images",
            "Images classified",
            registry=registry,
        )
        self.predictions = Counter(
            "fashion_predictions",
            "Predictions by predicted class",
            ["class_name"],
            registry=registry,
        )
        self.rejected = Counter(
            "fashion_rejected_requests",
            "Requests refused or dropped before inference, by reason "
            "(queue_full, deadline, deadline_unmeetable, cancelled, decode_queue_full; REST: "
            "http_concurrency, http_body_budget, http_parse_queue_full)",
            ["reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "fashion_model_info",
            "The model being served (value 1)",
            ["version", "provider", "architecture", "variant"],
            registry=registry,
        )
        self.model_loads = Counter(
            "fashion_model_loads",
            "Model version loads, by result (loaded, refused)",
            ["result"],
            registry=registry,
        )
        self._rpc_counters: dict[tuple[str, str], Any] = {}
        self._rpc_histograms: dict[str, Any] = {}
        self._class_names: tuple[str, ...] = ()
        self._class_counters: list[Counter] = []
        self.set_class_names(class_names)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count and time one RPC. Label children are cached: labels() costs a lock and a lookup."""
        key = (method, code)
        counter = self._rpc_counters.get(key)
        if counter is None:
            counter = self._rpc_counters[key] = self.requests.labels(method, code)
        counter.inc()
        histogram = self._rpc_histograms.get(method)
        if histogram is None:
            histogram = self._rpc_histograms[method] = self.request_seconds.labels(method)
        histogram.observe(seconds)

    def set_class_names(self, class_names: Sequence[str]) -> None:
        self._class_names = tuple(class_names)
        self._class_counters = [self.predictions.labels(name) for name in self._class_names]

    def set_model(self, version: int, provider: str, architecture: str, variant: str) -> None:
        self.model_info.clear()
        self.model_info.labels(str(version), provider, architecture, variant).set(1)

    # BatcherMetrics protocol
    def observe_batch(
        self,
        images: int,
        reason: str,
        inference_s: float,
        queue_waits_s: Sequence[float],
        tag: LoadedModel,
    ) -> None:
        self.batch_images.observe(images)
        self.batch_flushes.labels(reason).inc()  # once per batch, not per request
        self.inference_seconds.observe(inference_s)
        self.images.inc(images)
        for wait in queue_waits_s:
            self.queue_wait_seconds.observe(wait)
        self.statistics.observe_batch(tag.version, images, inference_s)

    def set_queue_depth(self, images: int) -> None:
        self.queue_depth.set(images)

    def count_rejected(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def count_predictions(self, probabilities: np.ndarray) -> None:
        """Called once per batch (off the event loop): one bincount, ten increments."""
        counts = np.bincount(probabilities.argmax(axis=1), minlength=len(self._class_counters))
        for counter, count in zip(self._class_counters, counts.tolist(), strict=False):
            if count:
                counter.inc(count)
