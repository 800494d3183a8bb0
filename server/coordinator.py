"""Every model change in every worker at once: prepared everywhere, committed only where all
agree (the two steps of :meth:`server.manager.ModelManager.prepare`), over the control
channels (:mod:`server.channel`). Also what needs every worker's answer: Triton's
statistics, summed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from server.channel import Channel, ChannelClosed, Message
from server.errors import LoadRefused, ModelNotReady, ServingError
from server.metrics_merge import Family, Key, cumulative_samples, served_only
from server.statistics import VersionStatistics, from_dict, merged, to_dict

logger = logging.getLogger(__name__)

# A worker that does not answer a metrics or statistics request within this is skipped.
ASK_TIMEOUT_S = 5.0
# How many times a change is prepared in every worker before their disagreement refuses it.
PREPARE_ATTEMPTS = 2


@dataclass
class WorkerHandle:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    phase: str = "starting"
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    failed: str = ""
    joined: bool = False  # serves the committed state, takes part in every change
    started_at: float = 0.0
    restarts: int = 0
    heard_at: float = 0.0  # when it last answered the supervisor's ping (monotonic)
    # Why the supervisor ended it itself ("unresponsive", "did not come back"); "" if it
    # has not: its restart is counted under this reason instead of its exit status.
    stopped_for: str = ""
    families: dict[str, Family] = field(default_factory=dict)  # its last metrics
    # Its last Triton statistics, one per version it served then (read with its metrics).
    statistics: list[VersionStatistics] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Coordinator:
    """The workers, and what they serve together (:attr:`committed`)."""

    def __init__(self, workers: list[WorkerHandle]) -> None:
        self.workers = workers
        self.committed: dict[str, Any] = {}
        # Counters and histograms of dead workers, pruned to what is still served; their
        # Triton statistics likewise, by model and version.
        self.carried: dict[Key, tuple[Family, float]] = {}
        self.carried_statistics: dict[tuple[str, int], VersionStatistics] = {}
        self.lock = asyncio.Lock()  # one model change at a time, for every worker
        self._changes: set[asyncio.Future[list[dict[str, Any]]]] = set()  # see apply()

    async def apply(self, operation: Message) -> list[dict[str, Any]]:
        """Prepare ``operation`` in every worker, commit where they all agree, else abort.

        Returns the first worker's changes; raises a ServingError that says why nothing
        changed (a worker's refusal, a worker gone, or workers that disagree).

        Once begun, a change runs to its end in a task of its own, whatever becomes of its
        caller: a worker that forwarded a load and died has its channel closed, which
        cancels the request it was serving. Cancelled midway, the change left a plan
        prepared in its peers, holding their manager's control lock (every later change
        waited for ever), or was committed without :attr:`committed` saying so (a restarted
        worker then synced to the old state).
        """
        change = asyncio.ensure_future(self._apply(operation))
        self._changes.add(change)
        change.add_done_callback(self._changes.discard)
        try:
            return await asyncio.shield(change)
        except asyncio.CancelledError:
            change.add_done_callback(_log_orphaned)
            raise

    async def _apply(self, operation: Message) -> list[dict[str, Any]]:
        async with self.lock:
            return await self.apply_to(operation, [w for w in self.workers if w.joined])

    async def apply_to(
        self, operation: Message, workers: list[WorkerHandle]
    ) -> list[dict[str, Any]]:
        if not workers:
            # A worker already took the request, so one runs: its peers have not all started
            # yet (the server is starting, or every worker is being restarted). Retryable:
            # UNAVAILABLE, not FAILED_PRECONDITION ("no worker is running"; HTTP 400).
            raise ModelNotReady(
                "this server's workers have not all started yet, so the change cannot reach "
                "every one of them; nothing changed; retry shortly"
            )
        for attempt in range(PREPARE_ATTEMPTS):
            replies = await asyncio.gather(
                *(self.ask(w, "prepare", **operation) for w in workers), return_exceptions=True
            )
            pairs = list(zip(workers, replies, strict=True))
            prepared = [(w, r) for w, r in pairs if isinstance(r, dict)]
            failed = [(w, r) for w, r in pairs if not isinstance(r, dict)]
            states = [reply["state"] for _, reply in prepared]
            if not failed and all(state == states[0] for state in states):
                break
            await asyncio.gather(
                *(self.ask(w, "abort", plan=r["plan"]) for w, r in prepared),
                return_exceptions=True,
            )
            if failed:
                worker, error = failed[0]
                if isinstance(error, ServingError):
                    raise error
                # Retryable (it is restarted): UNAVAILABLE, as for any server going away.
                raise ModelNotReady(
                    f"worker {worker.index} went away while the change was prepared; nothing "
                    "changed; retry"
                )
            if attempt + 1 == PREPARE_ATTEMPTS:
                raise LoadRefused(disagreement(prepared))
            # Each worker reads the repository as it prepares: a version or config.json
            # published between two of those reads makes them disagree although none failed
            # (a load was refused for it, a poll logged an error). Read again: what differed
            # because of the disk now agrees; a version one worker refused still differs.
            logger.info("the workers would not serve the same thing; preparing the change again")
        # What every worker serves from here on, recorded before they commit: one that dies
        # meanwhile is restarted into it.
        self.committed = states[0]
        self._forget_unserved()
        committed = await asyncio.gather(
            *(self.ask(w, "commit", plan=r["plan"]) for w, r in prepared),
            return_exceptions=True,
        )
        first = next((reply for reply in committed if isinstance(reply, dict)), None)
        return list(first["changes"]) if first is not None else []

    def carry(self, worker: WorkerHandle) -> None:
        """What a dead worker counted (as last read) stays counted: the sums of its peers
        and of its successor never go down, in /metrics and in Triton's statistics."""
        for key, (family, value) in cumulative_samples(worker.families).items():
            _, carried = self.carried.get(key, (family, 0.0))
            self.carried[key] = (family, carried + value)
        for stats in worker.statistics:
            version = (stats.model, stats.version)
            earlier = self.carried_statistics.get(version)
            self.carried_statistics[version] = merged([earlier, stats]) if earlier else stats
        worker.families, worker.statistics = {}, []

    def _forget_unserved(self) -> None:
        """What was carried of versions no longer served goes with them (cardinality follows
        what is loaded; Triton's statistics of a version start again when it is loaded again)."""
        served = {name: list(state["versions"]) for name, state in self.committed.items()}
        self.carried = served_only(self.carried, served)
        self.carried_statistics = {
            (model, version): stats
            for (model, version), stats in self.carried_statistics.items()
            if str(version) in served.get(model, ())
        }

    async def ask(self, worker: WorkerHandle, op: str, **fields: Any) -> Message:
        if worker.channel is None:
            raise ChannelClosed(f"worker {worker.index} is not running")
        return await worker.channel.request(op, **fields)

    async def broadcast(self, op: str, **fields: Any) -> None:
        await asyncio.gather(
            *(self.ask(w, op, **fields) for w in self.workers if w.joined),
            return_exceptions=True,
        )

    def first_worker(self) -> Channel:
        for worker in self.workers:
            if worker.joined and worker.channel is not None:
                return worker.channel
        raise ChannelClosed("no worker is running")

    async def statistics(self, versions: list[list[Any]]) -> list[dict[str, Any]]:
        """Triton's statistics of ``versions``, summed over every worker, dead ones too."""
        replies = await asyncio.gather(
            *(
                self.ask(w, "local-statistics", versions=versions, timeout_s=ASK_TIMEOUT_S)
                for w in self.workers
                if w.joined
            ),
            return_exceptions=True,
        )
        parts = [r["statistics"] for r in replies if isinstance(r, dict)]
        if not parts:
            # Every worker restarting or busy past the timeout: retryable (UNAVAILABLE).
            raise ModelNotReady("no worker answered for the statistics; retry shortly")
        summed = []
        for i, (model, version) in enumerate(versions):
            these = [from_dict(part[i]) for part in parts]
            carried = self.carried_statistics.get((model, int(version)))
            summed.append(to_dict(merged([*these, carried] if carried else these)))
        return summed


def _log_orphaned(change: asyncio.Future[list[dict[str, Any]]]) -> None:
    """How a change ended whose caller had gone (the API caller never hears of it)."""
    if change.cancelled():
        return
    error = change.exception()
    if error is None:
        logger.info("a model change whose caller went away was committed")
    else:
        logger.warning("a model change whose caller went away changed nothing: %s", error)


def describe(state: dict[str, Any]) -> str:
    return (
        "; ".join(
            f"{name}: versions {', '.join(entry['versions'])}"
            for name, entry in sorted(state.items())
        )
        or "no model"
    )


def disagreement(prepared: list[tuple[WorkerHandle, Message]]) -> str:
    """Why the workers' plans differ, for the log and the caller."""
    listed = "; ".join(
        f"worker {worker.index} would serve {describe(reply['state'])}"
        for worker, reply in prepared
    )
    return (
        "the workers would not serve the same thing, so nothing changed in any of them "
        f"({listed}); see their logs for the versions that failed"
    )
