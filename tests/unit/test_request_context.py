"""Request ids (server.request_context): generated, taken from the transport, checked."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re

import pytest

from server.errors import InvalidInput
from server.request_context import (
    MAX_REQUEST_ID_CHARS,
    begin,
    begin_message,
    begin_stream,
    check_request_id,
    current,
    id_problem,
    new_id,
)


def in_fresh_context(test):
    """Run a test that starts requests in a context of its own: no id leaks to other tests."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return contextvars.Context().run(test, *args, **kwargs)

    return run


def test_generated_ids_are_16_hex_characters_and_differ() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


@in_fresh_context
def test_the_transports_id_is_the_requests_and_becomes_current() -> None:
    context = begin("Predict", "abc-123", "ipv4:127.0.0.1:1")
    assert (context.id, context.method, context.peer, context.refusal) == (
        "abc-123",
        "Predict",
        "ipv4:127.0.0.1:1",
        "",
    )
    assert current() is context
    context.check()  # nothing to refuse


@pytest.mark.parametrize("absent", [None, ""])
@in_fresh_context
def test_no_transport_id_means_a_generated_one(absent) -> None:
    context = begin("Predict", absent)
    assert re.fullmatch(r"[0-9a-f]{16}", context.id) and not context.refusal


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x" * (MAX_REQUEST_ID_CHARS + 1), "x-request-id has 1025 characters; at most 1024"),
        ("a\nb", "x-request-id must be printable ASCII (space to '~'); it has '\\n' at position 1"),
        ("ok\x1b[2J", "it has '\\x1b' at position 2"),
        ("café", "it has 'é' at position 3"),
    ],
)
@in_fresh_context
def test_a_bad_transport_id_is_replaced_and_refused(value, message) -> None:
    context = begin("ModelInfer", value)
    assert context.id != value and re.fullmatch(r"[0-9a-f]{16}", context.id)
    with pytest.raises(InvalidInput, match=re.escape(message)):
        context.check()


def test_protocol_ids_follow_the_same_rule() -> None:
    check_request_id("")
    check_request_id("i" * MAX_REQUEST_ID_CHARS)
    check_request_id(" ~!spaces and punctuation~ ")
    with pytest.raises(InvalidInput, match="the request id has 1025 characters"):
        check_request_id("i" * (MAX_REQUEST_ID_CHARS + 1))
    with pytest.raises(InvalidInput, match="the request id must be printable ASCII"):
        check_request_id("tab\there")
    assert id_problem("fine") == ""


async def test_stream_messages_are_numbered_after_the_stream() -> None:
    async def stream(request_id: str | None) -> list[str]:
        begin_stream(request_id)
        return [begin_message("ModelStreamInfer")[0].id for _ in range(3)]

    assert await asyncio.create_task(stream("s-1")) == ["s-1.1", "s-1.2", "s-1.3"]
    generated = await asyncio.create_task(stream(None))
    assert re.fullmatch(r"[0-9a-f]{16}\.1", generated[0])
    stream_id = generated[0][:-2]
    assert generated[1:] == [f"{stream_id}.2", f"{stream_id}.3"]
    longest = await asyncio.create_task(stream("s" * MAX_REQUEST_ID_CHARS))
    assert all(len(i) <= MAX_REQUEST_ID_CHARS and not id_problem(i) for i in longest)


async def test_a_stream_with_a_bad_id_is_marked_refused() -> None:
    async def stream() -> str:
        return begin_stream("bad\nid").refusal

    assert "x-request-id must be printable ASCII" in await asyncio.create_task(stream())


async def test_outside_a_stream_a_message_gets_its_own_id() -> None:
    async def message() -> tuple[str, object]:
        context, stream = begin_message("Predict")
        return context.id, stream

    request_id, stream = await asyncio.create_task(message())
    assert stream is None and re.fullmatch(r"[0-9a-f]{16}", request_id)
