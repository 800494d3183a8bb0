"""Triton-style cumulative inference statistics per model version (for ModelStatistics).

Two sources, each counted where it is already measured, never timed a second time:

* per batch, from the batcher (through :class:`server.metrics.Metrics`): executions,
  images inferred and the per-batch-size table;
* per request, from the data plane when the request ends: success or failure with
  its whole time in the server, its decode and encode times, and the batcher's own
  measurements of its queue wait and of its batch's model time (charged to every
  request of the batch, as Triton does: each of them waited for all of it).

A request's counts all move in one call, so a snapshot taken while requests are in
flight still has success = queue = compute_* counts (perf_analyzer refuses
statistics where they differ).

Everything runs on the event loop (the batcher delivers there), so no lock is needed.
No grpc here: server/triton_codec.py turns the statistics into protobuf.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

NS_PER_S = 1_000_000_000


def _ns(seconds: float) -> int:
    return max(0, round(seconds * NS_PER_S))


@dataclass
class Duration:
    """How many times something happened and its total time, in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += _ns(seconds)


@dataclass
class VersionStatistics:
    model: str
    version: int
    inference_count: int = 0  # images the model computed
    execution_count: int = 0  # batches the model computed
    last_inference_ms: int = 0  # when the last batch finished, ms since the epoch
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    # batch size -> executions and model time. Inputs are decoded and outputs encoded per
    # request (in the front ends), not per batch, so a batch has no input or output step
    # of its own to report: Triton's per-batch compute_input/compute_output stay unset.
    batches: dict[int, Duration] = field(default_factory=dict)


_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def to_dict(stats: VersionStatistics) -> dict[str, Any]:
    """JSON-able (a worker sends its statistics to the supervisor, which sums them)."""
    return dataclasses.asdict(stats)


def from_dict(data: dict[str, Any]) -> VersionStatistics:
    durations = {name: Duration(**data[name]) for name in _DURATIONS}
    return VersionStatistics(
        model=data["model"],
        version=data["version"],
        inference_count=data["inference_count"],
        execution_count=data["execution_count"],
        last_inference_ms=data["last_inference_ms"],
        batches={int(size): Duration(**d) for size, d in data["batches"].items()},
        **durations,
    )


def merged(parts: list[VersionStatistics]) -> VersionStatistics:
    """The statistics of one version over several workers: counts and times summed, the
    last inference the latest of them."""
    first = parts[0]
    total = VersionStatistics(first.model, first.version)
    for part in parts:
        total.inference_count += part.inference_count
        total.execution_count += part.execution_count
        total.last_inference_ms = max(total.last_inference_ms, part.last_inference_ms)
        for name in _DURATIONS:
            mine, theirs = getattr(total, name), getattr(part, name)
            mine.count += theirs.count
            mine.ns += theirs.ns
        for size, duration in part.batches.items():
            batch = total.batches.setdefault(size, Duration())
            batch.count += duration.count
            batch.ns += duration.ns
    return total


class InferenceStatistics:
    """Cumulative per loaded model version, since it was loaded (dropped when unloaded)."""

    def __init__(self) -> None:
        self._versions: dict[tuple[str, int], VersionStatistics] = {}

    def _of(self, model: str, version: int) -> VersionStatistics:
        stats = self._versions.get((model, version))
        if stats is None:
            stats = self._versions[(model, version)] = VersionStatistics(model, version)
        return stats

    def observe_batch(self, model: str, version: int, images: int, inference_s: float) -> None:
        """One batch of ``images`` computed by ``version`` of ``model`` in ``inference_s``."""
        stats = self._of(model, version)
        stats.inference_count += images
        stats.execution_count += 1
        # A timestamp, not a duration: Triton reports it as wall-clock milliseconds.
        stats.last_inference_ms = time.time_ns() // 1_000_000
        batch = stats.batches.get(images)
        if batch is None:
            batch = stats.batches[images] = Duration()
        batch.add(inference_s)

    def observe_request(
        self,
        model: str,
        version: int,
        *,
        ok: bool,
        total_s: float,
        input_s: float = 0.0,
        queue_s: float = 0.0,
        infer_s: float = 0.0,
        output_s: float = 0.0,
    ) -> None:
        """One request answered (``ok``) or failed, after ``total_s`` in the server.

        ``version`` is the one that answered, or for a failure the one the request was
        for (the default one when it named none). As in Triton, only a success counts
        its parts (decode, queue, model, encode); a failure counts its time until it failed.
        """
        stats = self._of(model, version)
        if ok:
            stats.success.add(total_s)
            stats.compute_input.add(input_s)
            stats.queue.add(queue_s)
            stats.compute_infer.add(infer_s)
            stats.compute_output.add(output_s)
        else:
            stats.fail.add(total_s)

    def of(self, model: str, version: int) -> VersionStatistics:
        """The statistics of ``version`` of ``model``; all zeros for one without traffic."""
        return self._versions.get((model, version)) or VersionStatistics(model, version)

    def forget(self, model: str, version: int) -> None:
        """The version was unloaded: its statistics go with it (as in Triton)."""
        self._versions.pop((model, version), None)
