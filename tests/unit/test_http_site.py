"""The limited HTTP site on a real socket: what its TLS gate tells the connection limiter.
The same limits against a real server process under floods are in
tests/reliability/test_rest_hostile.py."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from server.http import HttpServer
from server.http_limits import HttpLimits
from server.tls import load_tls
from tests.reliability.certs import CertificateAuthority

IO_TIMEOUT_S = 5.0
CAP = 3


class Client:
    """A TLS client driven by hand over a plain connection, so that it can stop halfway."""

    def __init__(self, ca: Path, port: int) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        self.sock = socket.create_connection(("127.0.0.1", port))  # a blocking connect:
        # the kernel completes it; the server's loop has not run, so it has not accepted it.
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def send_client_hello(self) -> None:
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        self.sock.sendall(self.outgoing.read())

    async def receive(self) -> bytes:
        if self.reader is None:  # from now on, through the loop
            self.reader, self.writer = await asyncio.open_connection(sock=self.sock)
        data = await asyncio.wait_for(self.reader.read(65536), IO_TIMEOUT_S)
        assert data, "the server closed the connection"
        return data

    async def finish_handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.send(self.outgoing.read())
                self.incoming.write(await self.receive())
        self.send(self.outgoing.read())

    def send(self, data: bytes) -> None:
        if self.writer is None:
            self.sock.sendall(data)
        else:
            self.writer.write(data)

    async def get(self, path: str) -> bytes:
        self.tls.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        self.send(self.outgoing.read())
        response = b""
        while True:
            try:
                if not (data := self.tls.read(65536)):
                    return response  # the server's close_notify
                response += data
            except ssl.SSLWantReadError:
                assert self.reader is not None
                data = await asyncio.wait_for(self.reader.read(65536), IO_TIMEOUT_S)
                if not data:
                    return response
                self.incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return response

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        else:
            self.sock.close()


def closed_by_server(sock: socket.socket, timeout_s: float = IO_TIMEOUT_S) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
async def https(tmp_path) -> AsyncIterator[tuple[HttpServer, Path]]:
    """A TLS port capped at CAP connections, and the CA its certificate is signed by."""
    authority = CertificateAuthority(tmp_path, "test-ca")
    pair = authority.issue("server", server=True)
    server = HttpServer(
        host="127.0.0.1",
        port=0,
        registry=CollectorRegistry(),
        ssl_context=load_tls(str(pair.cert), str(pair.key), "").ssl_context,
        limits=HttpLimits(max_connections=CAP, tls_handshake_timeout_s=30),
    )
    await server.start()
    try:
        yield server, authority.pair.cert
    finally:
        await server.stop()


async def fill(port: int, count: int, *, accept_each: bool) -> list[socket.socket]:
    """``count`` connections that never send a byte, in this order."""
    silent = []
    for _ in range(count):
        silent.append(socket.create_connection(("127.0.0.1", port)))
        if accept_each:
            await asyncio.sleep(0.05)  # the server accepts it before the next
    return silent


async def test_a_handshake_that_has_spoken_outlives_silent_ones_at_the_cap(https) -> None:
    """Before: at the cap, the pending handshake accepted first was closed, so an honest
    client mid-handshake lost its connection once silent connections accepted after it
    outnumbered the cap (a health probe reset during a flood of silent handshakes)."""
    server, ca = https
    honest = Client(ca, server.port)
    silent: list[socket.socket] = []
    try:
        honest.send_client_hello()
        honest.incoming.write(await honest.receive())  # the server's first flight: it read it
        silent = await fill(server.port, CAP, accept_each=True)  # the last finds the port full
        assert await asyncio.to_thread(closed_by_server, silent[0])  # the oldest silent one
        await honest.finish_handshake()
        assert (await honest.get("/metrics")).startswith(b"HTTP/1.1 200")
        assert not await asyncio.to_thread(closed_by_server, silent[1], 0.2)  # one eviction
    finally:
        honest.close()
        for sock in silent:
            sock.close()


async def test_a_client_hello_not_yet_read_counts_as_spoken(https) -> None:
    """The ClientHello is in the socket when the port fills, before the loop has read it
    (asyncio accepts a flood's connections in batches, and reads a few turns later): the
    limiter looks in the socket before it closes a silent handshake."""
    server, ca = https
    honest = Client(ca, server.port)
    silent: list[socket.socket] = []
    try:
        honest.send_client_hello()
        # Connected before the loop runs: accepted in one batch, honest first, the last at
        # the cap, and all of them before any of their bytes are read.
        silent = await fill(server.port, CAP, accept_each=False)
        await honest.finish_handshake()
        assert (await honest.get("/metrics")).startswith(b"HTTP/1.1 200")
        assert await asyncio.to_thread(closed_by_server, silent[0])
    finally:
        honest.close()
        for sock in silent:
            sock.close()
