"""The gRPC binding: the one Code -> gRPC status table, and service registration.

:func:`add_service` registers a servicer for every method of a service
descriptor. Each handler receives the raw request bytes and parses them itself,
so a malformed message is the data plane's INVALID_ARGUMENT (counted, no
traceback) rather than grpc-python's UNKNOWN; then it calls the servicer method
(an adapter: protobuf in, data-plane call, protobuf out) and turns whatever it
raises into a status through :meth:`DataPlane.failure`. Servicer methods hold
no error handling, metrics or status codes of their own.

Every call is also held to the server's :class:`Limits` (issue #28): the calls in
progress (health probes not counted) and the bytes they hold, server-wide and per
stream (:mod:`server.budget`). :func:`add_foreign_service` serves a servicer we do not
own (grpc's health checking and reflection) the same way: raw bytes parsed here, so
a malformed message is INVALID_ARGUMENT without a traceback.

Request ids: a call's ``x-request-id`` metadata (or a generated id) is its id, sent
back in the call's trailing metadata, on success and failure alike; a stream's
messages are ``ID.1``, ``ID.2``, ... (:mod:`server.request_context`). With tracing on,
the call's metadata is also the carrier of its trace context (``traceparent``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import grpc

# protobuf ships no type information (types-protobuf is not a dependency).
from google.protobuf.descriptor import (  # type: ignore[import-untyped]
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped]
from google.protobuf.message_factory import GetMessageClass  # type: ignore[import-untyped]

from server.budget import ByteBudget, CallLimit, StreamBudget
from server.dataplane import DataPlane, Failure, Refused
from server.decoder import client_key
from server.errors import Code, InvalidInput, Overloaded, Unimplemented
from server.request_context import REQUEST_ID_HEADER

logger = logging.getLogger(__name__)

GRPC_STATUS: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in Code}
_CODE_OF = {status: code for code, status in GRPC_STATUS.items()}

Parse = Callable[[bytes], Any]
Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]]


@dataclass(frozen=True)
class Limits:
    """What every call on the server is held to (see :mod:`server.budget`)."""

    calls: CallLimit
    bytes: ByteBudget
    stream_bytes: int

    @classmethod
    def of(cls, max_calls: int, max_bytes: int, max_stream_bytes: int) -> Limits:
        return cls(CallLimit(max_calls), ByteBudget(max_bytes), max_stream_bytes)


# No limits: what a binding gets when none are given (tests of the binding alone).
UNLIMITED_BYTES = 2**62


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC deadline as a ``loop.time()`` instant, or None."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


def add_service(
    server: grpc.aio.Server,
    plane: DataPlane,
    servicer: object,
    service: ServiceDescriptor,
    limits: Limits | None = None,
    *,
    probes: Collection[str] = (),
) -> None:
    """Serve every method of ``service`` from the same-named method of ``servicer``.

    A method the servicer does not define (or inherits from the generated base
    class) answers UNIMPLEMENTED with a message naming it. ``probes``: unary methods
    that answer at once from memory (readiness), not counted in ``limits.calls``.
    """
    limits = limits or Limits.of(2**31, UNLIMITED_BYTES, UNLIMITED_BYTES)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        response_class = GetMessageClass(method.output_type)
        implementation = _implementation(servicer, method)
        parse = _parser(GetMessageClass(method.input_type))
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _streaming(plane, method.name, parse, implementation, limits),
                response_serializer=response_class.SerializeToString,
            )
        elif not method.client_streaming and not method.server_streaming:
            calls = None if method.name in probes else limits.calls
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(plane, method.name, parse, implementation, calls, limits.bytes),
                response_serializer=response_class.SerializeToString,
            )
        else:
            raise TypeError(f"{method.full_name}: only unary and bidirectional RPCs are supported")
    _register(server, service, handlers)


def _register(
    server: grpc.aio.Server, service: ServiceDescriptor, handlers: dict[str, grpc.RpcMethodHandler]
) -> None:
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def add_foreign_service(
    server: grpc.aio.Server,
    servicer: object,
    service: ServiceDescriptor,
    calls: CallLimit,
    *,
    probes: Collection[str] = (),
) -> None:
    """Serve a servicer we do not own (grpc's health checking, reflection) from raw bytes.

    A malformed message is INVALID_ARGUMENT with a neutral message and nothing logged
    (grpc-python answers ``UNKNOWN: Unexpected <class DecodeError>`` with a traceback
    per call). Every call but ``probes`` (unary methods answered at once) counts in
    ``calls``. The servicer's own statuses (``context.abort``) pass through unchanged.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        response_class = GetMessageClass(method.output_type)
        implementation = getattr(servicer, method.name)
        parse = _parser(GetMessageClass(method.input_type))
        limit = None if method.name in probes else calls
        serialize = response_class.SerializeToString
        if not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _foreign(implementation, parse, limit, streaming=False),
                response_serializer=serialize,
            )
        elif not method.client_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _foreign(implementation, parse, limit, streaming=True),
                response_serializer=serialize,
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _foreign_stream(implementation, parse, limit), response_serializer=serialize
            )
        else:
            raise TypeError(f"{method.full_name}: client-streaming RPCs are not supported")
    _register(server, service, handlers)


