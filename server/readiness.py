"""The server's one readiness state: what admission, health and OIP readiness all read.

Transport-agnostic: front ends ask :meth:`Readiness.check` before work, and
whoever reports health (the gRPC health service) subscribes to the changes
instead of keeping a second copy of the state; the REST probes ask it directly.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable

from server.errors import ModelNotReady


class Phase(enum.Enum):
    """``live``: the process works and answers; ``ready``: it can run inference."""

    STARTING = "starting"  # listening, the first model is loading: neither live nor ready
    WAITING = "waiting"  # live, but no model to serve yet (e.g. --wait-for-model)
    READY = "ready"
    STOPPING = "stopping"  # shutdown began: refuses new work while in-flight calls finish

    @property
    def live(self) -> bool:
        return self in (Phase.WAITING, Phase.READY)

    @property
    def ready(self) -> bool:
        return self is Phase.READY


# What a refused call is told in each phase that is not READY.
_REFUSALS = {
    Phase.STARTING: "the model is still loading; retry shortly",
    Phase.WAITING: "no model version has been published yet; retry shortly",
    Phase.STOPPING: "the server is shutting down; retry on another replica",
}

Listener = Callable[[Phase], Awaitable[None]]


class Readiness:
    """Starts in STARTING; moves forward only (a stopping server never turns ready again)."""

    def __init__(self) -> None:
        self._phase = Phase.STARTING
        self._refusal: str | None = _REFUSALS[Phase.STARTING]
        self._listeners: list[Listener] = []
        # With --workers: whether every other worker is ready too (the supervisor says).
        self._peers_ready = True

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def live(self) -> bool:
        return self._phase.live

    @property
    def ready(self) -> bool:
        return self._phase.ready

    @property
    def reported_ready(self) -> bool:
        """Ready as health checks and probes report it: this process ready, and with
        --workers every other worker too (a pod is ready only when all of it is)."""
        return self._phase.ready and self._peers_ready

    @property
    def unready_reason(self) -> str:
        """Why :attr:`reported_ready` is false (for probes that answer with a body)."""
        if not self._phase.ready:
            return self._refusal or "not ready"
        return "another worker of this server is not ready yet; retry shortly"

    async def set_peers_ready(self, ready: bool) -> None:
        """The supervisor's word on the other workers; listeners hear it like a change."""
        if ready != self._peers_ready:
            self._peers_ready = ready
            for listener in self._listeners:
                await listener(self._phase)

    @property
    def refusal(self) -> str | None:
        """What a refused call is told now; None when READY."""
        return self._refusal

    def check(self) -> None:
        """Raise ModelNotReady (UNAVAILABLE) unless READY. The hot path: one attribute test."""
        if self._refusal is not None:
            raise ModelNotReady(self._refusal)

    def subscribe(self, listener: Listener) -> None:
        """Call ``await listener(phase)`` on every change (health reporting)."""
        self._listeners.append(listener)

    async def set(self, phase: Phase, *, refusal: str | None = None) -> None:
        """Move to ``phase`` and tell every listener. Leaving STOPPING is refused.

        ``refusal``: what refused calls are told instead of the phase's usual words
        (e.g. where the server waits for a first model version).
        """
        if self._phase is Phase.STOPPING and phase is not Phase.STOPPING:
            raise RuntimeError(f"a stopping server cannot become {phase.value}")
        self._phase = phase
        self._refusal = None if phase.ready else (refusal or _REFUSALS[phase])
        for listener in self._listeners:
            await listener(phase)
