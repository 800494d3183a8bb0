"""What the conformance test compares of a protobuf descriptor (no tritonclient import here).

The test reads the server's descriptors in a subprocess (its `inference` package and
tritonclient's cannot share a protobuf pool), so both sides need the same keys from
plain code that imports neither.
"""

from __future__ import annotations

from typing import Any


def field_key(f: Any) -> tuple:
    """Number, type, label, referenced message/enum and oneof of a field."""
    return (
        f.number,
        f.type,
        f.is_repeated,
        f.message_type.full_name if f.message_type else None,
        f.enum_type.full_name if f.enum_type else None,
        f.containing_oneof.name if f.containing_oneof else None,
    )


def method_key(m: Any) -> tuple:
    """Request and response types and streaming of an RPC."""
    return (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)


def dump(files: list[Any], service_name: str) -> dict[str, Any]:
    """Every message (nested ones too), enum and ``service_name`` method of ``files``."""
    messages: dict[str, dict[str, tuple]] = {}
    enums: dict[str, dict[str, int]] = {}

    def walk_enum(e: Any) -> None:
        enums[e.full_name] = {v.name: v.number for v in e.values}

    def walk(d: Any) -> None:
        messages[d.full_name] = {f.name: field_key(f) for f in d.fields}
        for nested in d.nested_types:
            walk(nested)
        for e in d.enum_types:
            walk_enum(e)

    methods: dict[str, tuple] = {}
    for file in files:
        for d in file.message_types_by_name.values():
            walk(d)
        for e in file.enum_types_by_name.values():
            walk_enum(e)
        if service_name in file.services_by_name:
            methods = {m.name: method_key(m) for m in file.services_by_name[service_name].methods}
    return {"messages": messages, "enums": enums, "methods": methods}
