"""Closed-loop load generator: C clients send back to back over gRPC or HTTP for a fixed time.

The clients are spread over worker processes (spawned once, reused for every point),
each with its own asyncio loop and a few channels (one TCP connection each). Every
process follows one schedule in ``time.monotonic()`` seconds, which is the same clock in
every process on Linux. Each process first gets its job, builds its requests and
connects its channels, and says so; only then does the parent fix the schedule:
``start_at`` (traffic starts) -> ``measure_from`` (warm-up over)
-> ``end_at`` (no new calls; calls in flight finish within ``timeout_s``). A call counts
when it completes inside ``[measure_from, end_at]``.

HTTP clients (the REST API) each hold one keep-alive HTTP/1.1 connection and send
pre-built requests over raw asyncio streams: the client's cost per call is a write
and a header parse, so it measures the server, not an HTTP library.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import numpy as np

from bench.payload import STREAM_APIS

START_MARGIN_S = 0.3
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Schedule:
    start_at: float
    measure_from: float
    end_at: float

    @classmethod
    def starting_now(cls, warmup_s: float, duration_s: float) -> Schedule:
        start = time.monotonic() + START_MARGIN_S
        return cls(start, start + warmup_s, start + warmup_s + duration_s)


@dataclass(frozen=True)
class Job:
    """One worker process's share of a point."""

    target: str
    api: str
    size: int
    clients: int
    connections: int
    seed: int
    timeout_s: float = CALL_TIMEOUT_S


@dataclass
class Outcome:
    """What the clients saw; latencies only for calls completed in the measured window."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    bad_responses: int = 0
    cpu_s: float = 0.0

    def merge(self, other: Outcome) -> None:
        self.latencies_s += other.latencies_s
        self.errors.update(other.errors)
        self.bad_responses += other.bad_responses
        self.cpu_s += other.cpu_s


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive shares (fewer parts if total is small)."""
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


# -- inside a worker process ----------------------------------------------------


