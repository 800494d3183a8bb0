"""Triton's model repository extension: load and unload models through the API.

Both bindings (gRPC ``RepositoryModelLoad``/``RepositoryModelUnload`` and REST
``POST /v2/repository/models/{name}/load|unload``) call :class:`ModelControl` with
the request's parameters (as plain values) and its ``authorization`` header. With
``--model-control-token`` set, a request without ``Bearer <token>`` is refused
(UNAUTHENTICATED): a port that serves inference to many clients must not let each
of them unload the production model. Triton's parameters are taken where they mean
something here and refused otherwise, never ignored.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Protocol

from server.config import EXPLICIT
from server.errors import InvalidInput, Unauthenticated
from server.manager import ModelManager
from server.plans import Change
from server.serving_config import ConfigRefused, parse_config

logger = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
# Triton's load parameter: a model configuration (JSON) to load with instead of the file.
CONFIG = "config"
# Triton's unload parameter: also unload ensembles that use the model (none exist here).
UNLOAD_DEPENDENTS = "unload_dependents"


class PeerControl(Protocol):
    """With --workers: a load or unload applied in every worker at once, or in none."""

    async def __call__(self, action: str, name: str, config_text: str | None) -> Change: ...


class ModelControl:
    """``peers`` (with --workers): the change goes through the supervisor to every worker."""

    def __init__(
        self, manager: ModelManager, *, token: str = "", peers: PeerControl | None = None
    ) -> None:
        self.manager = manager
        self._expected = f"Bearer {token}".encode() if token else None
        self._peers = peers

    @property
    def open_to_anyone(self) -> bool:
        """Explicit mode without a token: any client of the port may load and unload."""
        return self.manager.mode == EXPLICIT and self._expected is None

    def _authorize(self, authorization: str | None) -> None:
        if self._expected is None:
            return
        given = (authorization or "").encode()
        if not hmac.compare_digest(given, self._expected):
            raise Unauthenticated(
                "model load and unload need this server's model control token: send "
                "'authorization: Bearer <token>' (gRPC metadata or HTTP header)"
            )

    async def load(
        self, name: str, parameters: Mapping[str, object], authorization: str | None
    ) -> Change:
        self._authorize(authorization)
        files = sorted(k for k in parameters if k.startswith("file:"))
        if files:
            raise InvalidInput(
                f"file overrides ({', '.join(files[:4])}) are not supported: publish the "
                "version into the repository, then load the model"
            )
        unknown = sorted(k for k in parameters if k != CONFIG)
        if unknown:
            raise InvalidInput(
                f"load parameters {unknown[:8]} are not supported (supported: {CONFIG!r}, "
                "a config.json to load the model with)"
            )
        config = parameters.get(CONFIG)
        if config is not None and not isinstance(config, str):
            raise InvalidInput(f"load parameter {CONFIG!r} must be a string (JSON)")
        if config is not None:
            # The caller's input, checked before any worker sees it: malformed, it was taken
            # for the repository's fault (FAILED_PRECONDITION, a refused model load counted
            # and alerted on, and kept as the model's problem in its index).
            try:
                parse_config(config, f"the load request's config for {name[:64]!r}")
            except ConfigRefused as exc:
                raise InvalidInput(str(exc)) from None
        if self._peers is not None:
            change = await self._peers("load", name, config)
        else:
            change = await self.manager.load(name, config_text=config)
        logger.info(
            "model %r loaded through the API (versions loaded %s, unloaded %s)",
            name,
            list(change.loaded),
            list(change.unloaded),
        )
        return change

    async def unload(
        self, name: str, parameters: Mapping[str, object], authorization: str | None
    ) -> Change:
        self._authorize(authorization)
        unknown = sorted(k for k in parameters if k != UNLOAD_DEPENDENTS)
        if unknown:
            raise InvalidInput(
                f"unload parameters {unknown[:8]} are not supported (supported: "
                f"{UNLOAD_DEPENDENTS!r}; this server has no ensembles, so it changes nothing)"
            )
        if not isinstance(parameters.get(UNLOAD_DEPENDENTS, False), bool):
            raise InvalidInput(f"unload parameter {UNLOAD_DEPENDENTS!r} must be a boolean")
        if self._peers is not None:
            change = await self._peers("unload", name, None)
        else:
            change = await self.manager.unload(name)
        logger.info("model %r unloaded through the API (versions %s)", name, list(change.unloaded))
        return change
