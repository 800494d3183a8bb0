"""All Prometheus metrics, created on an injected registry (prefix ``fashion_``), plus the
standard ``process_*``, ``python_info`` and ``python_gc_*`` series every exporter has.

Every request, latency, queue and batch series carries ``model`` and ``version``
labels. Their values are bounded: only versions that are loaded get series (a
version's series are removed when it is unloaded), and a request that never
reached a version (an unknown model, a malformed message) is counted with both
labels empty, whatever name it asked for.
"""

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
)

from server.cgroup import MemoryLimitCollector
from server.process_metrics import ProcessTree, this_process
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


class VersionMetrics:
    """The series of one loaded model version: what its batcher reports (BatcherMetrics)."""

    def __init__(self, metrics: Metrics, model: str, version: int, class_names: Sequence[str]):
        self._metrics = metrics
        self.model = model
        self.version = version
        labels = (model, str(version))
        self._batch_images = metrics.batch_images.labels(*labels)
        self._inference_seconds = metrics.inference_seconds.labels(*labels)
        self._queue_wait_seconds = metrics.queue_wait_seconds.labels(*labels)
        self._queue_depth = metrics.queue_depth.labels(*labels)
        self._images = metrics.images.labels(*labels)
        self._flushes: dict[str, Any] = {}
        self._rejected: dict[str, Any] = {}
        self._class_counters = [metrics.predictions.labels(model, name) for name in class_names]

    def set_queue_capacity(self, images: int) -> None:
        self._metrics.queue_capacity.labels(self.model, str(self.version)).set(images)

    # BatcherMetrics protocol
    def observe_batch(
        self,
        images: int,
        reason: str,
        inference_s: float,
        queue_waits_s: Sequence[float],
        tag: LoadedModel,
    ) -> None:
        self._batch_images.observe(images)
        flushes = self._flushes.get(reason)
        if flushes is None:
            flushes = self._flushes[reason] = self._metrics.batch_flushes.labels(
                self.model, str(self.version), reason
            )
        flushes.inc()  # once per batch, not per request
        self._inference_seconds.observe(inference_s)
        self._images.inc(images)
        for wait in queue_waits_s:
            self._queue_wait_seconds.observe(wait)
        self._metrics.statistics.observe_batch(self.model, self.version, images, inference_s)

    def set_queue_depth(self, images: int) -> None:
        self._queue_depth.set(images)

    def count_rejected(self, reason: str) -> None:
        rejected = self._rejected.get(reason)
        if rejected is None:
            rejected = self._rejected[reason] = self._metrics.rejected.labels(
                reason, self.model, str(self.version)
            )
        rejected.inc()

    def count_predictions(self, probabilities: np.ndarray) -> None:
        """Called once per batch, where the batch ran (inference thread or event loop)."""
        counts = np.bincount(probabilities.argmax(axis=1), minlength=len(self._class_counters))
        for counter, count in zip(self._class_counters, counts.tolist(), strict=False):
            if count:
                counter.inc(count)


