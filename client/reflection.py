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

from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


class ReflectionError(ValueError):
    """The method cannot be called as asked; the message says why and what exists."""


def list_services(channel: grpc.Channel) -> list[str]:
    """The services the server lists through reflection, sorted."""
    return sorted(ProtoReflectionDescriptorDatabase(channel).get_services())


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

    Raises ReflectionError for an unknown service or method, a streaming method or a request
    that does not parse as the method's input type, and grpc.RpcError for a failed call.
    """
    service_name, method_name = _split_method(method)
    database = ProtoReflectionDescriptorDatabase(channel)
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
    request_type = message_factory.GetMessageClass(found.input_type)
    response_type = message_factory.GetMessageClass(found.output_type)
    try:
        request = json_format.Parse(request_json or "{}", request_type())
    except json_format.ParseError as exc:
        raise ReflectionError(
            f"the request is not a valid {found.input_type.full_name}: {exc}".replace("\n", " ")
        ) from None
    call = channel.unary_unary(
        f"/{service.full_name}/{found.name}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    response = call(request, timeout=timeout_s)
    return json_format.MessageToDict(response)
