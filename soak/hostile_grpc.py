"""``python -m soak.hostile_grpc``: hostile gRPC clients against a server process (issue #28).

Each attack runs for a while against a ``fashion-serve`` process while a prober opens
a new connection every 100 ms (as the kubelet does) and asks health for the readiness
service, and the server's resident memory and open file descriptors are sampled. After
the attack the clients go away and the server must give its memory and descriptors back:

* ``unread``: ModelStreamInfer streams that send requests as fast as they can (each with
  a long ``id``, echoed in the response) and never read a response;
* ``idle``: thousands of idle PredictStream calls over several connections;
* ``decode``: clients flooding Predict with 63 padded 64 KiB JPEGs per request, while an
  honest client sends one PNG per Predict with a 2 s deadline;
* ``reset``: HTTP/2 rapid reset, HEADERS then RST_STREAM at once, over raw sockets;
* ``malformed``: bytes that are no protobuf to Health/Check, Health/Watch and reflection.

Prints a JSON report (health latency, RSS, fds, what the clients saw per attack).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import multiprocessing
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from client.oip import infer_request
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from soak.report import emit

READINESS = "fashion.v1.PredictionService"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
PREDICT_STREAM = "/fashion.v1.PredictionService/PredictStream"
PREDICT = "/fashion.v1.PredictionService/Predict"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
MALFORMED = bytes.fromhex("0f00")  # field 1 with wire type 7: no such wire type
BIG_MESSAGES = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def own_connection(target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel with its own TCP connection (even to a target another channel uses)."""
    return grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1), *options]
    )


# -- what is measured while an attack runs -------------------------------------


@dataclass
class Probe:
    """Health checks on a new connection every ``interval_s``; RSS and fds of ``pid``."""

    target: str
    pid: int
    interval_s: float = 0.1
    timeout_s: float = 5.0
    latencies_s: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    peak_rss_mib: float = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        process = psutil.Process(self.pid)
        request = health_pb2.HealthCheckRequest(service=READINESS)
        while not stop.is_set():
            self.peak_rss_mib = max(self.peak_rss_mib, rss_mib(process))
            started = time.perf_counter()
            try:
                async with own_connection(self.target) as channel:
                    answer = await health_pb2_grpc.HealthStub(channel).Check(
                        request, timeout=self.timeout_s
                    )
                code = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            self.latencies_s.append(time.perf_counter() - started)
            self.codes[code] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    def report(self) -> dict[str, Any]:
        ms = np.array(self.latencies_s or [0.0]) * 1000
        return {
            "health_checks": dict(self.codes),
            "health_ms": {
                "p50": round(float(np.percentile(ms, 50)), 1),
                "p99": round(float(np.percentile(ms, 99)), 1),
                "max": round(float(ms.max()), 1),
            },
            "peak_rss_mib": round(self.peak_rss_mib, 1),
        }


def rss_mib(process: psutil.Process) -> float:
    return float(process.memory_info().rss) / 2**20


