"""OpenTelemetry traces, opt-in: a span per request, child spans for where its time went.

On when ``--otlp-endpoint`` (``FASHION_OTLP_ENDPOINT``) is set, or one of the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` variables is;
off whatever is set when ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``.
Spans go to that endpoint over OTLP/gRPC (the ``otel`` extra: opentelemetry-sdk and its
OTLP exporter), batched in the SDK's background thread; the SDK reads the rest of the
standard variables itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._CERTIFICATE``,
``..._TIMEOUT``, ``..._COMPRESSION``, ``OTEL_BSP_*``, ``OTEL_PROPAGATORS``).

When off, nothing imports opentelemetry: this module imports it only inside
:class:`Tracing`, which exists only when tracing is on, and the data plane's hot path
tests one attribute (``plane.tracing is None``).

A request's span (kind SERVER, named by its method: ``ModelInfer``, ``HTTP/ModelInfer``,
``Predict``) continues the trace its client sent (W3C ``traceparent``/``tracestate`` in
gRPC metadata or HTTP headers) and has, for an inference, four children: ``decode``,
``queue`` (waiting for its batch to start), ``inference`` (its batch's model time,
shared by every request of the batch) and ``encode``. The request and inference spans
carry ``fashion.batch_id``: requests that shared a batch have the same one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from server.errors import Code, ConfigError

if TYPE_CHECKING:
    from server.batcher import Computed
    from server.request_context import RequestContext

logger = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
DEFAULT_SERVICE_NAME = "fashion-serving"
INSTRUMENTATION = "fashion-serving"
EXTRA = 'pip install "fashion-serving[otel]"'
# How long stop() waits for the last spans to be exported.
FLUSH_TIMEOUT_S = 5.0
# Server-side failures (OpenTelemetry's gRPC conventions); a client's mistake leaves the
# span's status unset, its code is in fashion.status.
_ERROR_CODES = frozenset(
    {Code.DEADLINE_EXCEEDED, Code.UNIMPLEMENTED, Code.INTERNAL, Code.UNAVAILABLE}
)


def disabled_by(environ: Mapping[str, str]) -> str:
    """The standard variable that turns tracing off ("" when none does)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "OTEL_SDK_DISABLED=true"
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return "OTEL_TRACES_EXPORTER=none"
    return ""


def requested(endpoint: str, environ: Mapping[str, str]) -> bool:
    """Whether tracing is on: an endpoint (ours or the standard variables), not disabled."""
    asked = bool(endpoint) or any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)
    return asked and not disabled_by(environ)


def check_installed() -> None:
    """ConfigError (exit 2) when tracing is asked for and the ``otel`` extra is missing."""
    try:
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"tracing is on (--otlp-endpoint / FASHION_OTLP_ENDPOINT or "
            f"{' / '.join(ENDPOINT_VARIABLES)}) but OpenTelemetry is not installed ({exc}); "
            f"install the otel extra ({EXTRA}) or unset them"
        ) from None


class Tracing:
    """Spans of one server, made with ``provider`` (an SDK TracerProvider).

    :meth:`from_environment` builds the OTLP one; tests give their own (e.g. with the
    SDK's in-memory exporter) and the server's real request path makes the spans.
    """

    def __init__(self, provider: Any) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.provider = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION)
        self._extract = propagate.extract
        self._in_span = trace.set_span_in_context
        self._server = SpanKind.SERVER
        self._internal = SpanKind.INTERNAL
        self._status = Status
        self._error = StatusCode.ERROR

    @classmethod
    def from_environment(cls, endpoint: str, environ: Mapping[str, str]) -> Tracing | None:
        """The server's tracing from its settings and the standard variables; None when off."""
        if not requested(endpoint, environ):
            if endpoint:
                logger.warning(
                    "--otlp-endpoint is set but %s: tracing is off", disabled_by(environ)
                )
            return None
        check_installed()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER
        # endpoint None: the exporter reads OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then
        # OTEL_EXPORTER_OTLP_ENDPOINT.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint or None)))
        tracing = cls(provider)
        logger.info(
            "tracing: spans of service %s to %s over OTLP/gRPC",
            resource.attributes.get(SERVICE_NAME),
            endpoint or next(environ[name] for name in ENDPOINT_VARIABLES if environ.get(name)),
        )
        return tracing

    # -- the request path (called only when tracing is on) ----------------------

    def start(self, method: str, carrier: Any) -> Any:
        """A request's span, child of the trace context in ``carrier`` (headers) if any."""
        parent = self._extract(carrier) if carrier else None
        return self._tracer.start_span(method, context=parent, kind=self._server)

    def record_inference(
        self,
        span: Any,
        decode_from: float,
        decoded: float,
        computed: Computed[Any],
        encoding: float,
        done: float,
    ) -> None:
        """The children of an inference's span, from its ``time.perf_counter()`` instants and
        the batcher's own measurements (queue wait, the batch's model time)."""
        to_ns = time.time_ns() - time.perf_counter_ns()  # perf_counter -> epoch nanoseconds

        def ns(instant: float) -> int:
            return to_ns + int(instant * 1e9)

        parent = self._in_span(span)
        batch_starts = decoded + computed.queue_s
        inference_ends = min(batch_starts + computed.inference_s, encoding)
        children: list[tuple[str, float, float, dict[str, Any]]] = [
            ("decode", decode_from, decoded, {}),
            ("queue", decoded, batch_starts, {}),
            (
                "inference",
                batch_starts,
                inference_ends,
                {"fashion.batch_id": computed.batch, "fashion.batch_images": computed.batch_images},
            ),
            ("encode", encoding, done, {}),
        ]
        for name, start, end, attributes in children:
            child = self._tracer.start_span(
                name, context=parent, kind=self._internal, start_time=ns(start),
                attributes=attributes,
            )  # fmt: skip
            child.end(end_time=ns(max(start, end)))

    def finish(self, context: RequestContext, code: Code) -> None:
        """End a request's span with what the request reached and how it ended."""
        span = context.span
        context.span = None
        attributes: dict[str, Any] = {
            "rpc.method": context.method,
            "fashion.request_id": context.id,
            "fashion.status": code.value,
        }
        if context.model:
            attributes["fashion.model"] = context.model
            attributes["fashion.model_version"] = context.version
        if context.images:
            attributes["fashion.images"] = context.images
        if context.batch:
            attributes["fashion.batch_id"] = context.batch
        span.set_attributes(attributes)
        if code in _ERROR_CODES:
            span.set_status(self._status(self._error, code.value))
        span.end()

    def shutdown(self) -> None:
        """Export what is left and stop the exporter (blocking: call it off the loop)."""
        self.provider.force_flush(int(FLUSH_TIMEOUT_S * 1000))
        self.provider.shutdown()