def _foreign(
    implementation: Any, parse: Parse, calls: CallLimit | None, *, streaming: bool
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            with _counted(calls):
                request = parse(data)
                result = implementation(request, context)
                if not streaming:
                    return await result
                await _write_all(result, context)
                return None
        except (InvalidInput, Overloaded) as exc:
            await _abort(context, Failure(exc.code, str(exc)))
        return None

    return handle


def _foreign_stream(
    implementation: Any, parse: Parse, calls: CallLimit | None
) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[None]]:
    async def handle(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        try:
            with _counted(calls):
                await _write_all(implementation(_parsed(raw, parse), context), context)
        except (InvalidInput, Overloaded) as exc:
            await _abort(context, Failure(exc.code, str(exc)))

    return handle


async def _write_all(result: Any, context: grpc.aio.ServicerContext) -> None:
    """A streaming method's answers: an async generator's items, or what it wrote itself."""
    if inspect.isawaitable(result):
        await result
        return
    try:
        async for response in result:
            await context.write(response)
    finally:
        await result.aclose()


class _counted:
    """``with _counted(limit)``: one call counted in ``limit`` (None: not counted)."""

    def __init__(self, limit: CallLimit | None) -> None:
        self.limit = limit

    def __enter__(self) -> None:
        if self.limit is not None:
            self.limit.enter()

    def __exit__(self, *exc: object) -> None:
        if self.limit is not None:
            self.limit.leave()


def _implementation(servicer: object, method: MethodDescriptor) -> Any:
    found = getattr(type(servicer), method.name, None)
    if found is not None and not found.__module__.endswith("_pb2_grpc"):
        return getattr(servicer, method.name)
    message = f"{method.full_name} is not implemented by this server"

    if method.server_streaming:

        async def missing_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            raise Unimplemented(message)
            yield  # an async generator, like the streaming methods it stands in for

        return missing_stream

    async def missing(request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return missing


def _parser(message_class: type[Message]) -> Parse:
    name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message:
        try:
            return message_class.FromString(data)
        except DecodeError:
            raise InvalidInput(
                f"the request is not a valid {name} message (protobuf parsing failed)"
            ) from None

    return parse


def _unary(
    plane: DataPlane,
    method: str,
    parse: Parse,
    implementation: Unary,
    calls: CallLimit | None,
    budget: ByteBudget,
) -> Unary:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        t0 = time.perf_counter()
        code = Code.OK
        peer = context.peer()
        metadata = context.invocation_metadata()
        carrier = dict(metadata or ()) if plane.tracing is not None else None
        request = plane.begin(method, _request_id(metadata), peer=peer, carrier=carrier)
        admitted = ended = False
        client_key.set(peer)

        def end() -> None:
            nonlocal ended
            ended = True
            if admitted:
                _leave(calls, budget, len(data))
            plane.observe(method, code, time.perf_counter() - t0, request)

        try:
            request.check()
            _admit(plane, calls, budget, len(data))
            admitted = True
            response = await implementation(parse(data), context)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request.id),))
            return response
        except grpc.aio.AbortError:
            code = _CODE_OF.get(context.code(), Code.INTERNAL)
            raise
        except (Exception, asyncio.CancelledError) as exc:
            failure = plane.failure(method, exc)
            code = failure.code
            if code is Code.CANCELLED:
                if _deadline_passed(context):
                    # grpc ends a call whose deadline passed by cancelling its handler, and
                    # the client got DEADLINE_EXCEEDED: the server was too slow for it (a
                    # server-side error to the alerts), not a caller that went away.
                    code = Code.DEADLINE_EXCEEDED
                raise
            # Counted and logged before the status is sent, as an answer is before it is
            # returned: a client that reads the status then finds its request in the metrics
            # and the access log (context.abort awaits the send, then raises).
            end()
            await _abort(context, failure, request.id)
        finally:
            if not ended:
                end()

    return handle


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call had a deadline and it has passed."""
    remaining: float | None = context.time_remaining()
    return remaining is not None and remaining <= 0


def _request_id(metadata: Any) -> str | None:
    """The call's ``x-request-id`` metadata, if it sent one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            return value if isinstance(value, str) else None
    return None


def _admit(plane: DataPlane, calls: CallLimit | None, budget: ByteBudget, n: int) -> None:
    """Count a call and hold its ``n`` request bytes, or raise Overloaded (counted)."""
    if calls is not None:
        try:
            calls.enter()
        except Overloaded:
            plane.metrics.count_rejected("too_many_calls")
            raise
    try:
        budget.take(n)
    except Overloaded:
        if calls is not None:
            calls.leave()
        plane.metrics.count_rejected("memory_budget")
        raise


