"""server.metrics alone: which series a loaded version has, and that they go with it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from server.metrics import Metrics


def model(version: int) -> Any:
    """What Metrics reads of a LoadedModel."""
    return SimpleNamespace(
        name="fashion",
        version=version,
        class_names=("a", "b"),
        provider="CPUExecutionProvider",
        architecture="course_cnn",
        variant="float",
    )


def samples(metrics: Metrics, name: str) -> dict[tuple[str, ...], float]:
    (family,) = [f for f in metrics.registry.collect() if f.name == name]
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for sample in family.samples
        if sample.name == name + ("_total" if family.type == "counter" else "_count")
    }


def test_a_request_counted_after_its_version_was_unloaded_brings_no_series_back() -> None:
    """A stream's message is counted when its answer is written, which can be after the
    version drained: it is counted without model and version labels (it re-created the
    removed series, which then stayed for good and restarted from 0)."""
    metrics = Metrics(CollectorRegistry())
    v1 = model(1)
    series = metrics.version(v1)
    metrics.observe_rpc("PredictStream", "OK", 0.01, "fashion", "1")
    metrics.forget_version(series, v1)
    metrics.observe_rpc("PredictStream", "OK", 0.01, "fashion", "1")  # late
    metrics.observe_rpc("PredictStream", "OK", 0.01, "fashion", "1")
    for name in ("fashion_requests", "fashion_request_duration_seconds"):
        counted = samples(metrics, name)
        assert all(dict(labels)["version"] == "" for labels in counted), (name, counted)
        assert sum(counted.values()) == 2, (name, counted)
    # A version loaded again gets its series again.
    metrics.version(model(1))
    metrics.observe_rpc("PredictStream", "OK", 0.01, "fashion", "1")
    counted = samples(metrics, "fashion_requests")
    assert {dict(labels)["version"]: value for labels, value in counted.items()} == {
        "": 2.0,
        "1": 1.0,
    }
