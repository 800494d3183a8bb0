"""The composition root: builds every piece from Settings and owns start/stop order."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from server.batcher import DynamicBatcher
from server.catalog import Catalog
from server.config import Settings
from server.dataplane import DataPlane
from server.errors import ConfigError, ModelLoadError, VersionNotFound
from server.grpc_binding import add_service
from server.http import HttpServer
from server.http_limits import HttpLimits
from server.manager import ModelLoader, ModelManager, onnxruntime_loader
from server.metrics import Metrics
from server.model import LoadedModel
from server.oip import SERVICE as OIP_SERVICE
from server.readiness import Phase
from server.rest import RestApi
from server.servicer import SERVICE as PREDICTION_SERVICE
from server.servicer import SERVICE_NAME, PredictionServicer
from server.triton import TritonServicer

logger = logging.getLogger(__name__)

# The named health service that turns SERVING once the model is warm and
# NOT_SERVING when shutdown starts: point readiness probes at it.
READINESS_SERVICE = SERVICE_NAME
SETTLE_S = 0.2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def grpc_options(settings: Settings) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # On by default on Linux: a second server would silently share the port.
        ("grpc.so_reuseport", 0),
        # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: one connection cannot pile up unbounded
        # idle streams (each costs memory); a client beyond it waits for a free stream.
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
    ]
    if settings.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_s * 1000)),
        ]
    return options


def http_limits(settings: Settings) -> HttpLimits:
    """The connection limits of both HTTP ports (REST and /metrics)."""
    return HttpLimits(
        max_connections=settings.http_max_connections,
        header_timeout_s=settings.http_header_timeout_s,
        keepalive_timeout_s=settings.http_keepalive_timeout_s,
        tls_handshake_timeout_s=settings.http_tls_handshake_timeout_s,
    )


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class App:
    """Lifecycle: ``open()`` (listening, NOT_SERVING) -> ``load()`` (SERVING) -> ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        loader: ModelLoader | None = None,
    ) -> None:
        """``loader``: how a version's files become a servable model (default: an
        onnxruntime session on ``--device`` with ``--threads``); tests pass their own."""
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.manager = ModelManager(
            settings.model_repo,
            pinned_version=settings.model_version,
            variant=settings.model_variant,
            load=loader or onnxruntime_loader(settings.device, settings.threads),
            metrics=self.metrics,
            max_batch_size=settings.max_batch_size,
        )
        self.batcher: DynamicBatcher[LoadedModel] = DynamicBatcher(
            self.manager.run,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_delay_s,
            max_queue=settings.max_queue,
            concurrency=settings.batch_concurrency,
            metrics=self.metrics,
        )
        # The one readiness state: admission, health and OIP readiness all read it.
        self.plane = DataPlane(
            self.manager,
            self.batcher,
            self.metrics,
            max_images_per_request=settings.max_images_per_request,
        )
        self.catalog = Catalog(self.plane, settings)
        self.health = health.aio.HealthServicer()
        self.plane.readiness.subscribe(self._report_health)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0
        self.http: HttpServer | None = None
        # The Open Inference Protocol REST API (server/rest.py) on --http-port.
        self.http_port = 0
        self.rest: HttpServer | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._reload = asyncio.Event()

    async def open(self) -> None:
        """Bind and start answering: health NOT_SERVING, predictions UNAVAILABLE until load()."""
        s = self.settings
        await self.health.set("", NOT_SERVING)
        await self.health.set(READINESS_SERVICE, NOT_SERVING)
        # Beyond maximum_concurrent_rpcs, grpc answers RESOURCE_EXHAUSTED at once.
        server = grpc.aio.server(
            options=grpc_options(s), maximum_concurrent_rpcs=s.max_concurrent_rpcs
        )
        add_service(server, self.plane, PredictionServicer(self.plane, s), PREDICTION_SERVICE)
        # The Open Inference Protocol with Triton's extensions (server/triton.py).
        add_service(server, self.plane, TritonServicer(self.plane, self.catalog), OIP_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [READINESS_SERVICE, OIP_SERVICE.full_name, health.SERVICE_NAME]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
        address = _bind_address(s.host, s.port)
        try:
            if s.tls_material is not None:
                self.port = server.add_secure_port(address, s.tls_material.grpc_credentials())
            else:
                if s.host not in LOOPBACK:
                    logger.warning(
                        "serving plaintext on %s: use --tls-cert/--tls-key, or a mesh "
                        "that encrypts pod traffic",
                        s.host,
                    )
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's only signal: "Failed to bind to address"
            raise ConfigError(f"--host/--port: cannot listen on {address} ({exc})") from None
        await server.start()
        self.server = server
        if s.metrics_port >= 0:
            http = HttpServer(
                host=s.host, port=s.metrics_port, registry=self.registry, limits=http_limits(s)
            )
            try:
                await http.start()
            except ConfigError:
                await server.stop(0)
                raise
            self.http = http
            self.metrics_port = http.port
        if s.http_port >= 0:
            await self._open_rest()
        logger.info(
            "listening on %s (gRPC), HTTP on port %s, metrics on port %s",
            _bind_address(s.host, self.port),
            self.http_port or "off",
            self.metrics_port or "off",
        )

    async def _open_rest(self) -> None:
        s = self.settings
        rest = HttpServer(
            host=s.host,
            port=s.http_port,
            registry=None,
            flag="--http-port",
            ssl_context=s.tls_material.ssl_context if s.tls_material is not None else None,
            client_max_size=s.max_message_bytes,
            shutdown_timeout_s=s.grace_s,
            limits=http_limits(s),
        )
        RestApi(self.plane, self.catalog, s).add_routes(rest.app)
        try:
            await rest.start()
        except ConfigError:
            assert self.server is not None
            await self.server.stop(0)
            if self.http is not None:
                await self.http.stop()
                self.http = None
            raise
        self.rest = rest
        self.http_port = rest.port

    async def load(self) -> None:
        """Load and warm the model off the event loop, then report SERVING.

        With ``--wait-for-model`` a repository without a valid version is not an
        error: the server is live (health "") but not ready, and looks again every
        ``--poll-interval-s`` and on SIGHUP until a first valid version appears.
        """
        model = await self._look_for_first_version()
        if model is None and self.settings.wait_for_model:
            model = await self._wait_for_first_version()
        if model is None:
            raise self._nothing_to_serve()
        if not self.settings.model_version:
            self._watcher = asyncio.create_task(self._watch(), name="model-watcher")
        await self.plane.start()
        logger.info("ready: version %d", self.manager.current.version)

    async def _wait_for_first_version(self) -> LoadedModel:
        where = f"{self.settings.model_repo}/fashion/"
        await self.plane.wait_for_model(
            refusal=f"waiting for a first model version in {where}; retry shortly"
        )
        logger.warning(
            "waiting for a first model version in %s (%s, or on SIGHUP)",
            where,
            f"looking every {self.settings.poll_interval_s:g} s"
            if self.settings.poll_interval_s
            else "polling is off",
        )
        while True:
            await self._next_check()
            model = await self._look_for_first_version()
            if model is not None:
                return model

    async def _look_for_first_version(self) -> LoadedModel | None:
        """One look. With --wait-for-model a failing repository (e.g. a volume not yet
        readable) is logged and looked at again, on the first look as on every later one."""
        try:
            return await asyncio.to_thread(self.manager.load_initial)
        except ConfigError:
            raise  # the server's settings, not the repository: waiting cannot fix it
        except Exception:
            if not self.settings.wait_for_model:
                raise
            logger.exception(
                "checking %s/fashion/ for a first model version failed", self.settings.model_repo
            )
            return None

    async def _next_check(self) -> None:
        """Return after --poll-interval-s (never, when 0) or at once on SIGHUP."""
        try:
            await asyncio.wait_for(
                self._reload.wait(), timeout=self.settings.poll_interval_s or None
            )
        except TimeoutError:
            pass
        self._reload.clear()

    def _nothing_to_serve(self) -> Exception:
        """Why load_initial() found no model, for the start-up error."""
        # Resolved: the default "models" is relative to wherever the server was started.
        where = f"{Path(self.settings.model_repo).resolve()}/fashion/"
        refused = self.manager.refused_versions()
        if refused:
            return ModelLoadError(
                f"no valid model version in {where}: refused {', '.join(map(str, refused))} "
                "(reasons logged above)"
            )
        wanted = self.settings.model_version
        if wanted:
            return VersionNotFound(f"no model version {wanted} in {where}")
        return VersionNotFound(
            f"no model version in {where}; run fashion-train first, point --model-repo "
            "(FASHION_MODEL_REPO) at a repository, or start with --wait-for-model"
        )

    async def _report_health(self, phase: Phase) -> None:
        """grpc.health.v1 mirrors the readiness state ("" = liveness, the named one = readiness)."""
        if phase is Phase.STOPPING:
            await self.health.enter_graceful_shutdown()
            return
        await self.health.set("", SERVING if phase.live else NOT_SERVING)
        await self.health.set(READINESS_SERVICE, SERVING if phase.ready else NOT_SERVING)

    async def start(self) -> None:
        await self.open()
        try:
            await self.load()
        except BaseException:
            await self.stop(grace_s=0)
            raise

    def request_reload(self) -> None:
        """Look for a new model version now (SIGHUP)."""
        if self.settings.model_version and self.manager.loaded:
            logger.info(
                "model version %d is pinned; not looking for new versions",
                self.settings.model_version,
            )
            return
        self._reload.set()

    async def reload(self) -> LoadedModel | None:
        """Check the repository once; returns the newly installed model, if any."""
        return await asyncio.to_thread(self.manager.check_for_update)

    async def _watch(self) -> None:
        """Poll the repository (and wake on SIGHUP); a failed check never stops serving."""
        while True:
            await self._next_check()
            try:
                await self.reload()
            except Exception:
                logger.exception(
                    "checking %s for new model versions failed", self.settings.model_repo
                )

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING -> refuse new RPCs -> let in-flight ones finish -> drain the batcher."""
        grace = self.settings.grace_s if grace_s is None else grace_s
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        await self.plane.begin_shutdown()
        if self.server is not None:
            # Calls that reached the transport but not yet a handler would be
            # CANCELLED by server.stop(), leaving the client unsure whether they
            # ran. A short settle window lets each of them reach the closed gate
            # and get an explicit, retryable UNAVAILABLE instead.
            await asyncio.sleep(min(SETTLE_S, grace))
            # In-flight REST requests finish too (aiohttp waits for them), in the same grace.
            await asyncio.gather(
                self.server.stop(grace),
                *([self.rest.stop()] if self.rest is not None else []),
            )
            self.rest = None
        await self.plane.stop()
        if self.http is not None:
            await self.http.stop()
            self.http = None
        logger.info("stopped")


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    loader: ModelLoader | None = None,
) -> App:
    return App(settings, registry=registry, loader=loader)
