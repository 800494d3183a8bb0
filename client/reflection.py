"""Call any unary RPC of a server by name with JSON, through gRPC server reflection.

What ``grpcurl list`` and ``grpcurl -d JSON HOST:PORT Service/Method`` do, for users who
cannot install grpcurl (it is not in Debian 12, nor on PyPI or npm except as an unofficial
wrapper): the request and response types are fetched from the server's reflection service,
so nothing here depends on the project's generated stubs, and any service the server
reflects can be called. The JSON mapping is protobuf's (as grpcurl's): bytes fields are
base64, 64-bit integers are strings in the output, field names may be given in either
``lower_snake`` or ``lowerCamel`` case.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


class ReflectionError(ValueError):
    """The method cannot be called as asked; the message says why and what exists."""


class _DeadlineChannel:
    """The reflection streams of a channel, all under one deadline.

    ProtoReflectionDescriptorDatabase opens its streams with no timeout, so a server whose
    reflection service accepts the stream and never answers would hold the lookup forever;
    it only ever asks its channel for ``stream_stream``, which this gives it with the time
    left until ``deadline`` (``time.monotonic()``) added to each call."""

    def __init__(self, channel: grpc.Channel, deadline: float) -> None:
        self._channel = channel
        self._deadline = deadline

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Iterator[Any]]:
        call = self._channel.stream_stream(method, *args, **kwargs)

        def with_deadline(requests: Iterator[Any], **options: Any) -> Iterator[Any]:
            options["timeout"] = max(self._deadline - time.monotonic(), 0.0)
            return call(requests, **options)  # type: ignore[no-any-return]

        return with_deadline


def _database(channel: grpc.Channel, timeout_s: float) -> ProtoReflectionDescriptorDatabase:
    deadline = time.monotonic() + timeout_s
    return ProtoReflectionDescriptorDatabase(_DeadlineChannel(channel, deadline))


def _timed_out(exc: grpc.RpcError, timeout_s: float) -> grpc.RpcError | ReflectionError:
    """A passed deadline as a message that says what waited; any other failure as it is."""
    if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
        return exc
    return ReflectionError(
        f"DEADLINE_EXCEEDED: the server's reflection service did not answer within "
        f"{timeout_s:g} s (--timeout)"
    )


def list_services(channel: grpc.Channel, *, timeout_s: float) -> list[str]:
    """The services the server lists through reflection, sorted, within ``timeout_s``."""
    try:
        return sorted(_database(channel, timeout_s).get_services())
    except grpc.RpcError as exc:
        raise _timed_out(exc, timeout_s) from None


def _split_method(method: str) -> tuple[str, str]:
    """``pkg.Service/Method`` or ``pkg.Service.Method`` -> (service, method)."""
    service, sep, name = method.strip("/").rpartition("/")
    if not sep:
        service, sep, name = method.rpartition(".")
    if not (service and name):
        raise ReflectionError(f"{method!r}: give the method as package.Service/Method")
    return service, name


def call_json(
    channel: grpc.Channel, method: str, request_json: str, *, timeout_s: float
) -> dict[str, Any]:
    """Call the unary ``method`` with the JSON request; the response as a JSON-ready dict.

    ``timeout_s`` bounds the reflection lookups (all of them together) and, again, the call.
    Raises ReflectionError for an unknown service or method, a streaming method, a request
    that does not parse as the method's input type or lookups that outlast ``timeout_s``,
    and grpc.RpcError for a failed call.
    """
    service_name, method_name = _split_method(method)
    try:
        found = _find_method(_database(channel, timeout_s), service_name, method_name)
    except grpc.RpcError as exc:
        raise _timed_out(exc, timeout_s) from None
    request_type = message_factory.GetMessageClass(found.input_type)
    response_type = message_factory.GetMessageClass(found.output_type)
    try:
        request = json_format.Parse(request_json or "{}", request_type())
    except json_format.ParseError as exc:
        raise ReflectionError(
            f"the request is not a valid {found.input_type.full_name}: {exc}".replace("\n", " ")
        ) from None
    call = channel.unary_unary(
        f"/{found.containing_service.full_name}/{found.name}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    response = call(request, timeout=timeout_s)
    return json_format.MessageToDict(response)


def _find_method(
    database: ProtoReflectionDescriptorDatabase, service_name: str, method_name: str
) -> MethodDescriptor:
    """The unary method's descriptor, through reflection; ReflectionError if there is none."""
    # A pool of its own: the server's types never mix with the stubs this process imported.
    pool = descriptor_pool.DescriptorPool(database)
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        offered = ", ".join(sorted(database.get_services()))
        raise ReflectionError(
            f"the server offers no service {service_name!r}; it offers: {offered}"
        ) from None
    found = service.methods_by_name.get(method_name)
    if found is None:
        names = ", ".join(sorted(service.methods_by_name))
        raise ReflectionError(f"{service_name} has no method {method_name!r}; it has: {names}")
    if found.client_streaming or found.server_streaming:
        raise ReflectionError(
            f"{service_name}/{method_name} is a streaming method; only unary methods can be "
            "called this way"
        )
    return found