def _leave(calls: CallLimit | None, budget: ByteBudget, n: int) -> None:
    budget.give(n)
    if calls is not None:
        calls.leave()


def _streaming(
    plane: DataPlane, method: str, parse: Parse, implementation: Streaming, limits: Limits
) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[None]]:
    """A coroutine that reads the requests and writes the responses itself (grpc's
    reader/writer API; grpc's request iterator is left unused).

    Writing here rather than yielding to grpc means a cancellation arrives in
    this frame, so the stream is closed (and its unanswered messages counted)
    at once, not whenever the abandoned generator is collected. Each request's
    bytes are held in the stream's budget from its read until its response is
    written (every streaming method answers each request once, in order), so a
    client that does not read stops being read from.
    """

    async def handle(_: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        t0 = time.perf_counter()
        metadata = context.invocation_metadata()
        carrier = dict(metadata or ()) if plane.tracing is not None else None
        stream = plane.begin_stream(_request_id(metadata), carrier)
        peer = context.peer()

        def end_whole(code: Code) -> None:
            """The stream ended as a whole, not by a message (refused before its first read,
            or broken): counted, logged and traced under the id its trailers carry (without
            a context the access line had no id, and the call no span)."""
            whole = plane.begin(method, stream.id, peer=peer, carrier=carrier)
            plane.observe(method, code, time.perf_counter() - t0, whole)

        if stream.refusal:
            end_whole(Code.INVALID_ARGUMENT)
            await _abort(context, Failure(Code.INVALID_ARGUMENT, stream.refusal), stream.id)
            return
        try:
            limits.calls.enter()
        except Overloaded as exc:
            plane.metrics.count_rejected("too_many_calls")
            end_whole(exc.code)
            await _abort(context, Failure(exc.code, str(exc)), stream.id)
            return
        client_key.set(peer)
        budget = StreamBudget(limits.stream_bytes, limits.bytes)
        responses = implementation(_metered(context, parse, budget), context)
        try:
            async for response in responses:
                size = response.ByteSize()
                budget.hold(size)
                try:
                    await context.write(response)
                except grpc.aio.InternalError:  # the client is gone: nothing to write to
                    await _abort(context, Failure(Code.CANCELLED, "the client went away"))
                    return
                finally:
                    budget.release(size)
                budget.answered()
            context.set_trailing_metadata(((REQUEST_ID_HEADER, stream.id),))
        except (grpc.aio.BaseError, asyncio.CancelledError):
            raise  # grpc's own ending (aborted, server stopped, cancelled): grpc finishes it
        except Exception as exc:
            failure = plane.failure(method, exc)
            if not isinstance(exc, Refused):  # a refused stream counted its own messages
                end_whole(failure.code)
            await _abort(context, failure, stream.id)
        finally:
            close = getattr(responses, "aclose", None)
            if close is not None:
                await close()
            budget.close()
            limits.calls.leave()

    return handle


async def _parsed(raw: AsyncIterator[bytes], parse: Parse) -> AsyncIterator[Any]:
    async for data in raw:
        yield parse(data)


async def _metered(
    context: grpc.aio.ServicerContext, parse: Parse, budget: StreamBudget
) -> AsyncIterator[Any]:
    """The stream's requests, parsed; each is read only once ``budget`` has room for it,
    and held in it from then on. While the stream or the server is full the stream is
    not read at all (backpressure): grpc holds at most the stream's receive window.

    ``context.read()`` rather than grpc's request iterator, whose generator keeps the
    last message alive while it waits; nothing here holds one across a wait either.
    """
    while True:
        await budget.wait_for_room()
        request = await _read(context, parse, budget)
        if request is None:
            return
        yield request
        del request


async def _read(context: grpc.aio.ServicerContext, parse: Parse, budget: StreamBudget) -> Any:
    """The next request, parsed and held in ``budget``; None at the end of the stream."""
    data = await context.read()
    if data is grpc.aio.EOF:
        return None
    budget.arrived(len(data))
    return parse(data)


async def _abort(
    context: grpc.aio.ServicerContext, failure: Failure, request_id: str | None = None
) -> None:
    """Send ``failure`` as the call's status (with the call's ``x-request-id``, if given).

    If the client went away as we answered (cancelled, deadline passed), core
    cannot send it and raises InternalError; there is nobody left to tell, and
    returning lets grpc end the call quietly instead of logging a traceback.
    """
    metadata = ((REQUEST_ID_HEADER, request_id),) if request_id else ()
    try:
        await context.abort(GRPC_STATUS[failure.code], failure.message, metadata)
    except grpc.aio.InternalError:
        logger.debug("could not send %s: the client went away", failure.code.value)
