"""Server settings: one typed object, from flags, ``FASHION_*`` variables and defaults.

Precedence: command-line flag > environment variable > default. Every field is
validated (numbers finite and in range, files readable and well-formed) with a
message that names both the flag and the variable, so an operator knows where to
fix it.

The environment is shared with things we do not own: Kubernetes injects
service-link variables (``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_PORT=tcp://…``)
for every Service in the namespace, and a Service whose name starts with
``fashion`` produces ``FASHION_*`` names. Those are ignored; a name close to a
real setting is refused with a suggestion (a typo must not be silently
ignored); any other unknown ``FASHION_*`` name is reported once as a warning.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server import tracing
from server.cgroup import available_cpus
from server.contract import is_model_name
from server.env_vars import BadValue, closest_setting, is_link_value, is_service_link, parse_value
from server.errors import ConfigError
from server.logs import FORMATS as LOG_FORMATS
from server.tls import TlsMaterial, load_tls

logger = logging.getLogger(__name__)

ENV_PREFIX = "FASHION_"
DEVICES = ("cpu", "cuda", "auto")
MODEL_CONTROL_MODES = ("poll", "explicit")
POLL, EXPLICIT = MODEL_CONTROL_MODES
MAX_WORKERS = 256
VARIANTS = ("float", "int8")
LOG_LEVELS = ("debug", "info", "warning", "error")
# gRPC core keeps these in C ints: milliseconds for connection ages, bytes for messages.
INT32_MAX = 2**31 - 1
MAX_CONNECTION_AGE_S = INT32_MAX // 1000  # ~24.8 days


def _setting(default: Any, help: str, **checks: Any) -> Any:
    return field(default=default, metadata={"help": help, **checks})


@dataclass(frozen=True)
class Settings:
    """Everything ``fashion-serve`` can be told.

    Field ``x_y`` = flag ``--x-y`` = variable ``FASHION_X_Y``.
    """

    model_repo: Path = _setting(  # noqa: RUF009 (Path is immutable)
        Path("models"),
        "model repository root: <repo>/<model>/<version>/, each model with an optional "
        "<repo>/<model>/config.json (version policy, labels)",
    )
    model_control_mode: str = _setting(
        "poll",
        "poll: serve every model of the repository and follow it (new models, versions and "
        "config.json changes, every --poll-interval-s and on SIGHUP); explicit: serve the "
        "models of --load-model, then only what the API loads and unloads (Triton's "
        "RepositoryModelLoad / RepositoryModelUnload, POST /v2/repository/models/NAME/load)",
        choices=MODEL_CONTROL_MODES,
    )
    load_model: str = _setting(
        "",
        "explicit mode: the models to load at start-up, comma-separated, or * for every "
        "model in the repository (none: start with no model, ready at once)",
    )
    default_model: str = _setting(
        "fashion",
        "the model a Predict or GetModelInfo request gets when it names none",
    )
    model_control_token: str = _setting(
        "",
        "explicit mode: model load/unload requests must carry this token (gRPC metadata or "
        "HTTP header 'authorization: Bearer TOKEN'); empty: anyone who reaches the port may "
        "load and unload models (a warning is logged). Prefer the environment variable to "
        "the flag: flags show in the process list",
    )
    wait_for_model: bool = _setting(
        False,
        "start without a model: live at once, ready once a first valid version appears "
        "(polled every --poll-interval-s, or on SIGHUP); without it an empty repository "
        "is a start-up error",
    )
    model_version: int = _setting(
        0,
        "serve this version of every model and never switch (overrides each config.json's "
        "version policy and labels; 0 = follow each model's config.json)",
        min=0,
    )
    model_variant: str = _setting(
        "float",
        "which model file of a version to serve: float (model.onnx) or int8 (the quantized "
        "variant listed in metadata.json)",
        choices=VARIANTS,
    )
    host: str = _setting(
        "127.0.0.1", "address to bind: IPv4, IPv6 (::1 or [::1]) or a name (0.0.0.0 in containers)"
    )
    port: int = _setting(50051, "gRPC port (0 = any free port, printed at start)", min=0, max=65535)
    metrics_port: int = _setting(
        9090, "HTTP port for /metrics (0 = any free port, -1 = off)", min=-1, max=65535
    )
    http_port: int = _setting(
        8000,
        "HTTP port of the Open Inference Protocol REST API (0 = any free port, -1 = off)",
        min=-1,
        max=65535,
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
        4 * 1024 * 1024,
        "largest gRPC message or HTTP request body accepted, and message sent, in bytes",
        min=1024,
        max=INT32_MAX,
    )
    max_concurrent_rpcs: int = _setting(
        4096,
        "most RPCs (streams included) in progress on the server; beyond it RESOURCE_EXHAUSTED "
        "(health checks and OIP ServerLive/ServerReady are not counted)",
        min=1,
        max=1_000_000,
    )
    max_concurrent_streams: int = _setting(
        256,
        "most RPCs in progress on one client connection (HTTP/2 "
        "SETTINGS_MAX_CONCURRENT_STREAMS); further calls wait in the client",
        min=1,
        max=INT32_MAX,
    )
    threads: int = _setting(
        0,
        "onnxruntime intra-op threads for batches of more than 4 images (0 = the CPUs this "
        "process may use, cgroup limit included); smaller batches run on one thread",
        min=0,
        max=256,
    )
    workers: str = _setting(
        "1",
        "server processes sharing the gRPC and REST ports (SO_REUSEPORT) under one "
        "supervisor that restarts them, sums their metrics and applies every model change "
        "to all of them at once; each loads every model. auto = the CPUs this process may "
        "use (cgroup quota, then affinity mask)",
    )
    worker_timeout_s: float = _setting(
        30.0,
        "with --workers 2 or more: a worker whose event loop has not answered the supervisor "
        "for this long (hung, deadlocked, stopped) is killed and restarted, as gunicorn's "
        "--timeout does (0 = never)",
        min=0.0,
        max=3600.0,
    )
    grace_s: float = _setting(
        10.0, "on SIGTERM, how long in-flight requests may take to finish", min=0.0, max=3600.0
    )
    max_connection_age_s: float = _setting(
        300.0,
        "close client connections after this long so clients rebalance across replicas "
        f"(0 = never; at most {MAX_CONNECTION_AGE_S}, gRPC's limit)",
        min=0.0,
        max=float(MAX_CONNECTION_AGE_S),
    )
    max_connection_age_grace_s: float = _setting(
        0.0,
        "after --max-connection-age-s, how long the calls in progress on a connection, streams "
        "included, may go on before it is closed (0 = until they end; new calls go to a new "
        f"connection at once either way; at most {MAX_CONNECTION_AGE_S})",
        min=0.0,
        max=float(MAX_CONNECTION_AGE_S),
    )
    poll_interval_s: float = _setting(
        5.0,
        "how often to look for a newer model version (0 = only on SIGHUP)",
        min=0.0,
        max=86400.0,
    )
    tls_cert: str = _setting("", "PEM certificate chain: serve TLS (with --tls-key)")
    tls_key: str = _setting("", "PEM private key of --tls-cert")
    tls_client_ca: str = _setting(
        "", "PEM CA bundle: require client certificates signed by it (mTLS)"
    )
    log_level: str = _setting("info", "log level", choices=LOG_LEVELS)
    max_inflight_bytes: int = _setting(
        128 * 1024 * 1024,
        "most bytes of gRPC requests held by calls in progress on the whole server (stream "
        "requests until their response is written, and responses waiting to be written); "
        "beyond it unary calls get RESOURCE_EXHAUSTED and streams are not read until it frees",
        min=1024,
        max=2**40,
    )
    max_stream_inflight_bytes: int = _setting(
        8 * 1024 * 1024,
        "most bytes one gRPC stream may hold (requests until their response is written); "
        "beyond it the server stops reading the stream until the client reads its responses",
        min=1024,
        max=2**40,
    )
    memory_trim_interval_s: float = _setting(
        1.0,
        "how often freed memory is given back to the kernel (glibc malloc_trim; 0 = never): "
        "a flood of large messages otherwise leaves it resident",
        min=0.0,
        max=3600.0,
    )
    # -- HTTP ports (REST and /metrics) under hostile clients (docs/RELIABILITY.md) --
    http_max_connections: int = _setting(
        1000,
        "most open connections on each HTTP port (REST, /metrics), TLS handshakes included; "
        "at the limit the quietest one without a request in progress is closed to make room, "
        "else the new one gets 503",
        min=2,
        max=1_000_000,
    )
    http_max_concurrent_requests: int = _setting(
        256,
        "most REST requests in progress, bodies still arriving included (health checks "
        "exempt); beyond it 429 at once",
        min=1,
        max=1_000_000,
    )
    http_max_body_bytes_in_flight: int = _setting(
        256 * 1024 * 1024,
        "most bytes of REST request bodies held by requests in progress (a declared "
        "Content-Length is reserved before reading); beyond it 429 at once",
        min=1024,
        max=2**40,
    )
    http_body_timeout_s: float = _setting(
        30.0,
        "longest time to receive a REST request body; then 408 and the connection is closed",
        min=0.001,
        max=3600.0,
    )
    http_header_timeout_s: float = _setting(
        10.0,
        "longest time for a request's head to arrive (from the connection's start, or from "
        "a later request's first byte); then the connection is closed (0 = no limit)",
        min=0.0,
        max=3600.0,
    )
    http_keepalive_timeout_s: float = _setting(
        60.0, "close HTTP connections idle this long between requests", min=0.001, max=86400.0
    )
    http_tls_handshake_timeout_s: float = _setting(
        10.0,
        "longest TLS handshake on the HTTP ports (with --tls-cert); then the connection is closed",
        min=0.001,
        max=600.0,
    )
    log_format: str = _setting(
        "text",
        "log lines on stderr: text (TIME LEVEL LOGGER: message key=value ...) or json (one "
        "object per line); both carry the id of the request a line is about",
        choices=LOG_FORMATS,
    )
    access_log: bool = _setting(
        False,
        "log one line per request (logger server.access, at INFO whatever --log-level is): "
        "method, status, model, version, images, batch, latency, peer, request id",
    )
    otlp_endpoint: str = _setting(
        "",
        "send OpenTelemetry traces (a span per request) to this OTLP/gRPC collector, "
        "http://HOST:PORT (plaintext) or https://HOST:PORT; empty: off unless the standard "
        "OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set. Needs the otel extra",
    )
    stream_window_bytes: int = _setting(
        64 * 1024,
        "HTTP/2 receive window of each gRPC stream, fixed (grpc's bandwidth-delay probing, "
        "which grows it to 4 MiB and more, is off): what the server takes in, unasked, on "
        "a stream it is not reading",
        min=16 * 1024,
        max=16 * 1024 * 1024,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        if self.max_images_per_request > self.max_queue:
            raise ConfigError(
                f"--max-images-per-request ({self.max_images_per_request}) must not exceed "
                f"--max-queue ({self.max_queue}): such a request could never be queued"
            )
        self._check_model_control()
        self._check_workers()
        if Path(self.model_repo).exists() and not Path(self.model_repo).is_dir():
            raise ConfigError(
                f"{_names('model_repo')}: {str(self.model_repo)!r} is not a directory"
            )
        # Frozen: the normalised host replaces the given one.
        object.__setattr__(self, "host", _normalise_host(self.host))
        self._check_tls()
        self._check_http()
        if self.otlp_endpoint and not _OTLP_ENDPOINT.fullmatch(self.otlp_endpoint):
            raise ConfigError(
                f"{_names('otlp_endpoint')}: {self.otlp_endpoint[:128]!r} is not an OTLP/gRPC "
                "endpoint: http://HOST:PORT (plaintext) or https://HOST:PORT (TLS)"
            )

    def _check_workers(self) -> None:
        text = self.workers.strip().lower()
        if text != "auto" and not (text.isdigit() and 1 <= int(text) <= MAX_WORKERS):
            raise ConfigError(
                f"{_names('workers')} must be auto or a whole number from 1 to {MAX_WORKERS}, "
                f"got {self.workers[:32]!r}"
            )

    @property
    def worker_count(self) -> int:
        """--workers as a number (auto resolved now: the CPUs this process may use)."""
        text = self.workers.strip().lower()
        return available_cpus() if text == "auto" else int(text)

    def _check_model_control(self) -> None:
        if not is_model_name(self.default_model):
            raise ConfigError(
                f"{_names('default_model')}: {self.default_model[:64]!r} is not a model name "
                "(1-64 ASCII letters, digits, '_', '.', '-', starting with a letter or digit)"
            )
        if self.model_control_mode != "explicit":
            for name in ("load_model", "model_control_token"):
                if getattr(self, name):
                    raise ConfigError(
                        f"{_names(name)} applies to --model-control-mode explicit only"
                    )
            return
        bad = [n for n in self.startup_models if n != "*" and not is_model_name(n)]
        if bad or ("*" in self.startup_models and len(self.startup_models) > 1):
            raise ConfigError(
                f"{_names('load_model')}: {self.load_model[:128]!r} must be model names "
                "separated by commas, or * alone"
            )

    @property
    def startup_models(self) -> tuple[str, ...]:
        """--load-model as a tuple (``("*",)`` for every model)."""
        return tuple(name.strip() for name in self.load_model.split(",") if name.strip())

    def _check_tls(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together (FASHION_TLS_CERT/KEY)")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{_names(name)}: no such file {path!r}")
        # Read once, here: a bad file is a configuration error named with its flag.
        material = load_tls(self.tls_cert, self.tls_key, self.tls_client_ca) if self.tls else None
        object.__setattr__(self, "_tls_material", material)

    def _check_http(self) -> None:
        if self.http_max_body_bytes_in_flight < self.max_message_bytes:
            raise ConfigError(
                f"--http-max-body-bytes-in-flight ({self.http_max_body_bytes_in_flight}) must "
                f"be at least --max-message-bytes ({self.max_message_bytes}): a body of the "
                "largest size could never be read"
            )
        if self.http_max_concurrent_requests >= self.http_max_connections:
            raise ConfigError(
                f"--http-max-concurrent-requests ({self.http_max_concurrent_requests}) must be "
                f"below --http-max-connections ({self.http_max_connections}): a health probe "
                "must always find a connection"
            )

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def tls_material(self) -> TlsMaterial | None:
        """The PEM files as read at start-up (None without TLS): gRPC and HTTPS both use it."""
        material: TlsMaterial | None = getattr(self, "_tls_material", None)
        return material

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0


# An OTLP/gRPC endpoint: a scheme (http = plaintext, https = TLS), a host and a port. The
# SDK reads a bare HOST:PORT as a URL scheme and dials TLS: refused here, to be explicit.
_OTLP_ENDPOINT = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?/?")


def _names(name: str) -> str:
    return f"--{name.replace('_', '-')} / {ENV_PREFIX}{name.upper()}"


def _normalise_host(host: str) -> str:
    """``[::1]`` -> ``::1``: one spelling for gRPC's and the HTTP server's bind calls."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare or bare != host:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            raise ConfigError(f"{_names('host')}: {host!r} is not an IPv6 address") from None
    elif not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", bare):
        raise ConfigError(f"{_names('host')}: {host!r} is not an IP address or host name")
    return bare


