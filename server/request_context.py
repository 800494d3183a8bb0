"""What the server learns about a request while handling it, for whoever reports on it.

A binding starts a :class:`RequestContext` when a request arrives
(:meth:`server.dataplane.DataPlane.begin`), with the id its transport carried
(``x-request-id``: gRPC metadata or an HTTP header) or a generated one; the data
plane fills it in as it goes (the request's own id when the protocol has one, the
model version that answered, its images and batch); the data plane reads it when
the request is counted, logged and traced (:meth:`DataPlane.observe`); the binding
writes its id back to the client. A context variable carries it, so neither the
servicers in between nor the codecs pass it along: coroutines awaited by the
handler share its context, and each message of a stream gets its own. Log lines
written while it is current carry its id (:mod:`server.logs`).

Ids come from clients, so they are checked before they reach a log line or a
header: at most :data:`MAX_REQUEST_ID_CHARS` printable ASCII characters.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from server.errors import InvalidInput

# The transport's request id, in and out (gRPC metadata keys are lower case; HTTP
# header names are case-insensitive).
REQUEST_ID_HEADER = "x-request-id"
# An id is echoed in the response and written in log lines: a 4 MB id doubled what a
# stream held (issue #28). Longer ids are refused; a UUID is 36 characters.
MAX_REQUEST_ID_CHARS = 1024

_CURRENT: ContextVar[RequestContext | None] = ContextVar("fashion_request", default=None)
# The stream a message arrived on (set by the binding for the stream's handler).
_STREAM: ContextVar[StreamContext | None] = ContextVar("fashion_stream", default=None)


@dataclass(slots=True, eq=False)
class RequestContext:
    """One request: its id, and what it reached ("" / 0 until it reaches it)."""

    id: str
    method: str = ""
    peer: str = ""
    model: str = ""
    version: str = ""
    images: int = 0
    batch: int = 0  # the batch its images were computed in (server.batcher)
    refusal: str = ""  # why the id its transport carried was refused ("" = it was not)
    span: Any = None  # its trace span (server.tracing), None when tracing is off

    def check(self) -> None:
        """Raise InvalidInput when the transport's id was refused (the binding calls it
        where a refusal is classified and counted)."""
        if self.refusal:
            raise InvalidInput(self.refusal)


@dataclass(slots=True, eq=False)
class StreamContext:
    """A stream: its id, the trace context it carried, and how many messages it had."""

    id: str
    carrier: Any = None  # its transport's headers, read only when tracing is on
    refusal: str = ""  # why the id its transport carried was refused ("" = it was not)
    messages: int = 0


def new_id() -> str:
    """16 random hex characters (64 bits): short, and not guessable from other ids."""
    return os.urandom(8).hex()


def id_problem(value: str, source: str = "the request id") -> str:
    """Why ``value`` cannot be a request id ("" when it can)."""
    if len(value) > MAX_REQUEST_ID_CHARS:
        return (
            f"{source} has {len(value)} characters; at most {MAX_REQUEST_ID_CHARS} "
            "(it is echoed in the response)"
        )
    if value.isascii() and value.isprintable():
        return ""
    position, character = next(
        (i, c) for i, c in enumerate(value) if not (c.isascii() and c.isprintable())
    )
    return (
        f"{source} must be printable ASCII (space to '~'); it has {character!r} at "
        f"position {position}"
    )


def answer_id(sent: str | None) -> str:
    """The id for a REST answer given before a request begins (server/rest.py): the
    client's own when it can be one, else a new one.
    Nothing is refused here: the request is refused anyway, for another reason."""
    return sent if sent and not id_problem(sent) else new_id()


def check_request_id(value: str) -> None:
    """An Open Inference Protocol request's own ``id``: refused (InvalidInput) when it cannot
    be one (too long, or not printable ASCII)."""
    problem = id_problem(value)
    if problem:
        raise InvalidInput(problem)


def begin(method: str, request_id: str | None = None, peer: str = "") -> RequestContext:
    """A new context for the request being handled in this task (or stream message).

    ``request_id``: the transport's (None or "": none, one is generated). One that cannot
    be an id gets a generated id too, and :meth:`RequestContext.check` refuses it.
    """
    if not request_id:
        context = RequestContext(new_id(), method, peer)
    else:
        problem = id_problem(request_id, REQUEST_ID_HEADER)
        if problem:
            context = RequestContext(new_id(), method, peer, refusal=problem)
        else:
            context = RequestContext(request_id, method, peer)
    _CURRENT.set(context)
    return context


def begin_message(method: str) -> tuple[RequestContext, StreamContext | None]:
    """A context for the next message of the current stream: its id is the stream's id and
    the message's number (``ID.1``, ``ID.2``, ...), or a fresh one outside a stream."""
    stream = _STREAM.get()
    if stream is None:
        return begin(method), None
    stream.messages += 1
    return begin(method, f"{stream.id[: MAX_REQUEST_ID_CHARS - 12]}.{stream.messages}"), stream


def begin_stream(request_id: str | None, carrier: Any = None) -> StreamContext:
    """The stream being handled in this task (its messages: :func:`begin_message`).

    ``request_id`` as for :func:`begin`; one that cannot be an id sets
    :attr:`StreamContext.refusal` (the binding refuses the stream whole).
    """
    problem = id_problem(request_id, REQUEST_ID_HEADER) if request_id else ""
    stream = StreamContext(request_id if request_id and not problem else new_id(), carrier, problem)
    _STREAM.set(stream)
    return stream


def activate(context: RequestContext) -> None:
    """Make ``context`` current in this task (a stream's writer, about its messages in turn)."""
    _CURRENT.set(context)


def current() -> RequestContext | None:
    return _CURRENT.get()
