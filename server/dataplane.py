"""The one data plane behind every front end: no grpc here, no protocol of its own.

Every front end (``fashion.v1``, the Open Inference Protocol, Triton's
extensions, HTTP) is an adapter: it turns its wire message into a call here and
the result back into its wire message. Everything with policy lives here, once:

* admission: :attr:`DataPlane.readiness`, the one readiness state (health and
  ``ServerReady`` report it, :meth:`DataPlane.infer` checks it);
* the request sequence: readiness -> the model version asked for (by number, label
  or the model's default: :class:`server.manager.ModelManager` routes) -> decode
  (encoded images in a bounded pool off the event loop) -> that version's own
  batcher -> encode, in :meth:`DataPlane.infer`; the request holds its version
  until it is answered, so a version being unloaded drains instead of failing it;
* pipelined streams, in order, in :meth:`DataPlane.stream` (the first failure ends
  the stream) and :meth:`DataPlane.stream_outcomes` (failures travel in-band);
* the outcome of every request: :meth:`DataPlane.failure` turns any exception into
  a transport-neutral :class:`Failure` (and logs what was unexpected),
  :meth:`DataPlane.observe` counts and times it by method and code, writes its
  access log line (``--access-log``) and ends its trace span (``--otlp-endpoint``);
* every request's id and trace span: a binding starts the request with
  :meth:`DataPlane.begin` (the id and trace context its transport carried), the data
  plane fills in the rest (:mod:`server.request_context`, :mod:`server.tracing`), the
  binding writes the id back.

A front end maps :class:`server.errors.Code` to its own status once (gRPC:
:mod:`server.grpc_binding`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from server.batcher import BatcherClosed
from server.decoder import FairDecoder, SlicedDecode
from server.errors import (
    Code,
    DeadlineExpired,
    ModelNotReady,
    Overloaded,
    ServingError,
    VersionNotFound,
)
from server.logs import ACCESS_LOGGER
from server.manager import ModelManager
from server.metrics import Metrics
from server.model import LoadedModel
from server.readiness import Phase, Readiness
from server.request_context import (
    RequestContext,
    StreamContext,
    activate,
    begin,
    begin_message,
    begin_stream,
    current,
)
from server.served import ServedVersion
from server.target import Target
from server.tracing import Tracing

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(ACCESS_LOGGER)

GENERIC_INTERNAL = "internal error while handling the request; it has been logged"
# Error messages quote what the client sent (names, datatypes); gRPC refuses trailing
# metadata over 16 KiB and would turn a long INVALID_ARGUMENT into RESOURCE_EXHAUSTED.
MAX_MESSAGE_CHARS = 1024


def bounded(message: str) -> str:
    """``message``, cut to :data:`MAX_MESSAGE_CHARS` characters (marked) when longer."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 20] + " … (message cut)"


# Requests of one stream submitted ahead of the response being written (the stream's
# byte budget, server.budget.StreamBudget, may stop reading sooner).
STREAM_PIPELINE_DEPTH = 64
# Encoded images waiting for or in the decode thread (server.decoder); beyond this
# RESOURCE_EXHAUSTED, so a flood of crafted images cannot queue unbounded work (raw
# pixels are not held up).
MAX_PENDING_DECODES = 1024

Req = TypeVar("Req", contravariant=True)
Resp = TypeVar("Resp", covariant=True)
R = TypeVar("R")
S = TypeVar("S")


# A request's images still encoded: decoded off the event loop, a slice at a time.
DeferredDecode = SlicedDecode

# Decoded images, or a call that decodes them.
Images = np.ndarray | DeferredDecode


class RequestCodec(Protocol[Req, Resp]):
    """What a front end supplies for one inference message type. Pure, no I/O."""

    def target(self, request: Req) -> Target:
        """Check the fields that are not images; the model, version and timeout asked for."""
        ...

    def decode(self, request: Req, max_images: int) -> Images:
        """The images as uint8 [n, 28, 28], or a deferred decode (see :data:`Images`)."""
        ...

    def encode(self, request: Req, probabilities: np.ndarray, model: LoadedModel) -> Resp:
        """float32 [n, 10] from ``model`` -> the response message."""
        ...


@dataclass(frozen=True, slots=True)
class Failure:
    """How a request failed, for any transport: a neutral code and a client-safe message."""

    code: Code
    message: str