def _check(f: dataclasses.Field[Any], value: Any) -> None:
    meta = f.metadata
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{_names(f.name)} must be a finite number, got {value}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{_names(f.name)} must be >= {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{_names(f.name)} must be <= {meta['max']}, got {value}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{_names(f.name)} must be one of {', '.join(meta['choices'])}, got {value!r}"
        )


def _convert(name: str, type_name: str, raw: str) -> Any:
    try:
        return parse_value(type_name, raw)
    except BadValue as exc:
        raise ConfigError(f"{_names(name)} {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashion-serve",
        description="Serve the Fashion-MNIST ONNX model over gRPC and HTTP. Every flag can "
        "also be set as a FASHION_* environment variable (flag wins).",
    )
    for f in dataclasses.fields(Settings):
        # A bool flag alone means true; it also takes a value (--wait-for-model false).
        flag_only: dict[str, Any] = {"nargs": "?", "const": "true"} if f.type == "bool" else {}
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            metavar=str(f.type).upper() if f.type in ("int", "float", "bool") else None,
            help=f"{f.metadata['help']} (env {ENV_PREFIX}{f.name.upper()}, default {f.default})",
            **flag_only,
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    warnings: list[str] | None = None,
) -> Settings:
    """Flags, then ``FASHION_*`` variables, then defaults. Raises ConfigError.

    Warnings about the environment (unknown names, ignored service links) are
    appended to ``warnings`` when given (``main`` logs them once logging is set
    up), else logged here.
    """
    env = os.environ if environ is None else environ
    notes: list[str] = []
    values: dict[str, Any] = {}
    args = vars(build_parser().parse_args(argv))
    for f in dataclasses.fields(Settings):
        raw = args[f.name]
        if raw is None:
            variable = f"{ENV_PREFIX}{f.name.upper()}"
            raw = env.get(variable)
            if raw is not None and f.type != "str" and is_link_value(raw):
                # A Service named "fashion" injects FASHION_PORT=tcp://IP:PORT.
                notes.append(
                    f"ignoring {variable}={raw}: a Kubernetes service link of a Service named "
                    f"{ENV_PREFIX[:-1].lower()!r}, not a setting (set enableServiceLinks: false)"
                )
                raw = None
        if raw is not None:
            values[f.name] = _convert(f.name, str(f.type), raw)
    notes += check_environment(env)
    settings = Settings(**values)
    if tracing.requested(settings.otlp_endpoint, env):
        tracing.check_installed()  # before anything starts: exit 2 without the otel extra
    if warnings is None:
        for note in notes:
            logger.warning("%s", note)
    else:
        warnings.extend(notes)
    return settings


