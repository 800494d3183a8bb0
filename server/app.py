"""The composition root: builds every piece from Settings and owns start/stop order."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from server.catalog import Catalog
from server.config import EXPLICIT, POLL, Settings
from server.control import ModelControl
from server.dataplane import DataPlane
from server.errors import ConfigError, LoadRefused, ModelLoadError, VersionNotFound
from server.grpc_binding import Limits, add_foreign_service, add_service
from server.health import HealthServicer
from server.http import HttpServer
from server.http_limits import limits_of
from server.manager import (
    Batching,
    ModelLoader,
    ModelManager,
    onnxruntime_loader,
)
from server.metrics import Metrics
from server.oip import SERVICE as OIP_SERVICE
from server.plans import Change
from server.readiness import Phase
from server.reflection import ReflectionServicer
from server.repository_view import NO_VERSION
from server.rest import RestApi
from server.servicer import SERVICE as PREDICTION_SERVICE
from server.servicer import SERVICE_NAME, PredictionServicer
from server.statistics import VersionStatistics
from server.tracing import FLUSH_TIMEOUT_S, Tracing
from server.triton import TritonServicer

logger = logging.getLogger(__name__)

# The named health service that turns SERVING once the model is warm and
# NOT_SERVING when shutdown starts: point readiness probes at it.
READINESS_SERVICE = SERVICE_NAME
# Every service a client calls answers health by its own name, all with the readiness
# state: `grpc_health_probe -service=inference.GRPCInferenceService` (the Open Inference
# Protocol's) got NOT_FOUND, and a Watch on it SERVICE_UNKNOWN, while the server served it.
READY_SERVICES = (READINESS_SERVICE, OIP_SERVICE.full_name)
SETTLE_S = 0.2
SERVING = health_pb2.HealthCheckResponse.SERVING
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION_SERVICE = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
# Probes answered at once from memory: never refused for the number of calls in progress.
OIP_PROBES = frozenset({"ServerLive", "ServerReady"})
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def grpc_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """``reuse_port``: a worker of --workers N, sharing the port with its peers."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # On by default on Linux: a second server would silently share the port. Only the
        # workers of one server share it on purpose (the supervisor holds it for them).
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: one connection cannot pile up unbounded
        # idle streams (each costs memory); a client beyond it waits for a free stream.
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        # Each stream's receive window, fixed. With BDP probing (grpc's default) every
        # stream's window grows to max(4 MiB, 2 x bandwidth-delay product), and grpc
        # core takes in that much per stream before the application asks for a message:
        # 40 streams that are not read held 380-1,400 MiB (issue #28), beyond every
        # budget of ours. Fixed, a stream that is not read holds at most this window in
        # grpc; the message the server does ask for is counted in server.budget.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", settings.stream_window_bytes),
    ]
    if settings.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        # The age only sends GOAWAY: new calls go to a new connection (rebalancing), and the
        # calls in progress may finish. Not bounded by default (grpc's own default): bounded
        # by the shutdown grace, as it was, every stream was cut with UNAVAILABLE once its
        # connection was --max-connection-age-s + --grace-s old, however busy.
        if settings.max_connection_age_grace_s > 0:
            grace_ms = int(settings.max_connection_age_grace_s * 1000)
            options.append(("grpc.max_connection_age_grace_ms", grace_ms))
    return options


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Peers(Protocol):
    """The other workers of ``--workers N``, reached through the supervisor
    (:class:`server.worker.WorkerLink`)."""

    async def statistics(self, versions: list[tuple[str, int]]) -> list[VersionStatistics]: ...

    async def control(self, action: str, name: str, config_text: str | None) -> Change: ...


