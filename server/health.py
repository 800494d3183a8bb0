"""grpc.health.v1 as grpcio-health-checking serves it, but Watch streams end at shutdown.

The stock ``Watch`` loops until the client leaves. At shutdown it sends NOT_SERVING and
then stays open, and ``server.stop(--grace-s)`` waits for every open call: one idle
watcher (gRPC client-side health checking, a mesh's checker) held each shutdown for the
whole grace before it was cancelled. Here a watcher gets NOT_SERVING, then UNAVAILABLE
(retryable, as every other call refused while draining), so the server stops as soon as
its real work is done. Reads the servicer's private state: grpcio-health-checking is
pinned in pyproject.toml.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

SHUTTING_DOWN = "the server is shutting down; retry on another replica"


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        service = request.service
        condition = self._server_watchers[service]
        self._watcher_count_by_service[service] += 1
        last: Any = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(
                        service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    )
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last = status
                    if self._gracefully_shutting_down:
                        break
                    await condition.wait()
        finally:
            self._watcher_count_by_service[service] -= 1
            if self._watcher_count_by_service[service] == 0:
                del self._server_watchers[service]
                del self._watcher_count_by_service[service]
        await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every known service, then wake every watcher (those of an
        unknown service too, which no status change would wake) so each stream ends."""
        await super().enter_graceful_shutdown()
        for condition in list(self._server_watchers.values()):
            async with condition:
                condition.notify_all()