def setting_variables() -> frozenset[str]:
    return frozenset(f"{ENV_PREFIX}{f.name.upper()}" for f in dataclasses.fields(Settings))


def check_environment(environ: Mapping[str, str]) -> list[str]:
    """Refuse a ``FASHION_*`` name that looks like a misspelt setting; warn about the rest.

    Names the kubelet's service links produce, and the project's own non-setting
    variables, are not settings and pass silently.
    """
    known = setting_variables()
    unknown = sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name not in known
        and name not in _OTHER_ENV
        and not name.startswith(_TRAINING_ENV_PREFIX)
        and not is_service_link(name, environ[name])
    )
    typos = {}
    for name in unknown:
        close = closest_setting(name, known, ENV_PREFIX)
        if close is not None:
            typos[name] = close
    if typos:
        raise ConfigError(
            "; ".join(
                f"unknown setting {name}; did you mean {real}?" for name, real in typos.items()
            )
        )
    if unknown:
        return [
            f"ignoring unknown variable(s) {', '.join(unknown)}: not fashion-serve settings "
            "(fashion-serve --help lists them)"
        ]
    return []


# FASHION_* variables that belong to other commands and scripts, not the server:
# training and tests (FASHION_MNIST_DIR), scripts/bootstrap.sh (FASHION_VENV, FASHION_PERF_VENV),
# the container tests (FASHION_TEST_BASE_IMAGE, tests/deploy/podman.py).
_OTHER_ENV = frozenset(
    {"FASHION_MNIST_DIR", "FASHION_VENV", "FASHION_PERF_VENV", "FASHION_TEST_BASE_IMAGE"}
)
# fashion-train's own settings (training/config.py; FASHION_TRAIN_EPOCHS, ...): a pod may carry
# both commands' variables, and the trainer refuses its own misspelt names, so here the whole
# prefix passes (FASHION_TRAIN_BATCH_SIZE must not read as a typo of FASHION_MAX_BATCH_SIZE).
_TRAINING_ENV_PREFIX = "FASHION_TRAIN_"
