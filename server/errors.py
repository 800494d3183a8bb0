"""Domain errors. No grpc here: the servicer maps each class to one status code."""

from __future__ import annotations


class ServingError(Exception):
    """Base class; the message is safe to show to a client."""


class InvalidInput(ServingError):
    """The request is malformed (INVALID_ARGUMENT)."""


class TooLarge(InvalidInput):
    """The request asks for more than a configured limit allows (INVALID_ARGUMENT)."""


class VersionNotFound(ServingError):
    """The requested model or version does not exist (NOT_FOUND)."""


class ModelNotReady(ServingError):
    """The model is not loaded yet, or the server is shutting down (UNAVAILABLE)."""


class Overloaded(ServingError):
    """The queue or the admission limit is full (RESOURCE_EXHAUSTED)."""


class DeadlineExpired(ServingError):
    """The caller's deadline passed, or cannot be met, before inference (DEADLINE_EXCEEDED)."""


class ModelLoadError(ServingError):
    """A model version is missing files, corrupt, or has the wrong signature."""


class ConfigError(ServingError):
    """A setting has an invalid value; the message names the setting."""
