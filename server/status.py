"""The ONE table from domain errors to gRPC status codes, and the RPC wrapper that applies it.

Both APIs (``fashion.v1`` and the Open Inference Protocol) go through
:func:`rpc`, so every method counts requests by code, times itself and answers
errors the same way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server.errors import (
    ConfigError,
    DeadlineExpired,
    InvalidInput,
    ModelLoadError,
    ModelNotReady,
    Overloaded,
    ServingError,
    VersionNotFound,
)
from server.metrics import Metrics

logger = logging.getLogger(__name__)

STATUS_FOR: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    VersionNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelLoadError: grpc.StatusCode.INTERNAL,
    ConfigError: grpc.StatusCode.INTERNAL,
}
GENERIC_INTERNAL = "internal error while handling the request; it has been logged"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, client-safe message). Unknown exceptions never leak their text."""
    for cls in type(exc).__mro__:
        code = STATUS_FOR.get(cls)
        if code is not None:
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, GENERIC_INTERNAL


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def rpc(method: str) -> Callable[[Handler], Handler]:
    """Wrap a servicer coroutine ``(self, request, context)``: metrics + error mapping."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            metrics: Metrics = self.metrics
            t0 = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await handler(self, request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except ServingError as exc:
                code, message = status_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    logger.error("%s failed: %s", method, exc)
                await context.abort(code, message)
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                code = grpc.StatusCode.INTERNAL
                logger.exception("%s failed with an unexpected error", method)
                await context.abort(code, GENERIC_INTERNAL)
            finally:
                metrics.observe_rpc(method, code.name, time.perf_counter() - t0)

        return wrapper  # type: ignore[return-value]

    return decorate