class Metrics:
    """``worker``: one worker of --workers N. Its series are summed over every worker by the
    supervisor, which also reports readiness, the memory limit and each process's
    ``process_*`` series itself (server/supervisor.py): a worker has none of those."""

    def __init__(self, registry: CollectorRegistry, *, worker: bool = False) -> None:
        self.registry = registry
        # Triton's per-version statistics (ModelStatistics), fed by the same observations.
        self.statistics = InferenceStatistics()
        if not worker:
            # A fresh registry has none of the default collectors: resident memory, CPU
            # seconds, open fds and start time are what dashboards and alerts expect.
            # prometheus_client's ProcessCollector, plus the processes this one started
            # (the REST parse worker): their memory counts against the same limit.
            registry.register(ProcessTree(this_process))
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
            registry.register(MemoryLimitCollector())
        version = ["model", "version"]
        self.requests = Counter(
            "fashion_requests",
            "Requests handled (gRPC and HTTP), by method, status code (gRPC's names) and the "
            "model version they reached (empty when they reached none)",
            ["method", "code", *version],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "fashion_request_duration_seconds",
            "Request latency inside the server, by method and model version",
            ["method", *version],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "fashion_queue_wait_seconds",
            "Time a request waited in its model version's batcher queue",
            version,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "fashion_inference_duration_seconds",
            "onnxruntime time per batch",
            version,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_images = Histogram(
            "fashion_batch_size_images",
            "Images per batch handed to the model",
            version,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_flushes = Counter(
            "fashion_batch_flushes",
            "Batches flushed, by reason (full, idle, delay, shutdown)",
            [*version, "reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "fashion_queue_depth_images",
            "Images waiting in a model version's batcher queue",
            version,
            registry=registry,
        )
        self.queue_capacity = Gauge(
            "fashion_queue_capacity_images",
            "Most images a model version's batcher queue holds (--max-queue, per version); "
            "beyond it RESOURCE_EXHAUSTED",
            version,
            registry=registry,
        )
        self.images = Counter(
            "fashion_images",
            "Images classified",
            version,
            registry=registry,
        )
        self.predictions = Counter(
            "fashion_predictions",
            "Predictions by model and predicted class",
            ["model", "class_name"],
            registry=registry,
        )
        self.rejected = Counter(
            "fashion_rejected_requests",
            "Requests refused or dropped before inference, by reason "
            "(queue_full, deadline, deadline_unmeetable, cancelled: per model version; "
            "before any version, labels empty: decode_queue_full, too_many_calls, "
            "memory_budget, http_concurrency, http_body_budget, http_parse_queue_full)",
            ["reason", *version],
            registry=registry,
        )
        self.model_info = Gauge(
            "fashion_model_info",
            "Each loaded model version (value 1)",
            [*version, "provider", "architecture", "variant"],
            registry=registry,
        )
        self.loaded_versions = Gauge(
            "fashion_model_versions_loaded",
            "Versions of each model loaded and served",
            ["model"],
            registry=registry,
        )
        self.version_labels = Gauge(
            "fashion_model_version_label",
            "Each label of a model (config.json) and the version it points at (value 1)",
            ["model", "label", "version"],
            registry=registry,
        )
        self.ready = Gauge(
            "fashion_server_ready",
            "1 while the server can run inference (a model is loaded and warm, not shutting "
            "down; with --workers: every worker), else 0: the readiness the health service "
            "reports",
            registry=None if worker else registry,
        )
        self.model_loads = Counter(
            "fashion_model_loads",
            "Model version loads and model configurations, by model and result (loaded, "
            "refused: a version that failed to load or verify, or a config.json refused)",
            ["model", "result"],
            registry=registry,
        )
        self._rpc_counters: dict[tuple[str, str, str, str], Any] = {}
        self._rpc_histograms: dict[tuple[str, str, str], Any] = {}
        self._versions: dict[tuple[str, int], VersionMetrics] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._class_names: dict[str, tuple[str, ...]] = {}

    def observe_rpc(
        self, method: str, code: str, seconds: float, model: str = "", version: str = ""
    ) -> None:
        """Count and time one request. Label children are cached: labels() costs a lock and a
        lookup. ``model``/``version``: the loaded version it reached, or empty."""
        key = (method, code, model, version)
        counter = self._rpc_counters.get(key)
        if counter is None:  # (the cached children are those of loaded versions only)
            model, version = self._loaded_or_none(model, version)
            key = (method, code, model, version)
            counter = self._rpc_counters.get(key) or self.requests.labels(*key)
            self._rpc_counters[key] = counter
        counter.inc()
        hkey = (method, model, version)
        histogram = self._rpc_histograms.get(hkey)
        if histogram is None:
            model, version = self._loaded_or_none(model, version)
            hkey = (method, model, version)
            histogram = self._rpc_histograms.get(hkey) or self.request_seconds.labels(*hkey)
            self._rpc_histograms[hkey] = histogram
        histogram.observe(seconds)

    def _loaded_or_none(self, model: str, version: str) -> tuple[str, str]:
        """``(model, version)`` while that version is loaded, else empty labels: a stream's
        message is counted when its answer is written, which can be after its version was
        drained and its series removed; labelled, it would bring them back for good."""
        if model and (model, int(version)) not in self._versions:
            return "", ""
        return model, version

    def count_rejected(self, reason: str) -> None:
        """A refusal before any model version was chosen (e.g. the decode queue was full)."""
        self.rejected.labels(reason, "", "").inc()

    def model_seen(self, model: str) -> None:
        """A model directory is known: its load results start at 0, so a first refusal is an
        increase that rate() and increase() can see (a series born at 1 hides its first step)."""
        for result in ("loaded", "refused"):
            self.model_loads.labels(model, result)

    def count_load(self, model: str, result: str) -> None:
        self.model_loads.labels(model, result).inc()

    def version(self, model: LoadedModel) -> VersionMetrics:
        """The series of a version being loaded (created now, removed by forget_version)."""
        series = VersionMetrics(self, model.name, model.version, model.class_names)
        self._versions[(model.name, model.version)] = series
        self._class_names[model.name] = tuple(model.class_names)
        self.model_info.labels(
            model.name, str(model.version), model.provider, model.architecture, model.variant
        ).set(1)
        return series

    def forget_version(self, series: VersionMetrics, model: LoadedModel) -> None:
        """A version was unloaded: its series go, so cardinality follows what is loaded.

        Unless the same version was loaded again (a reload of changed files) and its new
        copy now owns the series: then they stay.
        """
        if self._versions.get((model.name, model.version)) is not series:
            return
        del self._versions[(model.name, model.version)]
        name, version = model.name, str(model.version)
        for metric in (
            self.queue_wait_seconds,
            self.inference_seconds,
            self.batch_images,
            self.queue_depth,
            self.queue_capacity,
            self.images,
        ):
            _remove(metric, (name, version))
        _remove(self.model_info, (name, version, model.provider, model.architecture, model.variant))
        for reason in ("full", "idle", "delay", "shutdown"):
            _remove(self.batch_flushes, (name, version, reason))
        for key in [k for k in self._rpc_counters if k[2:] == (name, version)]:
            self._rpc_counters.pop(key)
            _remove(self.requests, key)
        for hkey in [k for k in self._rpc_histograms if k[1:] == (name, version)]:
            self._rpc_histograms.pop(hkey)
            _remove(self.request_seconds, hkey)
        for reason in ("queue_full", "deadline", "deadline_unmeetable", "cancelled"):
            _remove(self.rejected, (reason, name, version))
        self.statistics.forget(name, model.version)

    def set_served(self, model: str, versions: Sequence[int], labels: dict[str, int]) -> None:
        """What a model serves now: how many versions, and its labels."""
        self.loaded_versions.labels(model).set(len(versions))
        for label, version in self._labels.get(model, {}).items():
            _remove(self.version_labels, (model, label, str(version)))
        for label, version in labels.items():
            self.version_labels.labels(model, label, str(version)).set(1)
        self._labels[model] = dict(labels)

    def forget_model(self, model: str) -> None:
        """A model left the server (unloaded, or its directory removed)."""
        self.set_served(model, (), {})
        _remove(self.loaded_versions, (model,))
        for class_name in self._class_names.pop(model, ()):
            _remove(self.predictions, (model, class_name))

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)


def _remove(metric: Any, labels: tuple[str, ...]) -> None:
    """Drop one child, if it exists (prometheus_client raises KeyError otherwise)."""
    try:
        metric.remove(*labels)
    except KeyError:
        pass
