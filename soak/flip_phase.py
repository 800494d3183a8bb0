"""fashion-soak's model-control phase: version policies and labels flipped under traffic.

While the soak's clients keep sending, clients pinned to ``stable`` and to ``canary``
(Predict's ``version_label``) join, and the model's config.json is rewritten the way
``fashion-repo`` rewrites it (:func:`server.config_store.update`: locked, checked,
atomic), each change followed by SIGHUP: stable moves between the two newest versions
(``promote``, ``rollback``), the policy changes between ``latest: 2``, ``specific`` and
``all``, and once per cycle the older version leaves the policy (stable and canary both on
the newer: the older drains under traffic and is freed) and comes back (loaded and warmed
under traffic). ``canary`` names the newer version throughout, so every canary answer must
come from it; stable answers must come from both. The phase ends on the default config (the
newest version alone), and the caller reports memory before and after.

That memory step is reported, not judged. A version that leaves is freed at once (tested
exactly: tests/reliability/test_model_control.py, weak references with the cyclic collector
off, and 50 load/unload cycles of a real process within 10 %), but a short phase cannot
tell a leak from the allocator keeping the region a re-loaded version landed in: the same
phase ended +0.8 %, +1.5 %, +22 %, +23 % and +40 % (about 0, 1 or 2 versions' worth) here.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.serverproc import ServerProcess
from server.config_store import update
from server.serving_config import CANARY, STABLE, ServingConfig, VersionPolicy, parse_policy
from soak.traffic import Traffic

Change = Callable[[ServingConfig], ServingConfig]
# After the last change: the unloaded version drains and the server's periodic malloc_trim
# (--memory-trim-interval-s, 1 s by default) returns its pages before memory is read.
SETTLE_S = 3.0


def cycle(old: int, new: int) -> list[tuple[str, Change]]:
    """One round of changes; every config in it serves ``new`` under ``canary``."""
    both = parse_policy("latest:2")

    def start(_: ServingConfig) -> ServingConfig:
        return ServingConfig(both, {STABLE: old, CANARY: new})

    def only_new(config: ServingConfig) -> ServingConfig:
        return config.with_policy(parse_policy("latest:1")).with_label(STABLE, new)

    return [
        ("latest:2, stable -> old, canary -> new", start),
        ("promote", lambda c: c.promoted()),
        ("rollback", lambda c: c.rolled_back()),
        (f"specific:{old},{new}", lambda c: c.with_policy(parse_policy(f"specific:{old},{new}"))),
        ("all", lambda c: c.with_policy(parse_policy("all"))),
        ("latest:1, stable -> new: the old version drains", only_new),
        ("latest:2, stable -> old: the old version loads again", start),
    ]


async def flip_phase(
    repo: Path,
    model: str,
    server: ServerProcess,
    traffic: Traffic,
    *,
    old: int,
    new: int,
    seconds: float,
    clients: int = 2,
) -> dict[str, Any]:
    """Flip for ``seconds`` under ``traffic``; returns what was applied and answered."""
    steps = cycle(old, new)
    dwell_s = max(0.3, seconds / (2 * len(steps)))
    applied: list[str] = []
    refused: list[str] = []

    def apply(name: str, change: Change) -> None:
        try:
            update(repo, model, change)
        except Exception as exc:  # a refusal is a finding: report it, keep flipping
            refused.append(f"{name}: {exc}")
            return
        applied.append(name)
        server.process.send_signal(signal.SIGHUP)

    apply(*steps[0])
    await asyncio.sleep(dwell_s)  # the labels exist before clients ask for them
    stop = asyncio.Event()
    pinned = [
        asyncio.create_task(traffic.worker(stop, label=label))
        for label in (STABLE, CANARY)
        for _ in range(clients)
    ]
    deadline = time.monotonic() + seconds
    n = 1
    while time.monotonic() < deadline:
        apply(*steps[n % len(steps)])
        n += 1
        await asyncio.sleep(dwell_s)
    stop.set()
    await asyncio.gather(*pinned)
    apply("the default: latest:1, no labels", lambda _: ServingConfig(VersionPolicy()))
    await asyncio.sleep(max(dwell_s, SETTLE_S))
    by_label = {label: sorted(v) for label, v in traffic.tally.versions_by_label.items()}
    return {
        "changes_applied": len(applied),
        "changes_refused": refused,
        "versions_by_label": by_label,
        "passed": (
            not refused
            and by_label.get(CANARY) == [str(new)]
            and by_label.get(STABLE) == sorted({str(old), str(new)})
        ),
    }
