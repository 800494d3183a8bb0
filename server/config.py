"""Server settings: one typed object, from flags, ``FASHION_*`` variables and defaults.

Precedence: command-line flag > environment variable > default. Every field is
validated with a message that names both the flag and the variable, so an
operator knows where to fix it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.errors import ConfigError

ENV_PREFIX = "FASHION_"
DEVICES = ("cpu", "cuda", "auto")
VARIANTS = ("float", "int8")
LOG_LEVELS = ("debug", "info", "warning", "error")


def _setting(default: Any, help: str, **checks: Any) -> Any:
    return field(default=default, metadata={"help": help, **checks})


@dataclass(frozen=True)
class Settings:
    """Everything ``fashion-serve`` can be told.

    Field ``x_y`` = flag ``--x-y`` = variable ``FASHION_X_Y``.
    """

    model_repo: Path = _setting(  # noqa: RUF009 (Path is immutable)
        Path("models"), "model repository root (<repo>/fashion/<version>/)"
    )
    model_version: int = _setting(
        0, "serve this version and never switch (0 = the newest, following new versions)", min=0
    )
    model_variant: str = _setting(
        "float",
        "which model file of a version to serve: float (model.onnx) or int8 (the quantized "
        "variant listed in metadata.json)",
        choices=VARIANTS,
    )
    host: str = _setting("127.0.0.1", "address to bind (0.0.0.0 in containers)")
    port: int = _setting(50051, "gRPC port (0 = any free port, printed at start)", min=0, max=65535)
    metrics_port: int = _setting(
        9090, "HTTP port for /metrics (0 = any free port, -1 = off)", min=-1, max=65535
    )
    device: str = _setting(
        "cpu", "execution provider: cpu, cuda (no fallback) or auto", choices=DEVICES
    )
    max_batch_size: int = _setting(
        64, "largest batch handed to the model, in images", min=1, max=4096
    )
    max_batch_delay_ms: float = _setting(
        2.0,
        "how long a partial batch may wait for more images while another batch runs; "
        "a batch never waits when the model is idle",
        min=0.0,
        max=1000.0,
    )
    batch_concurrency: int = _setting(1, "batches that may run at the same time", min=1, max=64)
    max_queue: int = _setting(
        1024, "most images waiting for the model; beyond it RESOURCE_EXHAUSTED", min=1
    )
    max_images_per_request: int = _setting(256, "most images in one request", min=1, max=65536)
    max_message_bytes: int = _setting(
        4 * 1024 * 1024, "largest gRPC message accepted or sent, in bytes", min=1024
    )
    threads: int = _setting(
        0,
        "onnxruntime intra-op threads (0 = the CPUs this process may use, cgroup limit included)",
        min=0,
        max=256,
    )
    grace_s: float = _setting(
        10.0, "on SIGTERM, how long in-flight requests may take to finish", min=0.0, max=3600.0
    )
    max_connection_age_s: float = _setting(
        300.0,
        "close client connections after this long so clients rebalance across replicas (0 = never)",
        min=0.0,
    )
    poll_interval_s: float = _setting(
        5.0, "how often to look for a newer model version (0 = only on SIGHUP)", min=0.0
    )
    tls_cert: str = _setting("", "PEM certificate chain: serve TLS (with --tls-key)")
    tls_key: str = _setting("", "PEM private key of --tls-cert")
    tls_client_ca: str = _setting(
        "", "PEM CA bundle: require client certificates signed by it (mTLS)"
    )
    log_level: str = _setting("info", "log level", choices=LOG_LEVELS)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        if self.max_images_per_request > self.max_queue:
            raise ConfigError(
                f"--max-images-per-request ({self.max_images_per_request}) must not exceed "
                f"--max-queue ({self.max_queue}): such a request could never be queued"
            )

        self._check_tls()

    def _check_tls(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together (FASHION_TLS_CERT/KEY)")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{_names(name)}: no such file {path!r}")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0


def _names(name: str) -> str:
    return f"--{name.replace('_', '-')} / {ENV_PREFIX}{name.upper()}"


def _check(f: dataclasses.Field[Any], value: Any) -> None:
    meta = f.metadata
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{_names(f.name)} must be >= {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{_names(f.name)} must be <= {meta['max']}, got {value}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{_names(f.name)} must be one of {', '.join(meta['choices'])}, got {value!r}"
        )


def _parser_for(type_name: str) -> Callable[[str], Any]:
    return {"int": int, "float": float, "str": str, "Path": Path}[type_name]


def _convert(name: str, type_name: str, raw: str) -> Any:
    try:
        return _parser_for(type_name)(raw)
    except ValueError:
        kind = {"int": "an integer", "float": "a number"}.get(type_name, type_name)
        raise ConfigError(f"{_names(name)} must be {kind}, got {raw!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashion-serve",
        description="Serve the Fashion-MNIST ONNX model over gRPC. Every flag can also be set "
        "as a FASHION_* environment variable (flag wins).",
    )
    for f in dataclasses.fields(Settings):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            metavar=str(f.type).upper() if f.type in ("int", "float") else None,
            help=f"{f.metadata['help']} (env {ENV_PREFIX}{f.name.upper()}, default {f.default})",
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags, then ``FASHION_*`` variables, then defaults. Raises ConfigError."""
    env = os.environ if environ is None else environ
    known = {f"{ENV_PREFIX}{f.name.upper()}" for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    args = vars(build_parser().parse_args(argv))
    for f in dataclasses.fields(Settings):
        raw = args[f.name]
        if raw is None:
            raw = env.get(f"{ENV_PREFIX}{f.name.upper()}")
        if raw is not None:
            values[f.name] = _convert(f.name, str(f.type), raw)
    unknown = sorted(
        k for k in env if k.startswith(ENV_PREFIX) and k not in known and k not in _OTHER_ENV
    )
    if unknown:
        # A misspelt variable would otherwise be silently ignored.
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return Settings(**values)


# FASHION_* variables that belong to other commands (training, tests), not the server.
_OTHER_ENV = frozenset({"FASHION_MNIST_DIR"})
