"""Hostile HTTP clients against the REST port (issues #27, #28): each attack as a function,
raw sockets only, so the bytes on the wire are exactly the attacker's.

Used by ``fashion-soak --hostile-http`` (a phase after the steady traffic), by
``python -m soak.hostile_http`` (one attack or all, with the figures of
docs/RELIABILITY.md), and by ``tests/reliability/test_rest_hostile.py``. Every attack
returns a plain dict (JSON-ready); health is measured beside it by
:mod:`soak.health_probe` in a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

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


# -- attacks -------------------------------------------------------------------


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
            "body": reply.body[:300].decode("utf-8", "replace"),
        }
        if close_wait_s:
            out["closed"] = await closed_by_server(reader, close_wait_s)
    except (Closed, TimeoutError, ConnectionError) as exc:
        out = {"status": None, "error": type(exc).__name__, "seconds": time.monotonic() - t0}
    finally:
        abort(writer)
    return out


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


# -- health, memory, descriptors beside an attack ----------------------------------


class Probe:
    """:mod:`soak.health_probe` in its own process, started and read around an attack."""

    def __init__(
        self,
        host: str,
        grpc_port: int,
        http_port: int,
        interval_s: float = 0.1,
        *,
        tls_ca: str | None = None,
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "soak.health_probe",
            "--host",
            host,
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--interval-s",
            str(interval_s),
            *(["--tls-ca", tls_ca] if tls_ca else []),
        ]
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "probing"

    def stop(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        out, _ = self.process.communicate("", timeout=30)
        report = json.loads(out.strip().splitlines()[-1])
        summary: dict[str, Any] = {"errors": report["errors"]}
        for kind, values in report["latencies_s"].items():
            summary[kind] = percentiles(values)
        return summary


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    array = np.array(values)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(array, 50)), 3),
        "p99": round(float(np.percentile(array, 99)), 3),
        "max": round(float(array.max()), 3),
    }


async def with_probe(
    probe: Probe, attack: Awaitable[dict[str, Any]], settle_s: float = 0.3
) -> dict[str, Any]:
    """Run ``attack`` with the health probe running beside it."""
    await asyncio.to_thread(probe.start)
    await asyncio.sleep(settle_s)
    try:
        result = await attack
    finally:
        health = await asyncio.to_thread(probe.stop)
    return {**result, "health": health}


def resources(pid: int) -> dict[str, float]:
    process = psutil.Process(pid)
    return {"rss_mib": round(process.memory_info().rss / MIB, 1), "fds": process.num_fds()}


# -- the phase -----------------------------------------------------------------------


ATTACKS: dict[str, Callable[[Target, argparse.Namespace], Awaitable[dict[str, Any]]]] = {}


def attack(name: str) -> Callable[[Any], Any]:
    def register(function: Any) -> Any:
        ATTACKS[name] = function
        return function

    return register


@attack("json_flood")
async def _json_flood(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    body = invalid_json_body(a.body_bytes)
    return await flood(
        target, request_bytes("POST", INFER_PATH, body), clients=2, seconds=a.seconds
    )


@attack("binary_flood")
async def _binary_flood(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    body = invalid_binary_body(a.body_bytes)
    header_length = body.index(b"}]}") + 3
    request = request_bytes(
        "POST", INFER_PATH, body, {"Inference-Header-Content-Length": str(header_length)}
    )
    return await flood(target, request, clients=4, seconds=a.seconds)


@attack("held_uploads")
async def _held_uploads(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await held_uploads(
        target,
        connections=100,
        declared=a.body_bytes,
        send=a.held_bytes or a.body_bytes - 1,
        hold_s=a.seconds,
        rounds=3,
    )


@attack("slowloris")
async def _slowloris(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await slowloris(target, connections=a.connections, seconds=a.seconds)


@attack("idle_keepalive")
async def _idle(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    async with idle_connections(target, a.connections) as stats:
        await asyncio.sleep(a.seconds)
    return stats


@attack("many_connections")
async def _many(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await many_connections(target, a.connections, a.seconds)


@attack("pending_handshakes")
async def _pending(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await pending_handshakes(target, a.connections, a.seconds)


@attack("gzip_bomb")
async def _gzip(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await compressed_body(target, gzip_bomb(a.inflated_bytes), "gzip")


@attack("huge_content_length")
async def _huge(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await huge_declared_length(target)


@attack("expect_continue")
async def _expect(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await expect_continue_too_large(target, 64 * MIB)


@attack("malformed")
async def _malformed(target: Target, a: argparse.Namespace) -> dict[str, Any]:
    return await malformed_requests(target, repeat=5)


async def run_phase(
    host: str,
    grpc_port: int,
    http_port: int,
    pid: int,
    names: Sequence[str],
    args: argparse.Namespace,
    *,
    tls_ca: str | None = None,
) -> dict[str, Any]:
    """Each named attack in turn with the health probe beside it, and the server's memory
    and descriptors before and after. ``tls_ca``: the server serves TLS with a certificate
    for 'localhost' signed by it (the attackers accept any certificate)."""
    context = None
    if tls_ca:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    target = Target(host, http_port, pid, context)
    report: dict[str, Any] = {"before": resources(pid)}
    for name in names:
        probe = Probe(host, grpc_port, http_port, tls_ca=tls_ca)
        start = resources(pid)
        result = await with_probe(probe, ATTACKS[name](target, args))
        await asyncio.sleep(1.0)
        result["resources"] = {"start": start, "end": resources(pid)}
        report[name] = result
    report["after"] = resources(pid)
    return report


def health_ok(result: dict[str, Any], p99_s: float = 1.0) -> bool:
    """No probe failed and both kinds answered with p99 under ``p99_s``."""
    health = result.get("health", {})
    return not health.get("errors") and all(
        health.get(kind, {}).get("p99", p99_s) < p99_s for kind in ("grpc", "http")
    )


# fashion-soak's phase: every attack that needs no special server (TLS, a low fd limit).
SOAK_ATTACKS = (
    "json_flood",
    "binary_flood",
    "held_uploads",
    "slowloris",
    "idle_keepalive",
    "gzip_bomb",
    "huge_content_length",
    "expect_continue",
    "malformed",
)
# After the phase: resident memory and descriptors back near where they were (the parse
# worker's pipes add a few descriptors, and its memory is its own process's).
MAX_RSS_GROWTH_MIB = 100
MAX_FD_GROWTH = 16


async def soak_phase(
    host: str, grpc_port: int, http_port: int, pid: int, seconds: float = 5.0
) -> dict[str, Any]:
    """``fashion-soak --hostile-http``: :data:`SOAK_ATTACKS` in turn, each with health p99
    < 1 s and no failed probe, then memory and descriptors back (``passed``)."""
    # Held uploads stop after 1 MiB of their 4: 300 MB through the loop instead of 1.2 GB,
    # which on two shared cores measures the attacker's CPU more than the server.
    args = argparse.Namespace(
        seconds=seconds,
        body_bytes=4 * MIB - 1024,
        held_bytes=MIB,
        connections=500,
        inflated_bytes=256 * MIB,
    )
    report = await run_phase(host, grpc_port, http_port, pid, SOAK_ATTACKS, args)
    report["rss_growth_mib"] = round(report["after"]["rss_mib"] - report["before"]["rss_mib"], 1)
    report["fd_growth"] = report["after"]["fds"] - report["before"]["fds"]
    report["passed"] = (
        all(health_ok(report[name]) for name in SOAK_ATTACKS)
        and report["rss_growth_mib"] < MAX_RSS_GROWTH_MIB
        and report["fd_growth"] <= MAX_FD_GROWTH
    )
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=10.0, help="length of each timed attack")
    p.add_argument("--body-bytes", type=int, default=4 * MIB - 1024)
    p.add_argument(
        "--held-bytes", type=int, default=0, help="held uploads send this much (0: all but 1)"
    )
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--inflated-bytes", type=int, default=1024 * MIB)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.serverproc import start_server

    p = argparse.ArgumentParser(prog="python -m soak.hostile_http", description=__doc__)
    p.add_argument("--model-repo", type=Path, required=True)
    p.add_argument("--attack", action="append", choices=sorted(ATTACKS), default=[])
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    p.add_argument(
        "--server-nofile", type=int, default=0, help="lower the server's open-file limit to this"
    )
    add_arguments(p)
    args = p.parse_args(argv)
    server = start_server(args.model_repo, args.server_arg)
    if args.server_nofile:
        psutil.Process(server.pid).rlimit(
            psutil.RLIMIT_NOFILE, (args.server_nofile, args.server_nofile)
        )
    certificates = [a.split("=", 1)[1] for a in args.server_arg if a.startswith("--tls-cert=")]
    try:
        report = asyncio.run(
            run_phase(
                "127.0.0.1",
                server.port,
                server.http_port,
                server.pid,
                args.attack or list(ATTACKS),
                args,
                tls_ca=certificates[0] if certificates else None,  # self-signed: its own CA
            )
        )
    finally:
        report_exit = server.stop()
    report["server_exit_code"] = report_exit
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
