"""Hostile HTTP clients against the REST port (issues #27, #28): each attack a function
on raw sockets (soak/http_wire.py) that returns a plain dict (JSON-ready).

Run with a health probe beside each by :mod:`soak.hostile_phase` (``python -m
soak.hostile_phase``, and ``fashion-soak --hostile-http``), and one by one by
``tests/reliability/test_rest_hostile.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import psutil

from soak.http_wire import (
    CONNECT_TIMEOUT_S,
    INFER_PATH,
    MIB,
    Closed,
    Target,
    abort,
    one_exchange,
    read_reply,
    request_bytes,
)


async def flood(target: Target, request: bytes, *, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` keep-alive connections send ``request`` back to back for ``seconds``."""
    statuses: Counter[str] = Counter()
    end = time.monotonic() + seconds

    async def client() -> None:
        writer = None
        while time.monotonic() < end:
            try:
                if writer is None:
                    reader, writer = await target.connect()
                writer.write(request)
                reply = await read_reply(reader)
                statuses[str(reply.status)] += 1
                if reply.headers.get("connection", "").lower() == "close":
                    writer.close()
                    writer = None
            except (Closed, ConnectionError):
                statuses["closed"] += 1
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"clients": clients, "seconds": seconds, "statuses": dict(statuses)}


async def held_uploads(
    target: Target,
    *,
    connections: int,
    declared: int,
    send: int,
    hold_s: float,
    rounds: int = 1,
) -> dict[str, Any]:
    """``connections`` POSTs that declare ``declared`` bytes, send ``send`` of them, hold for
    ``hold_s`` (or until the server has answered or closed every one), then abort with a
    reset; ``rounds`` times. Reports the answers and the server's resident memory."""
    process = psutil.Process(target.pid)
    rss_before = process.memory_info().rss / MIB
    head = request_bytes("POST", INFER_PATH, headers={"Content-Length": str(declared)})
    head = head.replace(b"Content-Length: 0\r\n", b"", 1)
    chunk = bytes(min(send, 64 * 1024))
    outcome: Counter[str] = Counter()
    peaks, after = [], []

    async def upload(writers: list[asyncio.StreamWriter], end: float) -> None:
        try:
            reader, writer = await target.connect()
        except OSError:
            outcome["connect_failed"] += 1
            return
        writers.append(writer)
        try:
            writer.write(head)
            left = send
            while left > 0:
                writer.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
                await writer.drain()
            async with asyncio.timeout(max(0.0, end - time.monotonic())):
                reply = await read_reply(reader)
            outcome[str(reply.status)] += 1
        except TimeoutError:
            outcome["still_open"] += 1
        except (Closed, ConnectionError):
            outcome["closed_by_server"] += 1

    for _ in range(rounds):
        writers: list[asyncio.StreamWriter] = []
        end = time.monotonic() + hold_s
        uploads = asyncio.gather(*(upload(writers, end) for _ in range(connections)))
        peak = 0.0
        while not uploads.done():
            peak = max(peak, process.memory_info().rss / MIB)
            await asyncio.wait([uploads], timeout=0.1)
        await uploads
        for writer in writers:
            abort(writer)
        await asyncio.sleep(0.5)
        peaks.append(round(peak, 1))
        after.append(round(process.memory_info().rss / MIB, 1))
    return {
        "connections": connections,
        "declared_bytes": declared,
        "sent_bytes": send,
        "rounds": rounds,
        "outcome": dict(outcome),
        "rss_mib": {"before": round(rss_before, 1), "peak_per_round": peaks, "after_round": after},
    }


