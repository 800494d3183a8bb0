"""What the server learns about a request while handling it, for whoever reports on it.

A binding starts a :class:`RequestContext` when a request arrives (:func:`begin`); the
data plane fills it in as it goes (the model version that answered); the binding
reads it when it counts the request. A context variable carries it, so neither the
servicers in between nor the codecs pass it along: coroutines awaited by the
handler share its context, and each message of a stream gets its own.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

_CURRENT: ContextVar[RequestContext | None] = ContextVar("fashion_request", default=None)


@dataclass(slots=True)
class RequestContext:
    """One request: the model and version it reached ("" until it reaches one)."""

    model: str = ""
    version: str = ""


def begin() -> RequestContext:
    """A new context for the request being handled in this task (or stream message)."""
    context = RequestContext()
    _CURRENT.set(context)
    return context


def current() -> RequestContext | None:
    return _CURRENT.get()
