"""Raw HTTP/1.1 on asyncio streams for the hostile clients (soak/hostile_http.py): the
requests are bytes built here, the answers parsed by hand, so what goes on the wire is
exactly what an attack says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INFER_PATH = "/v2/models/fashion/infer"
MIB = 1024 * 1024
CONNECT_TIMEOUT_S = 3.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    interim: list[int] = field(default_factory=list)  # 1xx statuses seen before it


class Closed(Exception):
    """The server closed the connection before (or instead of) answering."""


def request_bytes(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    head = {"Host": "fashion", "Content-Length": str(len(body)), **(headers or {})}
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """One response (1xx interim answers collected, then the final one)."""
    interim = []
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise Closed(str(exc)) from None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            interim.append(status)
            continue
        break
    body = b""
    try:
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Closed(str(exc)) from None
    return Reply(status, headers, body, interim)


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that crashed or gave up would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- bodies --------------------------------------------------------------------


def invalid_json_body(size: int) -> bytes:
    """A KServe v2 request of ``size`` bytes whose ``data`` is nested wrongly (one-element
    arrays): the whole body must be parsed before it can be refused, and arrays are the
    costliest JSON to parse per byte (~0.45 s for 4 MiB with the standard library here)."""
    head = b'{"inputs":[{"name":"images","shape":[1,28,28],"datatype":"UINT8","data":['
    tail = b"[0]]}]}"
    count = (size - len(head) - len(tail)) // 4
    return head + b"[0]," * count + tail


def invalid_binary_body(size: int) -> bytes:
    """JSON header + ``size`` bytes of binary tensor data that do not match the shape."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 28, 28],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 784},
                }
            ]
        }
    ).encode()
    return header + bytes(size - len(header))


def valid_binary_body(images: int = 1) -> tuple[bytes, dict[str, str]]:
    """A valid inference body with Triton's binary tensors, and the header it needs."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [images, 28, 28],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": images * 784},
                }
            ]
        }
    ).encode()
    body = header + np.zeros((images, 28, 28), np.uint8).tobytes()
    return body, {"Inference-Header-Content-Length": str(len(header))}


def valid_binary_request(images: int = 1) -> bytes:
    body, headers = valid_binary_body(images)
    return request_bytes("POST", INFER_PATH, body, headers)


def gzip_bomb(inflated: int) -> bytes:
    """A gzip stream of ``inflated`` zero bytes (~1000:1), built without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    zeros = bytes(MIB)
    parts = [compressor.compress(zeros) for _ in range(inflated // MIB)]
    return b"".join([*parts, compressor.compress(bytes(inflated % MIB)), compressor.flush()])


@dataclass(frozen=True)
class Target:
    host: str
    http_port: int
    pid: int
    ssl_context: ssl.SSLContext | None = None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection (OSError when it cannot be made within a few seconds)."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await asyncio.open_connection(
                    self.host, self.http_port, ssl=self.ssl_context, limit=4 * MIB
                )
        except TimeoutError:
            raise ConnectionRefusedError("no connection within the timeout") from None


async def one_exchange(
    target: Target, data: bytes, *, timeout_s: float = 30, close_wait_s: float = 5.0
) -> dict[str, Any]:
    """Send ``data``, read one answer, then whether the server closes the connection within
    ``close_wait_s`` (not looked at when 0)."""
    reader, writer = await target.connect()
    t0 = time.monotonic()
    try:
        writer.write(data)
        async with asyncio.timeout(timeout_s):
            reply = await read_reply(reader)
        out: dict[str, Any] = {
            "status": reply.status,
            "interim": reply.interim,
            "seconds": round(time.monotonic() - t0, 3),
            "server_header": reply.headers.get("server"),
            "content_type": reply.headers.get("content-type"),
            "request_id": reply.headers.get("x-request-id"),
            "body": reply.body[:300].decode("utf-8", "replace"),
        }
        if close_wait_s:
            out["closed"] = await closed_by_server(reader, close_wait_s)
    except (Closed, TimeoutError, ConnectionError) as exc:
        out = {"status": None, "error": type(exc).__name__, "seconds": time.monotonic() - t0}
    finally:
        abort(writer)
    return out