async def _client(call: object, payloads: list[bytes], job: Job, s: Schedule, out: Outcome) -> None:
    import grpc

    from bench.payload import answered_images

    checked = False
    i = 0
    await asyncio.sleep(max(0.0, s.start_at - time.monotonic()))
    if job.api in STREAM_APIS:
        # One stream for the whole run; each "call" is one write and its one response.
        open_stream = call
        stream = open_stream(timeout=s.end_at - time.monotonic() + job.timeout_s)  # type: ignore[operator]

        # Same signature as a unary call; the stream's own deadline bounds every exchange.
        async def exchange(payload: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
            nonlocal stream
            if stream.done():  # a failed stream is replaced, never written to again
                stream = open_stream(timeout=s.end_at - time.monotonic() + job.timeout_s)  # type: ignore[operator]
            await stream.write(payload)
            response: bytes = await stream.read()
            return response

        call = exchange
    while (t0 := time.monotonic()) < s.end_at:
        payload = payloads[i % len(payloads)]
        i += 1
        try:
            response = await call(payload, timeout=job.timeout_s)  # type: ignore[operator]
        except grpc.aio.AioRpcError as exc:
            out.errors[exc.code().name] += 1
            await asyncio.sleep(0.001)  # no hot loop against a failing server
            continue
        except HttpError as exc:
            out.errors[exc.code] += 1
            await asyncio.sleep(0.001)
            continue
        t1 = time.monotonic()
        if not checked:  # parse one answer per client: the server really did the work
            checked = True
            if answered_images(job.api, response) != job.size:
                out.bad_responses += 1
        if s.measure_from <= t1 <= s.end_at:
            out.latencies_s.append(t1 - t0)
    if job.api in STREAM_APIS:
        await stream.done_writing()


class HttpError(Exception):
    """A non-200 answer (the code is the HTTP status) or a broken connection."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; ``call(request)`` -> the response body's JSON."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def connect(self) -> None:
        self._streams = await asyncio.open_connection(self.host, self.port)

    async def call(self, request: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        try:
            return await asyncio.wait_for(self._exchange(request), timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            self.close()
            raise HttpError("CONNECTION") from None

    async def _exchange(self, request: bytes) -> bytes:
        if self._streams is None:
            await self.connect()
        assert self._streams is not None
        reader, writer = self._streams
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)[1]
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(fields.get("content-length", "0")))
        if status != "200":
            raise HttpError(f"HTTP {status}")
        json_length = fields.get("inference-header-content-length")
        return body if json_length is None else body[: int(json_length)]

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _run_http_job(job: Job, conn: Connection) -> Outcome:
    from bench.payload import http_request, images

    host, _, port = job.target.rpartition(":")
    pool = images(64 * job.size, seed=job.seed)
    payloads = [
        http_request(job.api, pool[k * job.size : (k + 1) * job.size], host) for k in range(64)
    ]
    # HTTP/1.1 has one request in flight per connection: one connection per client.
    links = [HttpConnection(host, int(port)) for _ in range(job.clients)]
    out = Outcome()
    loop = asyncio.get_running_loop()
    cpu: dict[str, float] = {}
    try:
        await asyncio.wait_for(asyncio.gather(*(c.connect() for c in links)), job.timeout_s)
        conn.send("ready")
        schedule: Schedule = conn.recv()
        loop.call_at(schedule.measure_from, lambda: cpu.setdefault("from", time.process_time()))
        loop.call_at(schedule.end_at, lambda: cpu.setdefault("to", time.process_time()))
        await asyncio.gather(*(_client(c.call, payloads, job, schedule, out) for c in links))
        await asyncio.sleep(max(0.0, schedule.end_at - time.monotonic()) + 0.01)
    finally:
        for link in links:
            link.close()
    out.cpu_s = cpu.get("to", time.process_time()) - cpu.get("from", 0.0)
    return out


async def _run_job(job: Job, conn: Connection) -> Outcome:
    import grpc

    from bench.payload import HTTP_APIS

    if job.api in HTTP_APIS:
        return await _run_http_job(job, conn)

    from bench.payload import METHOD, images, request_bytes

    pool = images(64 * job.size, seed=job.seed)
    payloads = [request_bytes(job.api, pool[k * job.size : (k + 1) * job.size]) for k in range(64)]
    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    channels = [
        grpc.aio.insecure_channel(job.target, options=options)
        for _ in range(max(1, min(job.connections, job.clients)))
    ]
    calls = [
        ch.stream_stream(METHOD[job.api])
        if job.api in STREAM_APIS
        else ch.unary_unary(METHOD[job.api])
        for ch in channels
    ]
    out = Outcome()
    loop = asyncio.get_running_loop()
    cpu: dict[str, float] = {}
    try:
        await asyncio.wait_for(
            asyncio.gather(*(ch.channel_ready() for ch in channels)), job.timeout_s
        )
        conn.send("ready")
        schedule: Schedule = conn.recv()
        loop.call_at(schedule.measure_from, lambda: cpu.setdefault("from", time.process_time()))
        loop.call_at(schedule.end_at, lambda: cpu.setdefault("to", time.process_time()))
        await asyncio.gather(
            *(
                _client(calls[k % len(calls)], payloads, job, schedule, out)
                for k in range(job.clients)
            )
        )
        await asyncio.sleep(max(0.0, schedule.end_at - time.monotonic()) + 0.01)
    finally:
        for ch in channels:
            await ch.close()
    out.cpu_s = cpu.get("to", time.process_time()) - cpu.get("from", 0.0)
    return out


def _worker_main(conn: Connection) -> None:
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            conn.send(asyncio.run(_run_job(job, conn)))
        except Exception as exc:  # reported to the parent, which stops the run
            conn.send(f"error: {exc!r}")


# -- in the parent --------------------------------------------------------------


class LoadGenerator:
    """``processes`` spawned client processes, reused across points; close() ends them."""

    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("spawn")  # the parent may hold onnxruntime/grpc state
        self._workers: list[tuple[BaseProcess, Connection]] = []
        for k in range(max(1, processes)):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, args=(child,), name=f"bench-client-{k}", daemon=True
            )
            proc.start()
            child.close()
            self._workers.append((proc, parent))

    def start(
        self,
        *,
        target: str,
        api: str,
        size: int,
        concurrency: int,
        connections: int,
        warmup_s: float,
        duration_s: float,
        seed: int = 0,
        ready_timeout_s: float = 60.0,
    ) -> tuple[int, Schedule]:
        """Hand each process its clients, wait until all are connected, then fix the
        schedule. Returns how many processes take part, and the schedule."""
        shares = split(concurrency, len(self._workers))
        links = split(max(connections, len(shares)), len(shares))
        used = self._workers[: len(shares)]
        for k, (clients, (_, conn)) in enumerate(zip(shares, used, strict=True)):
            conn.send(Job(target, api, size, clients, links[k], seed + k))
        for _, conn in used:
            if not conn.poll(ready_timeout_s):
                raise TimeoutError(f"a load-generator process was not ready in {ready_timeout_s} s")
            reply = conn.recv()
            if reply != "ready":
                raise RuntimeError(f"load generator, connecting to {target}: {reply}")
        schedule = Schedule.starting_now(warmup_s, duration_s)
        for _, conn in used:
            conn.send(schedule)
        return len(shares), schedule

    def collect(self, used: int, timeout_s: float) -> Outcome:
        total = Outcome()
        for _, conn in self._workers[:used]:
            if not conn.poll(timeout_s):
                raise TimeoutError(f"a load-generator process gave no result in {timeout_s} s")
            outcome = conn.recv()
            if not isinstance(outcome, Outcome):
                raise RuntimeError(f"load generator: {outcome}")
            total.merge(outcome)
        return total

    def close(self) -> None:
        for _, conn in self._workers:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc, conn in self._workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            conn.close()
        self._workers = []

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def percentiles_ms(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    lat = np.asarray(latencies_s) * 1000.0
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return {
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "max": round(float(lat.max()), 3),
    }