class App:
    """Lifecycle: ``open()`` (listening, NOT_SERVING) -> ``load()`` (SERVING) -> ``stop()``.

    As one worker of ``--workers N`` (``peers`` given) the supervisor drives the models
    instead of ``load()`` (server/worker.py): the ports are shared with the other
    workers, statistics are summed over all of them, and model load/unload requests go
    to every worker through the supervisor.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        loader: ModelLoader | None = None,
        peers: Peers | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``loader``: how a version's files become a servable model (default: an
        onnxruntime session on ``--device`` with ``--threads``); tests pass their own.
        ``tracing``: where spans go (default: from ``--otlp-endpoint`` and the standard
        ``OTEL_*`` variables, None when tracing is off; server.tracing)."""
        self.settings = settings
        self.peers = peers
        self.tracing = tracing or Tracing.from_environment(settings.otlp_endpoint, os.environ)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, worker=peers is not None)
        self.manager = ModelManager(
            settings.model_repo,
            load=loader or onnxruntime_loader(settings.device, settings.threads),
            metrics=self.metrics,
            mode=settings.model_control_mode,
            pinned_version=settings.model_version,
            variant=settings.model_variant,
            batching=Batching(
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_batch_delay_s,
                max_queue=settings.max_queue,
                concurrency=settings.batch_concurrency,
            ),
        )
        # The one readiness state: admission, health and OIP readiness all read it.
        self.plane = DataPlane(
            self.manager,
            self.metrics,
            max_images_per_request=settings.max_images_per_request,
            access_log=settings.access_log,
            tracing=self.tracing,
        )
        self.catalog = Catalog(
            self.plane, settings, peer_statistics=peers.statistics if peers else None
        )
        self.control = ModelControl(
            self.manager,
            token=settings.model_control_token,
            peers=peers.control if peers else None,
        )
        self.health = HealthServicer()  # its Watch streams end at shutdown
        # What every gRPC call is held to. Ours (server/budget.py), not grpc's
        # maximum_concurrent_rpcs, which counts health checks too: a flood of idle
        # streams made every probe fail (issue #28).
        self.limits = Limits.of(
            settings.max_concurrent_rpcs,
            settings.max_inflight_bytes,
            settings.max_stream_inflight_bytes,
        )
        self.plane.readiness.subscribe(self._report_health)
        self.plane.readiness.subscribe(self._report_ready)
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
        for service in READY_SERVICES:
            await self.health.set(service, NOT_SERVING)
        limits = self.limits
        server = grpc.aio.server(options=grpc_options(s, reuse_port=self.peers is not None))
        predict = PredictionServicer(self.plane, self.catalog, s)
        add_service(server, self.plane, predict, PREDICTION_SERVICE, limits)
        # The Open Inference Protocol with Triton's extensions (server/triton.py).
        triton = TritonServicer(self.plane, self.catalog, self.control)
        add_service(server, self.plane, triton, OIP_SERVICE, limits, probes=OIP_PROBES)
        add_foreign_service(server, self.health, HEALTH_SERVICE, limits.calls, probes={"Check"})
        names = [READINESS_SERVICE, OIP_SERVICE.full_name, health.SERVICE_NAME]
        add_foreign_service(
            server,
            ReflectionServicer([*names, reflection.SERVICE_NAME]),
            REFLECTION_SERVICE,
            limits.calls,
        )
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
                host=s.host, port=s.metrics_port, registry=self.registry, limits=limits_of(s)
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
            reuse_port=self.peers is not None,
            limits=limits_of(s),
        )
        RestApi(self.plane, self.catalog, self.control, s).add_routes(rest.app)
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
        """Load the models, warm, then report SERVING.

        Poll mode: every model in the repository (ready once one of them serves);
        explicit mode: the models of ``--load-model`` (ready once each of them serves;
        none named: ready at once). With ``--wait-for-model`` a repository that does
        not meet that yet is not an error: the server is live (health "") but not
        ready, and looks again every ``--poll-interval-s`` and on SIGHUP.
        """
        s = self.settings
        if self.control.open_to_anyone:
            logger.warning(
                "--model-control-mode explicit without --model-control-token: any client "
                "that reaches port %d%s may load and unload models",
                s.port,
                f" or {s.http_port}" if s.http_port >= 0 else "",
            )
        if not await self._look():
            if not s.wait_for_model:
                raise self._nothing_to_serve()
            await self._wait_for_models()
        if s.model_control_mode == POLL:
            self._watcher = asyncio.create_task(self._watch(), name="model-watcher")
        await self.plane.start()
        served = "; ".join(
            f"{name}: {route.describe()}" for name, route in sorted(self.manager.routes.items())
        )
        logger.info("ready: %s", served or "no model loaded (explicit mode)")

    async def _wait_for_models(self) -> None:
        where = self._where()
        await self.plane.wait_for_model(refusal=f"waiting for a model in {where}; retry shortly")
        logger.warning(
            "waiting for %s in %s (%s, or on SIGHUP)",
            "a model" if self.settings.model_control_mode == POLL else "the --load-model models",
            where,
            f"looking every {self.settings.poll_interval_s:g} s"
            if self.settings.poll_interval_s
            else "polling is off",
        )
        while True:
            await self._next_check()
            if await self._look():
                return

    async def _look(self) -> bool:
        """One look at the repository; True once what start-up needs is served.

        With --wait-for-model a failing repository (e.g. a volume not yet readable) is
        logged and looked at again, on the first look as on every later one.
        """
        try:
            if self.settings.model_control_mode == POLL:
                await self.manager.poll()
                return bool(self.manager.routes)
            wanted = self.settings.startup_models
            names = self.manager.models_on_disk() if wanted == ("*",) else list(wanted)
            for name in names:
                if name not in self.manager.routes:
                    try:
                        await self.manager.load(name)
                    except (LoadRefused, VersionNotFound) as exc:
                        logger.error("cannot load %s at start-up: %s", name, exc)
            if wanted == ("*",):
                return bool(self.manager.routes) or not names
            return all(name in self.manager.routes for name in names)
        except ConfigError:
            raise  # the server's settings, not the repository: waiting cannot fix it
        except Exception:
            if not self.settings.wait_for_model:
                raise
            logger.exception("looking for models in %s failed", self._where())
            return False

    def _where(self) -> str:
        # Resolved: the default "models" is relative to wherever the server was started.
        return str(Path(self.settings.model_repo).resolve())

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
        """Why start-up found nothing to serve, for the start-up error."""
        where = self._where()
        problems = self.manager.problems()
        if self.settings.model_control_mode == EXPLICIT:
            missing = [n for n in self.settings.startup_models if n not in self.manager.routes]
            reasons = "; ".join(f"{n}: {problems.get(n, 'not in the repository')}" for n in missing)
            return ModelLoadError(f"cannot load {', '.join(missing)} from {where} ({reasons})")
        # A model directory without versions is the usual first deploy, not a refusal.
        refusals = {name: p for name, p in problems.items() if p != NO_VERSION}
        if refusals:
            listed = "; ".join(f"{name}: {problem}" for name, problem in sorted(refusals.items()))
            return ModelLoadError(f"no valid model version in {where}: {listed}")
        if self.settings.model_version:
            return VersionNotFound(
                f"no model version {self.settings.model_version} in {where} (--model-version)"
            )
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
        ready = self.plane.readiness.reported_ready
        for service in READY_SERVICES:
            await self.health.set(service, SERVING if ready else NOT_SERVING)

    async def _report_ready(self, phase: Phase) -> None:
        """``fashion_server_ready`` follows the same state (alerts: not ready, nothing served)."""
        self.metrics.set_ready(phase.ready)

    async def start(self) -> None:
        await self.open()
        try:
            await self.load()
        except BaseException:
            await self.stop(grace_s=0)
            raise

    def request_reload(self) -> None:
        """Look at the repository now (SIGHUP)."""
        if self.settings.model_control_mode == EXPLICIT and self.plane.readiness.ready:
            logger.info(
                "--model-control-mode explicit: SIGHUP changes nothing; load and unload "
                "models through the API"
            )
            return
        self._reload.set()

    async def reload(self) -> list[Change]:
        """Poll the repository once (poll mode); what changed, per model."""
        return await self.manager.poll()

    async def _watch(self) -> None:
        """Poll the repository (and wake on SIGHUP); a failed check never stops serving."""
        while True:
            await self._next_check()
            try:
                await self.reload()
            except Exception:
                logger.exception("checking %s for model changes failed", self.settings.model_repo)

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
        if self.tracing is not None:
            await self._flush_spans(self.tracing)
            self.tracing = None
        logger.info("stopped")

    @staticmethod
    async def _flush_spans(tracing: Tracing) -> None:
        """The last spans to the collector, in a thread; an unreachable one costs at most
        FLUSH_TIMEOUT_S of the shutdown (the spans are then lost, and logged as such)."""
        flush = asyncio.ensure_future(asyncio.to_thread(tracing.shutdown))
        done, _ = await asyncio.wait({flush}, timeout=FLUSH_TIMEOUT_S + 1.0)
        if not done:
            logger.warning("tracing: spans not exported within %.0f s were lost", FLUSH_TIMEOUT_S)


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    loader: ModelLoader | None = None,
    peers: Peers | None = None,
    tracing: Tracing | None = None,
) -> App:
    return App(settings, registry=registry, loader=loader, peers=peers, tracing=tracing)
