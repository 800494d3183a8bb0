"""Why aiohttp serves the REST API: it against uvicorn + httptools, same process, same data plane.

    python -m venv /tmp/alt && /tmp/alt/bin/pip install . "uvicorn[standard]==0.54.0"
    PYTHONPATH=. /tmp/alt/bin/python -m bench.experiments.http_stack --model-repo models

One server process runs one :class:`server.app.App` (gRPC, the batcher, aiohttp's
REST API on its loop) and, on the same event loop, a uvicorn server (httptools
parser, no uvloop: grpc.aio runs on the asyncio loop) whose ASGI app answers the
same two endpoints through the same data plane: ``GET /v2/health/ready`` (the HTTP
stack alone) and ``POST .../infer`` with one binary-tensor image. A client process
drives each stack in turn (A B A B) with keep-alive connections
(:class:`bench.loadgen.HttpConnection`); it prints requests/s, p50 and the server's
CPU per request. uvicorn is not a project dependency: install it in a throwaway venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.contract import IMAGE_SHAPE, MODEL_NAME

ASGI = Callable[..., Awaitable[None]]


def _asgi_app(plane: Any) -> ASGI:
    """The two measured endpoints as an ASGI app over the same data plane and codec.

    It counts each request in the same metrics as the aiohttp routes do; it has no
    router and no middleware (a lower bound on what a full ASGI front end would cost).
    """
    from server.errors import Code
    from server.rest import HTTP_STATUS
    from server.rest_codec import REST_INFER, parse_infer_body

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        status, headers, body = 200, [(b"content-type", b"application/json")], b""
        t0, code = time.perf_counter(), Code.OK
        try:
            if scope["path"] == "/v2/health/ready":
                plane.readiness.check()
                body = b'{"ready":true}'
            else:
                chunks = []
                while True:
                    message = await receive()
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body"):
                        break
                fields = dict(scope["headers"])
                length = fields.get(b"inference-header-content-length")
                parsed = parse_infer_body(
                    b"".join(chunks),
                    None if length is None else length.decode(),
                    model_name=MODEL_NAME,
                    model_version="",
                )
                encoded = await plane.infer(REST_INFER, parsed, None)
                body = encoded.body
                if encoded.header_length is not None:
                    headers = [
                        (b"content-type", b"application/octet-stream"),
                        (b"inference-header-content-length", str(encoded.header_length).encode()),
                    ]
        except Exception as exc:
            failure = plane.failure("bench", exc)
            code = failure.code
            status, body = (
                HTTP_STATUS[failure.code],
                json.dumps({"error": failure.message}).encode(),
            )
        plane.observe("ASGI/" + scope["path"][-5:], code, time.perf_counter() - t0)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _requests(host: str) -> dict[str, bytes]:
    from bench.payload import http_request

    ready = f"GET /v2/health/ready HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    image = np.zeros((1, *IMAGE_SHAPE), np.uint8)
    return {"ready": ready, "infer": http_request("http-binary", image, host)}


def _client(port: int, request: bytes, clients: int, seconds: float, pipe: Any) -> None:
    from bench.loadgen import HttpConnection

    async def run() -> list[float]:
        latencies: list[float] = []
        end = time.monotonic() + seconds

        async def one() -> None:
            link = HttpConnection("127.0.0.1", port)
            await link.connect()
            while (t0 := time.monotonic()) < end:
                await link.call(request, timeout=10)
                latencies.append(time.monotonic() - t0)
            link.close()

        await asyncio.gather(*(one() for _ in range(clients)))
        return latencies

    pipe.send(asyncio.run(run()))


async def _measure(port: int, request: bytes, clients: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_client, args=(port, request, clients, seconds, child))
    cpu0 = time.process_time()
    process.start()
    while not parent.poll():  # noqa: ASYNC110 (a pipe, not an asyncio object)
        await asyncio.sleep(0.05)  # the servers run on this loop meanwhile
    latencies = parent.recv()
    cpu = time.process_time() - cpu0
    process.join(5)
    return {
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 3),
        "server_cpu_ms_per_request": round(1000 * cpu / max(1, len(latencies)), 3),
    }


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    import uvicorn

    from server.app import create_app
    from server.config import Settings

    app = create_app(Settings(model_repo=args.model_repo, port=0, metrics_port=-1, http_port=0))
    await app.start()
    # uvicorn binds itself: asyncio sets TCP_NODELAY only on sockets created with
    # IPPROTO_TCP, and a bare socket.socket() handed in gets Nagle + delayed ACK (40 ms).
    config = uvicorn.Config(
        _asgi_app(app.plane),
        host="127.0.0.1",
        port=0,
        http="httptools",
        loop="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    alternative = uvicorn.Server(config)
    serving = asyncio.create_task(alternative.serve())
    while not alternative.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
        await asyncio.sleep(0.01)
    port = alternative.servers[0].sockets[0].getsockname()[1]
    ports = {"aiohttp": app.http_port, "uvicorn+httptools": port}
    rows = []
    try:
        for endpoint, request in _requests("127.0.0.1").items():
            for _ in range(args.rounds):
                for stack, port in ports.items():
                    row = {"endpoint": endpoint, "stack": stack}
                    row.update(await _measure(port, request, args.clients, args.seconds))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        alternative.should_exit = True
        await serving
        await app.stop(grace_s=0)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds per endpoint")
    args = parser.parse_args(argv)
    rows = asyncio.run(_main(args))
    print("| endpoint | stack | req/s | p50 ms | server CPU ms/req |")
    print("|---|---|---|---|---|")
    for endpoint in ("ready", "infer"):
        for stack in ("aiohttp", "uvicorn+httptools"):
            mine = [r for r in rows if (r["endpoint"], r["stack"]) == (endpoint, stack)]
            best = max(mine, key=lambda r: r["requests_per_s"])
            cpu = min(r["server_cpu_ms_per_request"] for r in mine)
            rate = f"{best['requests_per_s']:,.0f}"
            print(f"| {endpoint} | {stack} | {rate} | {best['p50_ms']} | {cpu} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
