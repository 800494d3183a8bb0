"""The composition root: builds every piece from Settings and owns start/stop order."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from server.batcher import DynamicBatcher
from server.config import Settings
from server.dataplane import DataPlane
from server.errors import ConfigError
from server.manager import ModelManager
from server.metrics import Metrics
from server.model import LoadedModel
from server.oip import SERVICE as OIP_SERVICE
from server.readiness import Phase
from server.servicer import SERVICE as PREDICTION_SERVICE
from server.servicer import SERVICE_NAME, PredictionServicer
from server.status import add_service
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
    ]
    if settings.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_s * 1000)),
        ]
    return options


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """TLS, and mTLS when a client CA is given (clients without a valid certificate are refused)."""

    def read(path: str) -> bytes:
        return Path(path).read_bytes()

    client_ca = read(settings.tls_client_ca) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read(settings.tls_key), read(settings.tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class App:
    """Lifecycle: ``open()`` (listening, NOT_SERVING) -> ``load()`` (SERVING) -> ``stop()``."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.manager = ModelManager(
            settings.model_repo,
            pinned_version=settings.model_version,
            variant=settings.model_variant,
            device=settings.device,
            threads=settings.threads,
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
        self.health = health.aio.HealthServicer()
        self.plane.readiness.subscribe(self._report_health)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0
        self._metrics_http: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._reload = asyncio.Event()

    async def open(self) -> None:
        """Bind and start answering: health NOT_SERVING, predictions UNAVAILABLE until load()."""
        s = self.settings
        await self.health.set("", NOT_SERVING)
        await self.health.set(READINESS_SERVICE, NOT_SERVING)
        server = grpc.aio.server(options=grpc_options(s))
        add_service(server, self.plane, PredictionServicer(self.plane, s), PREDICTION_SERVICE)
        # The Open Inference Protocol with Triton's extensions (server/triton.py).
        add_service(server, self.plane, TritonServicer(self.plane, s), OIP_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [READINESS_SERVICE, OIP_SERVICE.full_name, health.SERVICE_NAME]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
        address = _bind_address(s.host, s.port)
        try:
            if s.tls:
                self.port = server.add_secure_port(address, server_credentials(s))
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
            try:
                httpd, _ = start_http_server(s.metrics_port, addr=s.host, registry=self.registry)
            except OSError as exc:
                await server.stop(0)
                raise ConfigError(
                    f"--metrics-port: cannot listen on {s.host}:{s.metrics_port} ({exc})"
                ) from None
            self._metrics_http = httpd
            self.metrics_port = httpd.server_address[1]
        logger.info(
            "listening on %s (gRPC), metrics on port %s",
            _bind_address(s.host, self.port),
            self.metrics_port or "off",
        )

    async def load(self) -> None:
        """Load and warm the model off the event loop, then report SERVING."""
        await asyncio.to_thread(self.manager.load_initial)
        if not self.settings.model_version:
            self._watcher = asyncio.create_task(self._watch(), name="model-watcher")
        await self.plane.start()
        logger.info("ready: version %d", self.manager.current.version)

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
        if self.settings.model_version:
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
        interval = self.settings.poll_interval_s or None
        while True:
            try:
                await asyncio.wait_for(self._reload.wait(), timeout=interval)
            except TimeoutError:
                pass
            self._reload.clear()
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
            await self.server.stop(grace)
        await self.plane.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        logger.info("stopped")


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> App:
    return App(settings, registry=registry)
