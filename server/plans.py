"""What a model change is: the operations, their prepared steps, and what they did.

:class:`server.manager.ModelManager` prepares an :data:`Operation` into a :class:`Plan`
(one :class:`Step` per model), then commits or aborts it; a commit reports one
:class:`Change` per model that changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: server.worker imports this module, and a worker's
    # REST parse worker (spawned) imports server.worker again, which must stay light
    from server.routing import Route
    from server.served import ServedVersion


@dataclass(frozen=True)
class Change:
    """What one apply did to a model: versions loaded and unloaded (both ascending)."""

    model: str
    loaded: tuple[int, ...] = ()
    unloaded: tuple[int, ...] = ()


@dataclass(frozen=True)
class Poll:
    """Apply every model of the repository as it is on disk (poll mode)."""


@dataclass(frozen=True)
class Load:
    """Load or reload one model (explicit mode), optionally with a config.json of its own."""

    name: str
    config_text: str | None = None


@dataclass(frozen=True)
class Unload:
    """Unload one model (explicit mode)."""

    name: str


@dataclass(frozen=True)
class Sync:
    """Serve exactly ``state`` (a :meth:`ModelManager.state`): a worker joining its peers.

    ``records``: what the peers remember of the repository beside what they serve (the
    versions they refused and why, :meth:`ModelManager.records`), so that the joining worker
    reports the repository as they do.
    """

    state: Mapping[str, Mapping[str, Any]]
    records: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


Operation = Poll | Load | Unload | Sync


@dataclass
class Step:
    """One model's prepared change, not yet visible to requests."""

    name: str
    route: Route | None  # after the commit; None: the model goes away
    entering: dict[int, ServedVersion]  # loaded and warmed for it
    leaving: list[ServedVersion]  # drained and freed at the commit
    unchanged: bool = False


@dataclass
class Plan:
    """A prepared operation: its steps, and what every model would serve once committed."""

    steps: list[Step]
    state: dict[str, dict[str, Any]]
