"""The Open Inference Protocol over HTTP/REST (KServe v2, with Triton's extensions).

A binding beside the gRPC servicers, never on top of them: routes on an aiohttp
application that runs on the gRPC server's event loop (one process, one data
plane, one readiness state).

* Inference: JSON (and Triton's binary tensors) in, :mod:`server.rest_codec`,
  :meth:`DataPlane.infer`, JSON (or binary) out.
* Everything else is the catalog's answer (:class:`server.catalog.Catalog`, the
  same protobuf message the gRPC servicers send: metadata, readiness, Triton's
  config, statistics and repository index), written as JSON by
  :func:`server.rest_codec.message_json`. So REST and gRPC cannot disagree on
  what the model is or what it has counted.
* Errors: :meth:`DataPlane.failure` classifies, :data:`HTTP_STATUS` maps the
  neutral Code to an HTTP status once, the body is ``{"error": message}``.
  Readiness that is false is 503 with the reason, so a probe or load balancer
  needs nothing but the status. Refusals of the HTTP layer itself (413, 415, 408,
  429) carry their own status (:class:`server.http_body.HttpRefusal`).
* Under hostile clients: requests in progress and the bytes of their bodies are
  capped, bodies must arrive in time and inflate within the limit
  (:mod:`server.http_body`), and a large JSON body is parsed in a worker process,
  never on the event loop that also answers gRPC health checks
  (:mod:`server.rest_worker`).
* Request ids: the ``x-request-id`` header (or a generated id) is the request's id
  (an inference body's ``id`` wins), sent back in the response's ``x-request-id``
  header on every route; with tracing on, the headers carry the trace context.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from server.catalog import Catalog
from server.config import Settings
from server.control import AUTHORIZATION, ModelControl
from server.dataplane import DataPlane, Failure
from server.errors import Code, Unimplemented
from server.http_body import BODY_ARRIVED, HttpRefusal, RequestLimits
from server.http_limits import JSON_TYPE, json_answer
from server.request_context import REQUEST_ID_HEADER, RequestContext, answer_id
from server.rest_codec import (
    HEADER_LENGTH,
    REST_INFER,
    message_json,
    parse_control_body,
    parse_header_length,
    parse_index_body,
    parse_infer_body,
)
from server.rest_worker import OFF_LOOP_BYTES, ParseWorker
from server.triton_codec import not_implemented_message

logger = logging.getLogger(__name__)

# The one Code -> HTTP status table (the gRPC one is server.grpc_binding.GRPC_STATUS).
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,  # nginx's "client closed request": nobody reads it
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.FAILED_PRECONDITION: 400,  # e.g. a model load refused: the repository, not the request
    Code.RESOURCE_EXHAUSTED: 429,
    Code.DEADLINE_EXCEEDED: 504,
    Code.UNIMPLEMENTED: 501,
    Code.UNAUTHENTICATED: 401,
    Code.UNAVAILABLE: 503,
    Code.INTERNAL: 500,
}
# Retryable refusals say when to come back (seconds).
_RETRY_AFTER = {Code.RESOURCE_EXHAUSTED: "1", Code.UNAVAILABLE: "1"}
# Metrics label of a REST route: the gRPC method it mirrors, prefixed by the transport.
METHOD_PREFIX = "HTTP/"
# Extensions this binding adds to the gRPC ones in ServerMetadata.
HTTP_EXTENSIONS = ("binary_tensor_data",)
# Bytes of bodies that may wait for the parse worker (at least one --max-message-bytes body).
PARSE_QUEUE_BYTES = 16 * 1024 * 1024

# Triton's HTTP endpoints of the extensions this server does not implement, as
# tritonclient.http calls them, and the gRPC method of each: they answer as that method does
# (UNIMPLEMENTED, 501, with the reason), not with a 404 that says nothing of why.
_SHM = (
    ("/v2/systemsharedmemory", "SystemSharedMemory"),
    ("/v2/cudasharedmemory", "CudaSharedMemory"),
)
UNIMPLEMENTED_ROUTES: tuple[tuple[str, str, str], ...] = (
    *(
        (method, path, "TraceSetting")
        for path in ("/v2/trace/setting", "/v2/models/{model}/trace/setting")
        for method in ("GET", "POST")
    ),
    ("GET", "/v2/logging", "LogSettings"),
    ("POST", "/v2/logging", "LogSettings"),
    *(
        route
        for base, name in _SHM
        for route in (
            ("GET", base + "/status", name + "Status"),
            ("GET", base + "/region/{region}/status", name + "Status"),
            ("POST", base + "/region/{region}/register", name + "Register"),
            ("POST", base + "/region/{region}/unregister", name + "Unregister"),
            ("POST", base + "/unregister", name + "Unregister"),
        )
    ),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(failure: Failure, exc: BaseException | None = None) -> web.Response:
    if isinstance(exc, HttpRefusal):
        response = json_answer({"error": failure.message}, status=exc.http_status)
        response.headers.update(exc.headers)
        if exc.close:  # its body was not read (or not all of it)
            response.force_close()
        return response
    response = json_answer({"error": failure.message}, status=HTTP_STATUS[failure.code])
    retry = _RETRY_AFTER.get(failure.code)
    if retry is not None:
        response.headers["Retry-After"] = retry
    if failure.code is Code.UNAUTHENTICATED:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def expect_later(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` is answered when the body is read (server.http_body), after
    every check: a refused client is told so without sending its body first."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        response = json_answer(
            {"error": f"Expect {request.headers['Expect'][:32]!r} is not supported"}, status=417
        )
        # aiohttp sends an expect handler's answer as is, before any middleware
        # (_every_answer): its id is given here.
        response.headers[REQUEST_ID_HEADER] = answer_id(request.headers.get(REQUEST_ID_HEADER))
        return response
    return None


def _json(document: Any) -> web.Response:
    return json_answer(document)


# What a request that matches no route (the router's own 404 and 405) is counted and logged
# as: one bounded label, never its path. 405: the path exists, not with that method.
UNROUTED = METHOD_PREFIX + "Unrouted"
_UNROUTED_CODE = {404: Code.NOT_FOUND, 405: Code.UNIMPLEMENTED}


def _every_answer(plane: DataPlane) -> Middleware:
    """A middleware: every answer in one form, the router's own 404 and 405 as
    ``{"error": ...}`` like every other error, and each with an ``x-request-id``. A route
    sets its request's. A request that matches no route is counted, logged and traced as
    ``HTTP/Unrouted`` (an operator sees a misdirected client, e.g. a KServe v1 one, in
    ``fashion_requests_total``); an answer given before any request began (the concurrency
    cap's 429, counted in ``fashion_rejected_requests_total``) gets the client's id when it
    can be one, else a generated one."""

    @web.middleware
    async def every_answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _routing_error(request, exc)
            context = _begin(plane, UNROUTED, request)
            code = _UNROUTED_CODE.get(exc.status, Code.INVALID_ARGUMENT)
            plane.observe(UNROUTED, code, time.perf_counter() - t0, context)
            response.headers[REQUEST_ID_HEADER] = context.id
        if REQUEST_ID_HEADER not in response.headers:
            response.headers[REQUEST_ID_HEADER] = answer_id(request.headers.get(REQUEST_ID_HEADER))
        return response

    return every_answer


def _begin(plane: DataPlane, label: str, request: web.Request) -> RequestContext:
    """One REST request begun in the data plane: its id header, its peer, its headers as the
    trace carrier (read only when tracing is on)."""
    headers = request.headers
    return plane.begin(
        label,
        headers.get(REQUEST_ID_HEADER),
        peer=request.remote or "",
        carrier=headers if plane.tracing is not None else None,
    )


def _routing_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        message = f"no such endpoint {request.method} {request.path[:64]!r}; see GET /v2"
    elif exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"{request.method} is not allowed on {request.path[:64]!r} (use {allowed})"
    else:
        message = exc.reason
    response = json_answer({"error": message}, status=exc.status)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


class RestApi:
    """Adds the REST routes to an aiohttp application."""

    def __init__(
        self, plane: DataPlane, catalog: Catalog, control: ModelControl, settings: Settings
    ) -> None:
        self.plane = plane
        self.catalog = catalog
        self.control = control
        self.max_images = settings.max_images_per_request
        self.limits = RequestLimits(
            max_concurrent=settings.http_max_concurrent_requests,
            max_body_bytes=settings.max_message_bytes,
            budget_bytes=settings.http_max_body_bytes_in_flight,
            timeout_s=settings.http_body_timeout_s,
            count_rejected=plane.metrics.count_rejected,
        )
        self.parser = ParseWorker(
            max_pending_bytes=max(PARSE_QUEUE_BYTES, settings.max_message_bytes),
            count_rejected=plane.metrics.count_rejected,
        )

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(_every_answer(self.plane))  # outermost: sees every answer
        app.middlewares.append(self.limits.middleware)
        app.on_cleanup.append(self._close)
        route = self._route
        app.router.add_get("/v2", route("ServerMetadata", self._server_metadata))
        app.router.add_get("/v2/health/live", route("ServerLive", self._live))
        app.router.add_get("/v2/health/ready", route("ServerReady", self._ready))
        index = route("RepositoryIndex", self._index)
        app.router.add_post("/v2/repository/index", index, expect_handler=expect_later)
        load, unload = "/v2/repository/models/{model}/load", "/v2/repository/models/{model}/unload"
        app.router.add_post(
            load, route("RepositoryModelLoad", self._load), expect_handler=expect_later
        )
        app.router.add_post(
            unload, route("RepositoryModelUnload", self._unload), expect_handler=expect_later
        )
        # Before /v2/models/{model}: "stats" here is all models, not a model named "stats".
        app.router.add_get("/v2/models/stats", route("ModelStatistics", self._stats))
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            app.router.add_get(base, route("ModelMetadata", self._model_metadata))
            app.router.add_get(base + "/ready", route("ModelReady", self._model_ready))
            app.router.add_get(base + "/config", route("ModelConfig", self._config))
            app.router.add_get(base + "/stats", route("ModelStatistics", self._stats))
            app.router.add_post(
                base + "/infer", route("ModelInfer", self._infer), expect_handler=expect_later
            )
        for method, path, name in UNIMPLEMENTED_ROUTES:
            app.router.add_route(
                method, path, route(name, self._unimplemented(name)), expect_handler=expect_later
            )

    async def _close(self, app: web.Application) -> None:
        await self.parser.close()

    def _route(self, method: str, call: Handler) -> Handler:
        """Count, time and classify one route's requests, as server.grpc_binding does for gRPC."""
        label = METHOD_PREFIX + method
        plane = self.plane

        async def handle(request: web.Request) -> web.StreamResponse:
            t0 = time.perf_counter()
            code = Code.OK
            context = _begin(plane, label, request)
            try:
                context.check()
                response = await call(request)
            except (Exception, asyncio.CancelledError) as exc:
                failure = plane.failure(label, exc)
                code = failure.code
                if isinstance(exc, asyncio.CancelledError):  # the client went away: no answer
                    raise
                response = error_response(failure, exc)
            finally:
                # From the body's arrival when there was one (see BODY_ARRIVED).
                started = request.get(BODY_ARRIVED, t0)
                plane.observe(label, code, time.perf_counter() - started, context)
            response.headers[REQUEST_ID_HEADER] = context.id
            return response

        return handle

    @staticmethod
    def _model(request: web.Request) -> tuple[str, str]:
        return request.match_info["model"], request.match_info.get("version", "")

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return _json(message_json(self.catalog.server_metadata(HTTP_EXTENSIONS)))

    async def _live(self, request: web.Request) -> web.Response:
        self.catalog.check_live()  # 503 with the reason when not live
        return _json({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        self.catalog.check_ready()  # 503 with the reason when not ready
        return _json({"ready": True})

    async def _model_metadata(self, request: web.Request) -> web.Response:
        return _json(message_json(self.catalog.model_metadata(*self._model(request))))

    async def _model_ready(self, request: web.Request) -> web.Response:
        name, version = self._model(request)
        self.catalog.check_model_ready(name, version)  # 503 with the reason when not ready
        return _json({"name": name, "ready": True})

    async def _config(self, request: web.Request) -> web.Response:
        # Triton's REST answer is the config itself, not ModelConfigResponse.
        return _json(message_json(self.catalog.model_config(*self._model(request))))

    async def _stats(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return _json(message_json(await self.catalog.model_statistics(name, version)))

    async def _index(self, request: web.Request) -> web.Response:
        ready = parse_index_body(await self._read_body(request))
        answer = self.catalog.repository_index(only_ready=ready)
        return _json([message_json(model) for model in answer.models])

    async def _load(self, request: web.Request) -> web.Response:
        parameters = parse_control_body(await self._read_body(request))
        name = request.match_info["model"]
        await self.control.load(name, parameters, request.headers.get(AUTHORIZATION))
        return _json({})

    async def _unload(self, request: web.Request) -> web.Response:
        parameters = parse_control_body(await self._read_body(request))
        name = request.match_info["model"]
        await self.control.unload(name, parameters, request.headers.get(AUTHORIZATION))
        return _json({})

    async def _infer(self, request: web.Request) -> web.Response:
        name, version = self._model(request)
        # Before the body is read and parsed: a server that is not ready says so (503)
        # instead of spending the loop on up to --max-message-bytes of JSON.
        self.plane.readiness.check()  # admission: this process ready (peers do not matter)
        body = await self._read_body(request)
        header = request.headers.get(HEADER_LENGTH)
        json_length = parse_header_length(header, len(body))
        if (len(body) if json_length is None else json_length) < OFF_LOOP_BYTES:
            parsed = parse_infer_body(body, header, model_name=name, model_version=version)
        else:
            parsed = await self.parser.parse(
                body, header, model_name=name, model_version=version, max_images=self.max_images
            )
        del body  # the parsed request has what it needs
        # No deadline of its own: a Triton "timeout" parameter is the data plane's to enforce.
        encoded = await self.plane.infer(REST_INFER, parsed, None)
        if encoded.header_length is None:
            response = web.Response(body=encoded.body, content_type=JSON_TYPE)
        else:
            response = web.Response(body=encoded.body, content_type="application/octet-stream")
            response.headers[HEADER_LENGTH] = str(encoded.header_length)
        response.enable_compression()  # only when the client sent Accept-Encoding
        return response

    def _unimplemented(self, method: str) -> Handler:
        message = not_implemented_message(method)

        async def handle(request: web.Request) -> web.Response:
            if request.body_exists:  # read (under the limits), so the connection stays usable
                await self._read_body(request)
            raise Unimplemented(message)

        return handle

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, under the limits of :class:`server.http_body.RequestLimits`."""
        return await self.limits.read_body(request)
