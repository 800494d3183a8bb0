"""One loaded model version as the data plane uses it: the model, its own batcher, and a drain.

Each version has its own batcher (its own queue, bounded by ``--max-queue`` images,
and its own inference thread), so a slow or flooded canary never delays the
stable version's requests. A version leaves in two steps: it is taken out of the
routing table first (no new request can reach it), then :meth:`ServedVersion.drain`
waits for the requests that already hold it — each entered with
:meth:`ServedVersion.enter` on the event loop, in the same step that resolved it —
and stops its batcher. So an unload or a swap never fails a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from server.batcher import DynamicBatcher
from server.metrics import VersionMetrics
from server.model import LoadedModel


def _predictor(
    model: LoadedModel, metrics: VersionMetrics
) -> Callable[[np.ndarray], tuple[np.ndarray, LoadedModel]]:
    """The batcher's predict function (executor thread).

    A closure over the model and its metrics, not a bound method of ServedVersion: a bound
    method would close the cycle version -> batcher -> method -> version, and an unloaded
    version (its onnxruntime session: tens of MiB of weights and arenas) would then live until
    the next full collection of the cyclic GC — 300 load/unload cycles grew a server from
    122 to 190-465 MiB that way; with the closure it stays flat.
    """

    def predict(images: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        probabilities = model.predict(images)
        metrics.count_predictions(probabilities)
        return probabilities, model

    return predict


class ServedVersion:
    """A loaded, warmed version with its batcher; ``enter``/``leave`` count its requests."""

    def __init__(
        self,
        model: LoadedModel,
        metrics: VersionMetrics,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        concurrency: int,
    ) -> None:
        self.model = model
        self.metrics = metrics
        self.batcher: DynamicBatcher[LoadedModel] = DynamicBatcher(
            _predictor(model, metrics),
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            max_queue=max_queue,
            concurrency=concurrency,
            metrics=metrics,
            inline_max_images=model.inline_max_images,
        )
        metrics.set_queue_capacity(max_queue)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        # Sizes and mtimes of its files when loaded: a change on disk means a reload.
        self.fingerprint: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        await self.batcher.start()

    def enter(self) -> None:
        """A request holds this version until :meth:`leave` (call right after resolving it)."""
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def drain(self) -> None:
        """Once out of the routing table: let its requests finish, then stop its batcher."""
        self.draining = True
        await self._idle.wait()
        await self.batcher.stop()