async def settle(pid: int, baseline_fds: int, timeout_s: float = 10.0) -> dict[str, float]:
    """Wait (up to ``timeout_s``) for the server's fds to return to ``baseline_fds``."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.1)):
        if process.num_fds() <= baseline_fds or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    return {"rss_mib": round(rss_mib(process), 1), "fds": process.num_fds()}


# -- the attacks ------------------------------------------------------------------


async def unread_streams(
    target: str, stop: asyncio.Event, *, streams: int = 6, id_bytes: int = 1 << 20
) -> dict[str, Any]:
    """ModelStreamInfer streams that write requests with a long ``id`` and never read."""
    request = infer_request(np.zeros((1, 28, 28), np.uint8), id="x" * id_bytes)
    data = request.SerializeToString()
    written = 0
    codes: Counter[str] = Counter()

    async def one(channel: grpc.aio.Channel) -> None:
        nonlocal written
        call = channel.stream_stream(STREAM_INFER)()  # raw bytes both ways
        try:
            while not stop.is_set():
                write = asyncio.ensure_future(call.write(data))
                done, _ = await asyncio.wait([write], timeout=0.5)
                if not done:  # blocked by flow control: the server stopped reading
                    await asyncio.wait([write, asyncio.ensure_future(stop.wait())],
                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                    if not write.done():
                        write.cancel()
                        break
                write.result()
                written += 1
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            codes[exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "ended"] += 1
        finally:
            call.cancel()

    async with own_connection(target, BIG_MESSAGES) as channel:
        await asyncio.gather(*(one(channel) for _ in range(streams)))
    return {"streams": streams, "id_bytes": id_bytes, "requests_written": written,
            "stream_errors": dict(codes)}  # fmt: skip


async def idle_streams(
    target: str, stop: asyncio.Event, *, connections: int = 20, per_connection: int = 256
) -> dict[str, Any]:
    """Hold ``connections`` x ``per_connection`` PredictStream calls that send nothing."""
    codes: Counter[str] = Counter()
    async with contextlib.AsyncExitStack() as stack:
        calls = []
        for _ in range(connections):
            channel = await stack.enter_async_context(own_connection(target))
            stub = pb_grpc.PredictionServiceStub(channel)
            calls += [stub.PredictStream() for _ in range(per_connection)]
        await stop.wait()
        for call in calls:
            if call.done():
                try:
                    await call.code()
                    codes[(await call.code()).name] += 1
                except asyncio.CancelledError:
                    codes["CANCELLED"] += 1
            else:
                codes["open"] += 1
            call.cancel()
    return {"calls": connections * per_connection, "codes": dict(codes)}


def padded_jpeg(size: int) -> bytes:
    """A valid 28x28 JPEG grown to ``size`` bytes with 0xFF fill bytes after SOI (slow)."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    base = buffer.getvalue()
    return base[:2] + b"\xff" * (size - len(base)) + base[2:]


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def decode_flood(
    target: str,
    stop: asyncio.Event,
    *,
    attackers: int = 4,
    images: int = 63,
    honest_deadline_s: float = 2.0,
) -> dict[str, Any]:
    """``attackers`` clients send ``images`` padded 64 KiB JPEGs per Predict, back to back;
    an honest client sends one PNG per Predict with a ``honest_deadline_s`` deadline."""
    slow = pb.PredictRequest(images=[pb.Image(encoded=padded_jpeg(64 * 1024))] * images)
    honest = pb.PredictRequest(images=[pb.Image(encoded=small_png())])
    attacker_codes: Counter[str] = Counter()
    honest_codes: Counter[str] = Counter()
    honest_s: list[float] = []

    async def attacker() -> None:
        async with own_connection(target, BIG_MESSAGES) as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    await stub.Predict(slow, timeout=60)
                    attacker_codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    attacker_codes[exc.code().name] += 1
                    await asyncio.sleep(0.05)

    async def client() -> None:
        await asyncio.sleep(0.5)  # the attackers are in
        async with own_connection(target) as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    await stub.Predict(honest, timeout=honest_deadline_s)
                    honest_codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    honest_codes[exc.code().name] += 1
                honest_s.append(time.perf_counter() - started)
                await asyncio.sleep(0.1)

    await asyncio.gather(client(), *(attacker() for _ in range(attackers)))
    ms = np.array(honest_s or [0.0]) * 1000
    return {
        "attackers": attackers,
        "attacker_codes": dict(attacker_codes),
        "honest_codes": dict(honest_codes),
        "honest_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "max": round(float(ms.max()), 1),
        },
    }