class Refused(Exception):
    """A call ended on a failure already classified, logged and counted: send it as is."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class DataPlane:
    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        *,
        max_images_per_request: int,
        max_pending_decodes: int = MAX_PENDING_DECODES,
        access_log: bool = False,
        tracing: Tracing | None = None,
    ) -> None:
        """``access_log``: one log line per request (:meth:`observe`); ``tracing``: a span
        per request (None: off, and nothing of it on the request path)."""
        self.manager = manager
        self.metrics = metrics
        self.max_images = max_images_per_request
        self.access_log = access_log
        self.tracing = tracing
        self.readiness = Readiness()
        self._statistics = metrics.statistics
        # One request's images always fit, however high --max-images-per-request is set.
        self._decoder = FairDecoder(max_pending=max(max_pending_decodes, max_images_per_request))

    # -- lifecycle: the readiness state ------------------------------------------

    async def start(self) -> None:
        """Models are loaded (each version's batcher runs): report READY."""
        if self.readiness.phase is not Phase.READY:
            await self.readiness.set(Phase.READY)

    async def wait_for_model(self, refusal: str | None = None) -> None:
        """Live but not ready: the server works, no model is installed yet.

        ``refusal``: what refused requests are told (e.g. where the server waits).
        """
        await self.readiness.set(Phase.WAITING, refusal=refusal)

    async def begin_shutdown(self) -> None:
        """NOT ready and not live from now on: new requests get UNAVAILABLE."""
        await self.readiness.set(Phase.STOPPING)

    async def stop(self) -> None:
        """After the transports stopped: drain every version, then release the threads.

        Every call has ended by now, so a decode still queued has nobody to answer:
        it is dropped, and one still running is not waited for on the event loop.
        """
        await self.manager.stop()
        self._decoder.close()

    # -- questions about models (every front end asks the same way) ---------------

    def resolve(self, target: Target) -> ServedVersion:
        """The loaded version ``target`` names (by number, label, or the model's default).

        UNAVAILABLE (with the reason) while the server is not ready and serves nothing
        (starting, waiting for a first model, stopping); NOT_FOUND for a model, version or
        label that is not served (the message says what is), also on a ready server that
        serves no model (explicit mode before a load or after the last unload, a poll
        after the last model left the repository): retrying would not change the answer.
        """
        if not self.manager.routes and not self.readiness.ready:
            raise ModelNotReady(self.readiness.refusal or "no model is loaded yet; retry shortly")
        return self.manager.resolve(target)

    def model_ready(self, target: Target) -> tuple[bool, str]:
        """OIP ModelReady: whether ``target`` can be answered now, and if not, why.

        NOT_FOUND for a model that is neither loaded nor in the repository, and for a
        version that is neither loaded nor on disk.
        """
        try:
            self.resolve(target)
        except VersionNotFound as exc:
            if self.manager.on_disk(target):  # it exists, it is just not served
                return False, str(exc)
            raise
        except ModelNotReady as exc:
            return False, str(exc)
        if not self.readiness.ready:
            return False, self.readiness.refusal or "the server is not ready"
        return True, ""

    # -- the request path -----------------------------------------------------

    async def infer(
        self,
        codec: RequestCodec[R, S],
        request: R,
        deadline: float | None,
        *,
        pipelined: bool = False,
    ) -> S:
        """One inference request, start to end. ``deadline`` is a ``loop.time()`` instant.
        ``pipelined``: more requests of the same client follow right behind it (a stream),
        so its batch never runs on the event loop (see :mod:`server.batcher`).

        Raises a ServingError for anything the client should be told (see
        :meth:`failure`); the response is the codec's. A Triton ``timeout`` in the
        request is a deadline too (the earlier of the two wins), enforced here for
        every binding: the batcher refuses what cannot be met, and the wait ends when
        it passes. The request holds its model version from the moment it is resolved
        until it is answered (an unload drains it), and is counted in that version's
        statistics (Triton's ModelStatistics): success with its decode, queue, model
        and encode times, or failure.
        """
        started = time.perf_counter()
        self.readiness.check()
        target = codec.target(request)
        context = current()
        if context is not None and target.request_id:
            context.id = target.request_id  # the protocol's own id wins over the transport's
        served = self.resolve(target)
        if context is not None:
            context.model, context.version = served.name, str(served.version)
        served.enter()
        try:
            if target.timeout_s is None:
                return await self._infer(
                    codec, request, served, deadline, started, context, pipelined
                )
            timeout_at = asyncio.get_running_loop().time() + target.timeout_s
            deadline = timeout_at if deadline is None else min(deadline, timeout_at)
            timeout = asyncio.timeout_at(timeout_at)
            try:
                async with timeout:
                    return await self._infer(
                        codec, request, served, deadline, started, context, pipelined
                    )
            except TimeoutError:
                if not timeout.expired():
                    raise
                raise DeadlineExpired(
                    f"the request's timeout ({target.timeout_us} us) passed before it was answered"
                ) from None
        finally:
            served.leave()

    async def _infer(
        self,
        codec: RequestCodec[R, S],
        request: R,
        served: ServedVersion,
        deadline: float | None,
        started: float,
        context: RequestContext | None,
        pipelined: bool,
    ) -> S:
        model = served.model
        try:
            decode_from = time.perf_counter()
            images = codec.decode(request, self.max_images)
            if not isinstance(images, np.ndarray):
                images = await self._decode_off_loop(images)
            decoded = time.perf_counter()
            if context is not None:
                context.images = len(images)
            try:
                computed = await served.batcher.submit(
                    images, deadline=deadline, inline=not pipelined
                )
            except BatcherClosed:  # only if the version stopped under it: a bug, but say so
                raise ModelNotReady(
                    self.readiness.refusal or "the model version was unloaded; retry"
                ) from None
            encoding = time.perf_counter()
            if context is not None:
                context.batch = computed.batch
            response = codec.encode(request, computed.outputs, model)
        except BaseException:
            self._statistics.observe_request(
                model.name, model.version, ok=False, total_s=time.perf_counter() - started
            )
            raise
        done = time.perf_counter()
        self._statistics.observe_request(
            model.name,
            model.version,
            ok=True,
            total_s=done - started,
            input_s=decoded - started,
            queue_s=computed.queue_s,
            infer_s=computed.inference_s,
            output_s=done - encoding,
        )
        if context is not None and context.span is not None and self.tracing is not None:
            self.tracing.record_inference(
                context.span, decode_from, decoded, computed, encoding, done
            )
        return response

    async def _decode_off_loop(self, decode: DeferredDecode) -> np.ndarray:
        """Decode in the decode thread, in turns with other clients (server.decoder); a
        caller that goes away is never decoded further."""
        try:
            return await self._decoder.decode(decode)
        except Overloaded:
            self.metrics.count_rejected("decode_queue_full")
            raise

    # -- outcomes: the one classification and the one place that counts ------

    def failure(self, method: str, exc: BaseException) -> Failure:
        """Any exception -> what the client is told. Unexpected ones are logged with traceback.

        A ServingError's message is written for clients; anything else is a bug or
        an environment failure whose text might leak internals: the client gets
        :data:`GENERIC_INTERNAL`.
        """
        if isinstance(exc, Refused):
            return exc.failure
        if isinstance(exc, asyncio.CancelledError):
            return Failure(Code.CANCELLED, "the call was cancelled")
        if isinstance(exc, ServingError):
            if exc.code is Code.INTERNAL:
                # The server's own trouble (an unreadable repository, a broken model): the
                # operator reads it in the log; its text names paths a client must not see.
                logger.error("%s failed: %s", method, exc)
                return Failure(Code.INTERNAL, GENERIC_INTERNAL)
            return Failure(exc.code, bounded(str(exc)))
        logger.error("%s failed with an unexpected error", method, exc_info=exc)
        return Failure(Code.INTERNAL, GENERIC_INTERNAL)

    def begin(
        self, method: str, request_id: str | None = None, *, peer: str = "", carrier: Any = None
    ) -> RequestContext:
        """A binding starts one request (see :mod:`server.request_context`): the id its
        transport carried (None: one is generated), the client's address, and its headers
        (``carrier``, read for a trace context; only needed when :attr:`tracing` is set).
        Every request begun is ended by :meth:`observe`.
        """
        context = begin(method, request_id, peer)
        if self.tracing is not None:
            context.span = self.tracing.start(method, carrier)
        return context

    @staticmethod
    def begin_stream(request_id: str | None, carrier: Any = None) -> StreamContext:
        """A binding starts a stream: its messages' ids derive from its id (see
        :func:`server.request_context.begin_message`), their spans from its trace context."""
        return begin_stream(request_id, carrier)

    def _begin_message(self, method: str) -> RequestContext:
        context, stream = begin_message(method)
        if self.tracing is not None:
            context.span = self.tracing.start(method, stream.carrier if stream else None)
        return context

    def observe(
        self, method: str, code: Code, seconds: float, context: RequestContext | None = None
    ) -> None:
        """Count one request by method, code and the model version it reached
        (``fashion_requests_total``) and time it; log it (``--access-log``) and end its span.
        """
        if context is None:
            self.metrics.observe_rpc(method, code.value, seconds)
        else:
            self.metrics.observe_rpc(method, code.value, seconds, context.model, context.version)
            if context.span is not None and self.tracing is not None:
                self.tracing.finish(context, code)
        if self.access_log:
            self._log_access(method, code, seconds, context)

    @staticmethod
    def _log_access(
        method: str, code: Code, seconds: float, context: RequestContext | None
    ) -> None:
        fields: dict[str, object] = {"method": method, "status": code.value}
        request_id = None
        if context is not None:
            request_id = context.id
            if context.model:  # it reached a model version
                fields.update(model=context.model, version=context.version)
                fields["images"] = context.images
            if context.batch:
                fields["batch"] = context.batch
            if context.peer:
                fields["peer"] = context.peer
        fields["latency_ms"] = round(seconds * 1000, 3)
        access_logger.info("request", extra={"fields": fields, "request_id": request_id})

    # -- streams ---------------------------------------------------------------

    def stream(
        self,
        method: str,
        codec: RequestCodec[R, S],
        requests: AsyncIterator[R],
        deadline: float | None,
    ) -> AsyncIterator[S]:
        """Pipelined inference over a stream: responses in request order.

        The first failure ends the iteration with :class:`Refused` (the stream's
        final status). Each message is counted once under ``method``: its own code,
        or CANCELLED when the stream ended before its answer.
        """
        return self._pipeline(method, codec, requests, deadline, answer_failure=None)

    def stream_outcomes(
        self,
        method: str,
        codec: RequestCodec[R, S],
        requests: AsyncIterator[R],
        deadline: float | None,
        answer_failure: Callable[[R, Failure], S],
    ) -> AsyncIterator[S]:
        """Like :meth:`stream`, but a failed request is answered in its place by
        ``answer_failure(request, failure)`` and the stream goes on (Triton's
        ModelStreamInfer sends it in ``error_message``). A broken request stream (a
        malformed message, or one the server has no memory left for) still ends it with
        :class:`Refused`, after the requests before it are answered: the stream must not
        end OK when the client's messages were not all read.
        """
        return self._pipeline(method, codec, requests, deadline, answer_failure=answer_failure)

    async def _pipeline(
        self,
        method: str,
        codec: RequestCodec[R, S],
        requests: AsyncIterator[R],
        deadline: float | None,
        *,
        answer_failure: Callable[[R, Failure], S] | None,
    ) -> AsyncIterator[S]:
        """``answer_failure`` None: the first failure ends the stream (:meth:`stream`)."""
        loop = asyncio.get_running_loop()
        # Unbounded queue, bounded by the semaphore: the reader can always post its
        # end marker, even when it stops because it failed or was cancelled.
        queue: asyncio.Queue[_InFlight[R, S] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_PIPELINE_DEPTH)
        broken: asyncio.Future[S] = loop.create_future()  # the request stream's own failure

        async def read() -> None:
            try:
                async for request in requests:
                    await slots.acquire()
                    # Each message its own context: the task copies the one set here.
                    context = self._begin_message(method)
                    future = asyncio.ensure_future(
                        self.infer(codec, request, deadline, pipelined=True)
                    )
                    queue.put_nowait(_InFlight(future, loop.time(), context, request))
            except Exception as exc:  # a malformed message, a broken request stream
                broken.set_exception(exc)
                queue.put_nowait(_InFlight(broken, loop.time(), self._begin_message(method), None))
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read(), name=f"{method}-reader")
        head: _InFlight[R, S] | None = None
        try:
            while (head := await queue.get()) is not None:
                activate(head.context)  # what is logged now is about this message
                try:
                    response = await head.future
                except Exception as exc:
                    failure = self.failure(method, exc)
                    self.observe(method, failure.code, loop.time() - head.started, head.context)
                    if answer_failure is None or head.request is None:  # None: broken
                        head = None
                        raise Refused(failure) from None
                    answer = answer_failure(head.request, failure)
                    head = None
                    slots.release()
                    yield answer
                    continue
                self.observe(method, Code.OK, loop.time() - head.started, head.context)
                head = None
                slots.release()
                yield response
        finally:
            reader.cancel()
            unanswered = [head] if head is not None else []
            while not queue.empty():
                if (item := queue.get_nowait()) is not None:
                    unanswered.append(item)
            now = loop.time()
            # The stream's deadline passed (grpc cancels it then, the client is told
            # DEADLINE_EXCEEDED): the server was too slow for it, not a caller that left.
            expired = deadline is not None and now >= deadline
            ended = Code.DEADLINE_EXCEEDED if expired else Code.CANCELLED
            for item in unanswered:
                if not item.future.cancel() and not item.future.cancelled():
                    item.future.exception()  # finished unread: retrieved, so nothing is logged
                self.observe(method, ended, now - item.started, item.context)


@dataclass(frozen=True, slots=True)
class _InFlight(Generic[R, S]):
    """One stream message submitted ahead of its answer being written."""

    future: asyncio.Future[S]
    started: float
    context: RequestContext
    request: R | None  # what a failure is answered about; None: the broken stream's marker
