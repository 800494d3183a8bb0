"""Start and stop the ready-made servers on loopback, each serving the FP32 model under our
model name (:data:`server.contract.MODEL_NAME`).

Triton and MLServer take fixed ports (neither has an ephemeral-port mode that reports back),
so they get ``base_port`` + offsets; a port in use fails the start loudly. Readiness is the
Open Inference Protocol's ``ModelReady`` over gRPC, polled until true. ``stop()`` sends
SIGTERM to the main process, then SIGKILLs by PID any descendant still alive (Triton's
``tritonserver`` and Python stubs, MLServer's inference workers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.peers.venvs import MLSERVER, PYTRITON, PeerEnv
from bench.serverproc import descendants, terminate
from server.contract import MODEL_NAME

HERE = Path(__file__).resolve().parent


@dataclass
class PeerProcess:
    name: str
    process: subprocess.Popen[bytes]
    grpc_port: int
    cold_start_s: float
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stop(self, timeout_s: float = 30.0) -> int:
        family = descendants(self.pid)
        terminate(self.process, timeout_s)
        for pid in family:  # whatever the main process left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        return self.process.returncode


def model_ready(target: str, timeout_s: float = 1.0) -> bool:
    import grpc

    from server._proto.inference import grpc_predict_v2_pb2 as oip

    with grpc.insecure_channel(target) as channel:
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelReady",
            request_serializer=oip.ModelReadyRequest.SerializeToString,
            response_deserializer=oip.ModelReadyResponse.FromString,
        )
        try:
            return bool(ready(oip.ModelReadyRequest(name=MODEL_NAME), timeout=timeout_s).ready)
        except grpc.RpcError:
            return False


def _start(
    name: str, command: list[str], grpc_port: int, log_path: Path, env: dict[str, str], cwd: Path
) -> PeerProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    t0 = time.monotonic()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    peer = PeerProcess(name, process, grpc_port, 0.0, log)
    deadline = t0 + 180.0
    while not model_ready(peer.target):
        if process.poll() is not None or time.monotonic() > deadline:
            peer.stop()
            code = process.returncode
            raise RuntimeError(f"{name} did not become ready (exit {code}): see {log_path}")
        time.sleep(0.2)  # polling the server's own readiness RPC, not guessing a delay
    peer.cold_start_s = time.monotonic() - t0
    return peer


def _env(peer: PeerEnv) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{peer.directory / 'bin'}:{env.get('PATH', '')}"
    return env


def start_pytriton(model: Path, base_port: int, work: Path, threads: int) -> PeerProcess:
    env = _env(PYTRITON)
    # Triton's Python backend stub links libpython3.11.so.1.0: without this it can load the
    # system's (Debian 3.11.2) under this interpreter's stdlib (3.11.7) and fail in
    # multiprocessing ("'_thread.RLock' object has no attribute '_recursion_count'").
    libdir = subprocess.run(
        [str(PYTRITON.python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    command = [
        str(PYTRITON.python),
        str(HERE / "pytriton_serve.py"),
        str(model),
        "--model-name",
        MODEL_NAME,
        "--grpc-port",
        str(base_port + 1),
        "--http-port",
        str(base_port),
        "--metrics-port",
        str(base_port + 2),
        "--threads",
        str(threads),
    ]
    return _start("pytriton", command, base_port + 1, work / "pytriton.log", env, work)


def start_mlserver(model: Path, base_port: int, work: Path, threads: int) -> PeerProcess:
    folder = work / "mlserver"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "mlserver_runtime.py", folder / "fashion_runtime.py")
    settings = {
        "host": "127.0.0.1",
        "http_port": base_port + 80,
        "grpc_port": base_port + 81,
        "metrics_port": base_port + 82,
    }
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "fashion_runtime.FashionOnnx",
        # Adaptive batching: up to 64 images, waiting at most 1 ms for more.
        "max_batch_size": 64,
        "max_batch_time": 0.001,
        "parameters": {"uri": str(model.resolve()), "extra": {"threads": threads}},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    command = [str(MLSERVER.directory / "bin" / "mlserver"), "start", str(folder)]
    log = work / "mlserver.log"
    return _start("mlserver", command, base_port + 81, log, _env(MLSERVER), folder)
