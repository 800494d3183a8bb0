"""The gRPC binding: the one Code -> gRPC status table, and service registration.

:func:`add_service` registers a servicer for every method of a service
descriptor. Each handler receives the raw request bytes and parses them itself,
so a malformed message is the data plane's INVALID_ARGUMENT (counted, no
traceback) rather than grpc-python's UNKNOWN; then it calls the servicer method
(an adapter: protobuf in, data-plane call, protobuf out) and turns whatever it
raises into a status through :meth:`DataPlane.failure`. Servicer methods hold
no error handling, metrics or status codes of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# protobuf ships no type information (types-protobuf is not a dependency).
from google.protobuf.descriptor import (  # type: ignore[import-untyped]
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped]
from google.protobuf.message_factory import GetMessageClass  # type: ignore[import-untyped]

from server.dataplane import DataPlane, Failure, Refused
from server.errors import Code, InvalidInput, Unimplemented

logger = logging.getLogger(__name__)

GRPC_STATUS: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in Code}
_CODE_OF = {status: code for code, status in GRPC_STATUS.items()}

Parse = Callable[[bytes], Any]
Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]]


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC deadline as a ``loop.time()`` instant, or None."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


def add_service(
    server: grpc.aio.Server, plane: DataPlane, servicer: object, service: ServiceDescriptor
) -> None:
    """Serve every method of ``service`` from the same-named method of ``servicer``.

    A method the servicer does not define (or inherits from the generated base
    class) answers UNIMPLEMENTED with a message naming it.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        response_class = GetMessageClass(method.output_type)
        implementation = _implementation(servicer, method)
        parse = _parser(GetMessageClass(method.input_type))
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _streaming(plane, method.name, parse, implementation),
                response_serializer=response_class.SerializeToString,
            )
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(plane, method.name, parse, implementation),
                response_serializer=response_class.SerializeToString,
            )
        else:
            raise TypeError(f"{method.full_name}: only unary and bidirectional RPCs are supported")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


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


def _unary(plane: DataPlane, method: str, parse: Parse, implementation: Unary) -> Unary:
    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        t0 = time.perf_counter()
        code = Code.OK
        request = plane.begin()
        try:
            return await implementation(parse(data), context)
        except grpc.aio.AbortError:
            code = _CODE_OF.get(context.code(), Code.INTERNAL)
            raise
        except (Exception, asyncio.CancelledError) as exc:
            failure = plane.failure(method, exc)
            code = failure.code
            if code is Code.CANCELLED:
                raise
            await _abort(context, failure)
        finally:
            plane.observe(method, code, time.perf_counter() - t0, request)

    return handle


def _streaming(
    plane: DataPlane, method: str, parse: Parse, implementation: Streaming
) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[None]]:
    """A coroutine that writes the responses itself (grpc's reader/writer API).

    Writing here rather than yielding to grpc means a cancellation arrives in
    this frame, so the stream is closed (and its unanswered messages counted)
    at once, not whenever the abandoned generator is collected.
    """

    async def handle(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        t0 = time.perf_counter()
        responses = implementation(_parsed(raw, parse), context)
        try:
            async for response in responses:
                try:
                    await context.write(response)
                except grpc.aio.InternalError:  # the client is gone: nothing to write to
                    await _abort(context, Failure(Code.CANCELLED, "the client went away"))
                    return
        except (grpc.aio.BaseError, asyncio.CancelledError):
            raise  # grpc's own ending (aborted, server stopped, cancelled): grpc finishes it
        except Exception as exc:
            failure = plane.failure(method, exc)
            if not isinstance(exc, Refused):  # a refused stream counted its own messages
                plane.observe(method, failure.code, time.perf_counter() - t0)
            await _abort(context, failure)
        finally:
            close = getattr(responses, "aclose", None)
            if close is not None:
                await close()

    return handle


async def _parsed(raw: AsyncIterator[bytes], parse: Parse) -> AsyncIterator[Any]:
    async for data in raw:
        yield parse(data)


async def _abort(context: grpc.aio.ServicerContext, failure: Failure) -> None:
    """Send ``failure`` as the call's status.

    If the client went away as we answered (cancelled, deadline passed), core
    cannot send it and raises InternalError; there is nobody left to tell, and
    returning lets grpc end the call quietly instead of logging a traceback.
    """
    try:
        await context.abort(GRPC_STATUS[failure.code], failure.message)
    except grpc.aio.InternalError:
        logger.debug("could not send %s: the client went away", failure.code.value)
