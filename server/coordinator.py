"""Every model change in every worker at once: prepared everywhere, committed only where all
agree (the two steps of :meth:`server.manager.ModelManager.prepare`), over the control
channels (:mod:`server.channel`). Also what needs every worker's answer: Triton's
statistics, summed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from server.channel import Channel, ChannelClosed, Message
from server.errors import FailedPrecondition, LoadRefused, ServingError
from server.metrics_merge import Family, Key, served_only
from server.statistics import from_dict, merged, to_dict

# A worker that does not answer a metrics or statistics request within this is skipped.
ASK_TIMEOUT_S = 5.0


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

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Coordinator:
    """The workers, and what they serve together (:attr:`committed`)."""

    def __init__(self, workers: list[WorkerHandle]) -> None:
        self.workers = workers
        self.committed: dict[str, Any] = {}
        # Counters and histograms of dead workers, pruned to what is still served.
        self.carried: dict[Key, tuple[Family, float]] = {}
        self.lock = asyncio.Lock()  # one model change at a time, for every worker

    async def apply(self, operation: Message) -> list[dict[str, Any]]:
        """Prepare ``operation`` in every worker, commit where they all agree, else abort.

        Returns the first worker's changes; raises a ServingError that says why nothing
        changed (a worker's refusal, a worker gone, or workers that disagree).
        """
        async with self.lock:
            return await self.apply_to(operation, [w for w in self.workers if w.joined])

    async def apply_to(
        self, operation: Message, workers: list[WorkerHandle]
    ) -> list[dict[str, Any]]:
        if not workers:
            raise FailedPrecondition("no worker is running; retry shortly")
        replies = await asyncio.gather(
            *(self.ask(w, "prepare", **operation) for w in workers), return_exceptions=True
        )
        prepared = [(w, r) for w, r in zip(workers, replies, strict=True) if isinstance(r, dict)]
        failed = [(w, r) for w, r in zip(workers, replies, strict=True) if not isinstance(r, dict)]
        states = [reply["state"] for _, reply in prepared]
        if failed or any(state != states[0] for state in states):
            await asyncio.gather(
                *(self.ask(w, "abort", plan=r["plan"]) for w, r in prepared),
                return_exceptions=True,
            )
            if failed:
                worker, error = failed[0]
                if isinstance(error, ServingError):
                    raise error
                raise FailedPrecondition(
                    f"worker {worker.index} went away while the change was prepared; nothing "
                    "changed; retry"
                )
            raise LoadRefused(disagreement(prepared))
        committed = await asyncio.gather(
            *(self.ask(w, "commit", plan=r["plan"]) for w, r in prepared),
            return_exceptions=True,
        )
        self.committed = states[0]
        served = {name: list(state["versions"]) for name, state in self.committed.items()}
        self.carried = served_only(self.carried, served)
        first = committed[0]
        return list(first["changes"]) if isinstance(first, dict) else []

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
        """Triton's statistics of ``versions``, summed over every worker."""
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
            raise FailedPrecondition("no worker answered; retry shortly")
        return [
            to_dict(merged([from_dict(part[i]) for part in parts])) for i in range(len(versions))
        ]


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
