"""The supervisor <-> worker control channel: JSON messages, one per line, over a socket pair.

A message is a request (``{"id": n, "op": ...}``, answered by ``{"re": n, ...}`` or
``{"re": n, "error": {"code", "message"}}``) or a notice (``{"op": ...}``, no answer).
Either end may send either, at any time; requests are handled concurrently. A
ServingError raised by a handler travels as its code and message and is raised again,
as the same kind of error, by the requester — so a refusal in a worker reaches the
client of another worker with its own status and words.

No grpc or onnxruntime here: the supervisor imports this before it spawns workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from server.errors import Code, ServingError, error_for

logger = logging.getLogger(__name__)

# Set by the supervisor for each worker it starts (not settings: no FASHION_ prefix).
FD_VARIABLE = "_FASHION_WORKER_FD"  # the worker's end of the socket pair
INDEX_VARIABLE = "_FASHION_WORKER_INDEX"
PORTS_VARIABLE = "_FASHION_WORKER_PORTS"  # "GRPC,HTTP" as the supervisor bound them
# Metrics expositions travel on the channel: lines can be long.
MAX_LINE_BYTES = 64 * 1024 * 1024

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message | None]]


class ChannelClosed(ConnectionError):
    """The other end went away (it exited, or closed the channel)."""


class Channel:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    @classmethod
    async def over_socket(cls, sock: Any, handler: Handler) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE_BYTES)
        return cls(reader, writer, handler)

    async def request(self, op: str, timeout_s: float | None = None, **fields: Any) -> Message:
        """Send a request and wait for its answer; a remote ServingError is raised here."""
        if self.closed.is_set():
            raise ChannelClosed("the control channel is closed")
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            await self._send({"id": ident, "op": op, **fields})
            async with asyncio.timeout(timeout_s):
                reply = await future
        finally:
            self._pending.pop(ident, None)
        error = reply.get("error")
        if error is not None:
            raise error_for(Code(error["code"]), error["message"])
        return reply

    async def notify(self, op: str, **fields: Any) -> None:
        if not self.closed.is_set():
            with contextlib.suppress(ConnectionError):
                await self._send({"op": op, **fields})

    async def _send(self, message: Message) -> None:
        try:
            self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._close()
            raise ChannelClosed(f"the control channel is closed ({exc})") from None

    async def serve(self) -> None:
        """Read until the other end closes; then every pending request fails ChannelClosed."""
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if "re" in message:
                    future = self._pending.get(message["re"])
                    if future is not None and not future.done():
                        future.set_result(message)
                    continue
                task = asyncio.create_task(self._handle(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except ConnectionResetError:
            # The other end closed with a message of ours unread: it exited (a worker that
            # drained and stopped while told something), which EOF says too; not broken.
            logger.debug("control channel closed by the other end (reset)")
        except (ConnectionError, ValueError) as exc:
            logger.error("control channel broken: %s", exc)
        finally:
            self._close()

    async def _handle(self, message: Message) -> None:
        ident = message.get("id")
        try:
            reply = await self._handler(message) or {}
        except ServingError as exc:
            reply = {"error": {"code": exc.code.value, "message": str(exc)}}
        except Exception:
            logger.exception("control request %r failed", message.get("op"))
            reply = {"error": {"code": Code.INTERNAL.value, "message": "internal error"}}
        if ident is not None:
            with contextlib.suppress(ChannelClosed):
                await self._send({"re": ident, **reply})

    def _close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed("the other end of the channel went away"))
        with contextlib.suppress(Exception):
            self._writer.close()

    async def close(self) -> None:
        self._close()
        for task in list(self._tasks):
            task.cancel()