async def slowloris(
    target: Target, *, connections: int, seconds: float, byte_every_s: float = 1.0
) -> dict[str, Any]:
    """``connections`` that send a request line and then one header byte every
    ``byte_every_s``; how many the server closed within ``seconds``."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    refused = 0
    for _ in range(connections):
        try:
            opened.append(await target.connect())
        except OSError:
            refused += 1
    started = time.monotonic()
    closed_at: dict[int, float] = {}

    async def dribble(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-a: ")
            while time.monotonic() - started < seconds:
                if reader.at_eof():
                    break
                writer.write(b"a")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(byte_every_s):
                        if not await reader.read(4096):
                            break
        except ConnectionError:
            pass
        if reader.at_eof() or writer.is_closing() or time.monotonic() - started < seconds:
            closed_at[i] = time.monotonic() - started

    await asyncio.gather(*(dribble(i, r, w) for i, (r, w) in enumerate(opened)))
    for _, writer in opened:
        abort(writer)
    times = sorted(closed_at.values())
    return {
        "connections": connections,
        "refused_at_connect": refused,
        "closed_by_server": len(times),
        "closed_after_s": {"min": times[0], "max": times[-1]} if times else None,
        "seconds": seconds,
    }


async def many_connections(target: Target, count: int, hold_s: float) -> dict[str, Any]:
    """``count`` TCP connections that send nothing, held ``hold_s``: the server's descriptors
    at the peak, and how many connections it closed."""
    process = psutil.Process(target.pid)
    opened = []
    refused = 0
    peak_fds = process.num_fds()
    for _ in range(count):
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                opened.append(await asyncio.open_connection(target.host, target.http_port))
        except (OSError, TimeoutError):
            refused += 1
    t_end = time.monotonic() + hold_s
    while time.monotonic() < t_end:
        peak_fds = max(peak_fds, process.num_fds())
        await asyncio.sleep(0.2)
    closed = sum(r.at_eof() for r, _ in opened)
    for _, writer in opened:
        abort(writer)
    return {
        "count": count,
        "opened": len(opened),
        "refused_at_connect": refused,
        "closed_by_server": closed,
        "server_fds_peak": peak_fds,
    }


@contextlib.asynccontextmanager
async def idle_connections(target: Target, count: int) -> AsyncIterator[dict[str, Any]]:
    """``count`` connections that made one request (keep-alive) and then sit idle."""
    opened = []
    stats: dict[str, Any] = {"count": count, "opened": 0, "refused": 0}
    request = request_bytes("GET", "/v2/health/live")
    for _ in range(count):
        try:
            reader, writer = await target.connect()
            writer.write(request)
            await read_reply(reader)
            opened.append((reader, writer))
        except (OSError, Closed):
            stats["refused"] += 1
    stats["opened"] = len(opened)
    try:
        yield stats
    finally:
        stats["closed_by_server"] = sum(r.at_eof() for r, _ in opened)
        for _, writer in opened:
            abort(writer)


async def huge_declared_length(target: Target) -> dict[str, Any]:
    """Content-Length 10^12 and a few bytes: refused at once, and the connection closed."""
    head = request_bytes("POST", INFER_PATH, headers={"Content-Length": str(10**12)})
    return await one_exchange(target, head.replace(b"Content-Length: 0\r\n", b"", 1) + b"{")


async def expect_continue_too_large(target: Target, declared: int) -> dict[str, Any]:
    """``Expect: 100-continue`` with a body over the limit: no 100 before the refusal."""
    head = request_bytes(
        "POST", INFER_PATH, headers={"Content-Length": str(declared), "Expect": "100-continue"}
    )
    return await one_exchange(target, head.replace(b"Content-Length: 0\r\n", b"", 1))


async def compressed_body(
    target: Target, body: bytes, encoding: str, close_wait_s: float = 5.0
) -> dict[str, Any]:
    return await one_exchange(
        target,
        request_bytes("POST", INFER_PATH, body, {"Content-Encoding": encoding}),
        close_wait_s=close_wait_s,
    )


MALFORMED = (
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello on plain HTTP
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v2/models/fashion/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"POST /v2/models/fashion/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n",
)


async def malformed_requests(target: Target, repeat: int = 20) -> dict[str, Any]:
    """Each malformed request ``repeat`` times: statuses and what one answer looks like."""
    statuses: Counter[str] = Counter()
    samples = []
    for data in MALFORMED:
        for i in range(repeat):
            out = await one_exchange(target, data, timeout_s=10, close_wait_s=0)
            statuses[str(out["status"])] += 1
            if i == 0:
                samples.append({k: out.get(k) for k in ("status", "body", "server_header")})
    return {"requests": repeat * len(MALFORMED), "statuses": dict(statuses), "samples": samples}


async def pending_handshakes(target: Target, count: int, hold_s: float) -> dict[str, Any]:
    """``count`` TCP connections to an HTTPS port that never send a ClientHello."""
    process = psutil.Process(target.pid)
    rss_before = process.memory_info().rss / MIB
    opened = []
    for _ in range(count):
        try:  # plain TCP: no handshake
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                opened.append(await asyncio.open_connection(target.host, target.http_port))
        except (OSError, TimeoutError):
            break
    await asyncio.sleep(0.5)
    peak = process.memory_info().rss / MIB
    closed = 0
    t_end = time.monotonic() + hold_s
    while time.monotonic() < t_end:
        closed = sum(r.at_eof() for r, _ in opened)
        if closed == len(opened):
            break
        await asyncio.sleep(0.2)
        peak = max(peak, process.memory_info().rss / MIB)
    for _, writer in opened:
        abort(writer)
    return {
        "opened": len(opened),
        "closed_by_server": closed,
        "rss_mib": {"before": round(rss_before, 1), "peak": round(peak, 1)},
    }
