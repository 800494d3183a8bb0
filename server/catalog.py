"""What the server knows about itself and its models, as the Open Inference Protocol says it.

One module answers every question that is not inference — server metadata,
liveness and readiness, model metadata and readiness, Triton's model
configuration, statistics and repository index — from the data plane's state.
The gRPC servicers (:mod:`server.oip`, :mod:`server.triton`) send the answers
as they are; the REST binding (:mod:`server.rest`) writes the same messages as
JSON. So no front end calls another, and REST and gRPC cannot disagree on what
the model is or what it has counted.
"""

from __future__ import annotations

from importlib import metadata as package_metadata
from typing import Protocol

from server._proto.inference import grpc_predict_v2_pb2 as oip
from server._proto.inference import model_config_pb2 as mc
from server.config import Settings
from server.contract import PLATFORM, TensorSpec
from server.dataplane import DataPlane
from server.errors import InvalidInput, ModelNotReady, VersionNotFound
from server.routing import Route
from server.served import ServedVersion
from server.statistics import VersionStatistics
from server.target import Target, version_number
from server.triton_codec import (
    EXTENSIONS,
    model_config,
    model_statistics,
    repository_index,
)

SERVER_NAME = "fashion-serving"


def server_version() -> str:
    try:
        return package_metadata.version(SERVER_NAME)
    except package_metadata.PackageNotFoundError:
        return "0+unknown"


def _tensor_metadata(spec: TensorSpec) -> oip.ModelMetadataResponse.TensorMetadata:
    return oip.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


class PeerStatistics(Protocol):
    """With --workers: the statistics of every worker for the given model versions."""

    async def __call__(self, versions: list[tuple[str, int]]) -> list[VersionStatistics]: ...


class Catalog:
    """Answers from the data plane's state; every binding asks here, the same way.

    ``peer_statistics`` (with --workers): Triton's statistics are summed over every
    worker, whichever one the request reached.
    """

    def __init__(
        self, plane: DataPlane, settings: Settings, peer_statistics: PeerStatistics | None = None
    ) -> None:
        self.plane = plane
        self.settings = settings
        self._version = server_version()
        self._peer_statistics = peer_statistics

    # -- the server ----------------------------------------------------------------

    def server_metadata(self, extra_extensions: tuple[str, ...] = ()) -> oip.ServerMetadataResponse:
        """Name, version and Triton's extensions (plus the binding's own, e.g. REST's binary)."""
        return oip.ServerMetadataResponse(
            name=SERVER_NAME, version=self._version, extensions=[*EXTENSIONS, *extra_extensions]
        )

    def live(self) -> bool:
        return self.plane.readiness.live

    def ready(self) -> bool:
        return self.plane.readiness.reported_ready

    def check_live(self) -> None:
        """UNAVAILABLE with the reason unless live (for bindings that answer with a status)."""
        if not self.plane.readiness.live:
            raise ModelNotReady(self.plane.readiness.refusal or "the server is not live")

    def check_ready(self) -> None:
        """UNAVAILABLE with the reason unless ready (every worker, with --workers)."""
        readiness = self.plane.readiness
        if not readiness.reported_ready:
            raise ModelNotReady(readiness.unready_reason)

    # -- models ----------------------------------------------------------------------

    def model_ready(self, name: str, version: str) -> tuple[bool, str]:
        """Whether the model version can answer now, and if not, why. NOT_FOUND if unknown."""
        return self.plane.model_ready(Target(name, version))

    def check_model_ready(self, name: str, version: str) -> None:
        """UNAVAILABLE with the reason unless the model version is ready."""
        ready, reason = self.model_ready(name, version)
        if not ready:
            raise ModelNotReady(reason)

    def describe(self, target: Target) -> tuple[ServedVersion, Route]:
        """The loaded version ``target`` names and its model's route (versions, labels)."""
        served = self.plane.resolve(target)
        return served, self.plane.manager.routes[served.name]

    def model_metadata(self, name: str, version: str) -> oip.ModelMetadataResponse:
        """The model's tensors, and every version of it that may be asked for by number."""
        served, route = self.describe(Target(name, version))
        model = served.model
        return oip.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in route.version_numbers],
            platform=PLATFORM,
            inputs=[_tensor_metadata(model.input_spec)],
            outputs=[_tensor_metadata(model.output_spec)],
        )

    def model_config(self, name: str, version: str) -> mc.ModelConfig:
        served, route = self.describe(Target(name, version))
        return model_config(served.model, route, self.settings)

    async def model_statistics(self, name: str, version: str) -> oip.ModelStatisticsResponse:
        """Every loaded version of every model (no name), of one model, or one version.

        Statistics start when a version is loaded and go when it is unloaded (Triton's).
        """
        routes = self.plane.manager.routes
        statistics = self.plane.metrics.statistics
        if not name:
            if version:
                raise InvalidInput("a version needs a model name")
            chosen = [(r.name, v) for r in routes.values() for v in r.version_numbers]
        else:
            route = routes.get(name)
            if route is None:
                self.plane.resolve(Target(name))  # NOT_FOUND, naming what is served
                raise VersionNotFound(f"model {name[:64]!r} is not loaded")
            wanted = version_number(name, version)
            if wanted and wanted not in route.versions:
                raise VersionNotFound(
                    f"model {name!r} version {wanted} has no statistics: it is not loaded "
                    f"(loaded: {route.describe()})"
                )
            chosen = [(name, v) for v in ([wanted] if wanted else route.version_numbers)]
        chosen.sort()
        if self._peer_statistics is not None:
            found = await self._peer_statistics(chosen)
        else:
            found = [statistics.of(m, v) for m, v in chosen]
        return oip.ModelStatisticsResponse(model_stats=[model_statistics(s) for s in found])

    def repository_index(self, only_ready: bool) -> oip.RepositoryIndexResponse:
        """Every model version in the repository (or loaded) and its state."""
        entries = self.plane.manager.index(ready=self.plane.readiness.ready)
        return repository_index(entries, only_ready=only_ready)