# HTTP/2 by hand (RFC 9113): enough to open streams and reset them.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 0x1, 0x3, 0x4, 0x6, 0x7
_END_HEADERS, _ACK = 0x4, 0x1
_CANCEL = 0x8


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    head = struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
    return head + struct.pack(">I", stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (short strings)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def request_headers(path: str, authority: str) -> bytes:
    """HPACK block of a gRPC request: POST, http, ``path``; static-table indices 3 and 6."""
    return (
        b"\x83\x86"
        + _literal(b":path", path.encode())
        + _literal(b":authority", authority.encode())
        + _literal(b"content-type", b"application/grpc")
        + _literal(b"te", b"trailers")
    )


async def rapid_reset(
    host: str, port: int, stop: asyncio.Event, *, connections: int = 4, path: str = PREDICT
) -> dict[str, Any]:
    """Each connection opens a stream (HEADERS) and resets it (RST_STREAM CANCEL) at
    once, 100 at a time, as fast as the socket takes them, until ``stop``."""
    block = request_headers(path, f"{host}:{port}")
    sent = 0
    goaways = 0
    closed = 0

    async def one() -> None:
        nonlocal sent, goaways, closed
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(_PREFACE + _frame(_SETTINGS, 0, 0))

        async def read() -> None:
            nonlocal goaways
            while True:
                header = await reader.readexactly(9)
                length = int.from_bytes(header[:3], "big")
                kind, flags = header[3], header[4]
                payload = await reader.readexactly(length)
                if kind == _SETTINGS and not flags & _ACK:
                    writer.write(_frame(_SETTINGS, _ACK, 0))
                elif kind == _PING and not flags & _ACK:
                    writer.write(_frame(_PING, _ACK, 0, payload))
                elif kind == _GOAWAY:
                    goaways += 1

        reading = asyncio.create_task(read())
        stream = 1
        try:
            while not stop.is_set() and not reading.done() and stream < 2**31 - 200:
                burst = bytearray()
                for _ in range(100):
                    burst += _frame(_HEADERS, _END_HEADERS, stream, block)
                    burst += _frame(_RST_STREAM, 0, stream, struct.pack(">I", _CANCEL))
                    stream += 2
                writer.write(bytes(burst))
                await writer.drain()
                sent += 100
        except (ConnectionError, OSError):
            pass
        finally:
            closed += 1
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
            writer.close()
            with contextlib.suppress(BaseException):
                await writer.wait_closed()

    async def keep_attacking() -> None:
        while not stop.is_set():
            await one()

    await asyncio.gather(*(keep_attacking() for _ in range(connections)))
    return {"connections": connections, "streams_reset": sent, "goaways": goaways,
            "connections_closed": closed}  # fmt: skip


def _reset_process(host: str, port: int, stop: Any, results: Any, connections: int) -> None:
    """The rapid-reset attacker's own process: its busy loop must not starve the prober."""

    async def run() -> dict[str, Any]:
        stopped = asyncio.Event()

        async def watch() -> None:
            await asyncio.to_thread(stop.wait)
            stopped.set()

        watching = asyncio.create_task(watch())
        report = await rapid_reset(host, port, stopped, connections=connections)
        await watching
        return report

    results.put(asyncio.run(run()))


async def rapid_reset_elsewhere(
    host: str, port: int, stop: asyncio.Event, *, connections: int = 4
) -> dict[str, Any]:
    """:func:`rapid_reset` in a process of its own, until ``stop``."""
    context = multiprocessing.get_context("spawn")
    stopped, results = context.Event(), context.Queue()
    process = context.Process(
        target=_reset_process, args=(host, port, stopped, results, connections), daemon=True
    )
    process.start()
    await stop.wait()
    stopped.set()
    report: dict[str, Any] = await asyncio.to_thread(results.get, True, 30)
    await asyncio.to_thread(process.join, 10)
    return report


async def malformed_calls(target: str, stop: asyncio.Event) -> dict[str, Any]:
    """Bytes that are no protobuf to health and reflection, in a loop; their status codes."""
    codes: Counter[str] = Counter()
    paths = {
        "Check": "/grpc.health.v1.Health/Check",
        "Watch": "/grpc.health.v1.Health/Watch",
        "reflection": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
    async with own_connection(target) as channel:
        while not stop.is_set():
            for name, path in paths.items():
                try:
                    if name == "Check":
                        await channel.unary_unary(path)(MALFORMED, timeout=5)
                    elif name == "Watch":
                        async for _ in channel.unary_stream(path)(MALFORMED, timeout=5):
                            pass
                    else:
                        call = channel.stream_stream(path)(timeout=5)
                        await call.write(MALFORMED)
                        await call.done_writing()
                        async for _ in call:
                            pass
                    codes[f"{name}:OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[f"{name}:{exc.code().name}"] += 1
            await asyncio.sleep(0.01)
    return {"codes": dict(codes)}


# -- the phase ----------------------------------------------------------------------

Attack = Callable[[str, asyncio.Event], Awaitable[dict[str, Any]]]


def attacks(target: str) -> dict[str, Attack]:
    host, _, port = target.rpartition(":")
    return {
        "unread": unread_streams,
        "idle": idle_streams,
        "decode": decode_flood,
        "reset": lambda _, stop: rapid_reset_elsewhere(host, int(port), stop),
        "malformed": malformed_calls,
    }


async def attack(target: str, pid: int, run: Attack, duration_s: float) -> dict[str, Any]:
    """``run`` for ``duration_s`` with the probe running; then the server must recover."""
    process = psutil.Process(pid)
    before = {"rss_mib": round(rss_mib(process), 1), "fds": process.num_fds()}
    cpu = process.cpu_times()
    stop = asyncio.Event()
    probe = Probe(target, pid)
    probing = asyncio.create_task(probe.run(stop))
    running = asyncio.create_task(run(target, stop))
    await asyncio.sleep(duration_s)
    stop.set()
    try:
        clients = await asyncio.wait_for(running, 30)
    except TimeoutError:
        clients = {"error": "the attack did not end within 30 s of being stopped"}
    await probing
    spent = process.cpu_times()
    during = probe.report()
    during["server_cpu_s"] = round(spent.user + spent.system - cpu.user - cpu.system, 1)
    return {"before": before, "during": during, "clients": clients,
            "after": await settle(pid, before["fds"])}  # fmt: skip


def passed(report: dict[str, Any], *, rss_budget_mib: float, health_p99_ms: float) -> bool:
    """Health stayed SERVING under ``health_p99_ms`` (p99), memory under budget and given back."""
    during, before, after = report["during"], report["before"], report["after"]
    return (
        set(during["health_checks"]) == {"SERVING"}
        and during["health_ms"]["p99"] < health_p99_ms
        and during["peak_rss_mib"] < rss_budget_mib
        and after["fds"] <= before["fds"] + 2
        and after["rss_mib"] < before["rss_mib"] + 0.25 * (rss_budget_mib - before["rss_mib"])
    )


async def run_all(
    target: str, pid: int, names: Sequence[str], duration_s: float, **limits: float
) -> dict[str, Any]:
    reports: dict[str, Any] = {}
    for name in names:
        reports[name] = await attack(target, pid, attacks(target)[name], duration_s)
        reports[name]["passed"] = passed(reports[name], **limits)
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    from bench.serverproc import start_server

    p = argparse.ArgumentParser(prog="python -m soak.hostile_grpc", description=__doc__)
    p.add_argument("--model-repo", type=Path, required=True)
    p.add_argument("--attack", action="append", choices=list(attacks("h:1")), default=[])
    p.add_argument("--duration-s", type=float, default=10.0, help="per attack")
    p.add_argument("--rss-budget-mib", type=float, default=768.0)
    p.add_argument("--health-p99-ms", type=float, default=1000.0)
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    server = start_server(args.model_repo, ["--http-port", "-1", *args.server_arg])
    try:
        report = asyncio.run(
            run_all(
                server.target,
                server.pid,
                args.attack or list(attacks("h:1")),
                args.duration_s,
                rss_budget_mib=args.rss_budget_mib,
                health_p99_ms=args.health_p99_ms,
            )
        )
    finally:
        report_exit = server.stop()
    report["server_exit_code"] = report_exit
    emit(report, args.out)
    ok = all(r["passed"] for k, r in report.items() if isinstance(r, dict)) and report_exit == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
