"""Domain errors and the transport-neutral status codes they map to. No grpc here.

Each error class names one :class:`Code`; every binding maps a Code to its own
wire status once (gRPC in :mod:`server.grpc_binding`, HTTP in :mod:`server.rest`),
so the same bad input gets the same answer whichever protocol carried it.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Code(enum.Enum):
    """Outcome of one request. Names and meanings are gRPC's; metrics use the names."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class ServingError(Exception):
    """Base class; the message is safe to show to a client."""

    code: ClassVar[Code] = Code.INTERNAL


class InvalidInput(ServingError):
    """The request is malformed (INVALID_ARGUMENT)."""

    code = Code.INVALID_ARGUMENT


class TooLarge(InvalidInput):
    """The request asks for more than a configured limit allows (INVALID_ARGUMENT)."""


class VersionNotFound(ServingError):
    """The requested model or version does not exist (NOT_FOUND)."""

    code = Code.NOT_FOUND


class ModelNotReady(ServingError):
    """The model is not loaded yet, or the server is shutting down (UNAVAILABLE)."""

    code = Code.UNAVAILABLE


class Overloaded(ServingError):
    """The queue or the admission limit is full (RESOURCE_EXHAUSTED)."""

    code = Code.RESOURCE_EXHAUSTED


class DeadlineExpired(ServingError):
    """The caller's deadline passed, or cannot be met, before inference (DEADLINE_EXCEEDED)."""

    code = Code.DEADLINE_EXCEEDED


class Unimplemented(ServingError):
    """The method exists in the protocol but this server does not implement it (UNIMPLEMENTED)."""

    code = Code.UNIMPLEMENTED


class FailedPrecondition(ServingError):
    """The request cannot be done in the server's present mode or state (FAILED_PRECONDITION),
    e.g. loading a model through the API while the server follows the repository itself."""

    code = Code.FAILED_PRECONDITION


class LoadRefused(FailedPrecondition):
    """An explicit model load changed nothing: the repository's content for that model is
    invalid (a version that fails to load, a refused config.json). The message is for the
    caller: what is wrong, and what is still served."""


class Unauthenticated(ServingError):
    """The request needs credentials it does not carry (UNAUTHENTICATED), e.g. model control
    behind --model-control-token."""

    code = Code.UNAUTHENTICATED


class ModelLoadError(ServingError):
    """A model version is missing files, corrupt, or has the wrong signature (INTERNAL)."""


class ConfigError(ServingError):
    """A setting has an invalid value; the message names the setting (INTERNAL)."""


class RemoteError(ServingError):
    """An error raised in another process of this server (a worker, the supervisor), carried
    by its code and message: the client is told what it would have been told there."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # an instance's code, not the class's


def error_for(code: Code, message: str) -> ServingError:
    """The error another process raised, from its code and message."""
    return RemoteError(code, message)
