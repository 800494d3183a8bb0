"""The one readiness state: phases, what a refused call is told, listeners, no way back."""

from __future__ import annotations

import pytest

from server.errors import ModelNotReady
from server.readiness import Phase, Readiness


async def test_phases_drive_admission_and_listeners() -> None:
    readiness = Readiness()
    seen: list[Phase] = []

    async def listener(phase: Phase) -> None:
        seen.append(phase)

    readiness.subscribe(listener)
    assert (readiness.live, readiness.ready) == (False, False)
    with pytest.raises(ModelNotReady, match="still loading"):
        readiness.check()
    await readiness.set(Phase.WAITING)
    assert (readiness.live, readiness.ready) == (True, False)
    with pytest.raises(ModelNotReady, match="no model version has been published yet"):
        readiness.check()
    await readiness.set(Phase.READY)
    assert (readiness.live, readiness.ready) == (True, True)
    readiness.check()
    await readiness.set(Phase.STOPPING)
    assert (readiness.live, readiness.ready) == (False, False)
    with pytest.raises(ModelNotReady, match="shutting down"):
        readiness.check()
    assert seen == [Phase.WAITING, Phase.READY, Phase.STOPPING]


async def test_a_stopping_server_never_turns_ready_again() -> None:
    readiness = Readiness()
    await readiness.set(Phase.STOPPING)
    with pytest.raises(RuntimeError, match="cannot become ready"):
        await readiness.set(Phase.READY)
    assert readiness.phase is Phase.STOPPING
