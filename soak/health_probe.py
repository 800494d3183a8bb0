"""``python -m soak.health_probe``: probe a server's health the way a kubelet does, in its
own process, until stdin closes; then print the latencies as one JSON line.

Every probe opens a new connection (a kubelet keeps none): ``grpc.health.v1.Health/Check``
of the readiness service over a fresh channel, and ``GET /v2/health/ready`` over a fresh
TCP connection. A probe that fails or passes ``--timeout-s`` is recorded with that
timeout as its latency and counted in ``errors``. Being a separate process, it measures the
server, not the attacker's event loop.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

READINESS_SERVICE = "fashion.v1.PredictionService"


def channel(target: str, tls_ca: str | None) -> grpc.Channel:
    options: list[tuple[str, object]] = [("grpc.use_local_subchannel_pool", 1)]
    if tls_ca is None:
        return grpc.insecure_channel(target, options=options)
    with open(tls_ca, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(ca.read())
    options.append(("grpc.ssl_target_name_override", "localhost"))
    return grpc.secure_channel(target, credentials, options=options)


def probe_grpc(target: str, timeout_s: float, tls_ca: str | None = None) -> str | None:
    with channel(target, tls_ca) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=READINESS_SERVICE), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return f"grpc:{exc.code().name}"
    return None if reply.status == health_pb2.HealthCheckResponse.SERVING else "grpc:NOT_SERVING"


def probe_http(host: str, port: int, timeout_s: float, https: bool = False) -> str | None:
    if https:  # any certificate: the probe measures latency, not identity
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout_s, context=ssl._create_unverified_context()
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", "/v2/health/ready")
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return f"http:{type(exc).__name__}"
    finally:
        connection.close()
    return None if status == 200 else f"http:{status}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m soak.health_probe", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--interval-s", type=float, default=0.1)
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument(
        "--tls-ca",
        default=None,
        help="the server serves TLS with a certificate for "
        "'localhost' signed by this CA (gRPC checks it; the REST probe accepts any)",
    )
    args = p.parse_args(argv)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    latencies: dict[str, list[float]] = {"grpc": [], "http": []}
    errors: Counter[str] = Counter()
    target = f"{args.host}:{args.grpc_port}"
    print("probing", flush=True)
    while not stop.is_set():
        for kind in ("grpc", "http"):
            t0 = time.perf_counter()
            if kind == "grpc":
                error = probe_grpc(target, args.timeout_s, args.tls_ca)
            else:
                error = probe_http(args.host, args.http_port, args.timeout_s, bool(args.tls_ca))
            elapsed = time.perf_counter() - t0
            if error is not None:
                errors[error] += 1
                elapsed = max(elapsed, args.timeout_s)
            latencies[kind].append(round(elapsed, 4))
        stop.wait(args.interval_s)
    print(json.dumps({"latencies_s": latencies, "errors": dict(errors)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
