"""When tracing is on (server.tracing, server.config), and that it costs no import when off."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from server.config import Settings, load_settings
from server.errors import ConfigError
from server.tracing import requested


@pytest.mark.parametrize(
    ("endpoint", "environ", "on"),
    [
        ("", {}, False),
        ("http://collector:4317", {}, True),
        ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ("", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector:4317"}, True),
        ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ("", {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ("http://collector:4317", {"OTEL_SDK_DISABLED": "true"}, False),
        ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ("http://collector:4317", {"OTEL_TRACES_EXPORTER": "none"}, False),
        ("http://collector:4317", {"OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_tracing_is_on_for_an_endpoint_and_off_when_the_sdk_is_disabled(
    endpoint, environ, on
) -> None:
    assert requested(endpoint, environ) is on


@pytest.mark.parametrize(
    "endpoint",
    ["http://collector:4317", "https://otel.example.com:4317", "http://[::1]:4317", "http://c/"],
)
def test_otlp_endpoints_are_urls(endpoint) -> None:
    assert Settings(otlp_endpoint=endpoint).otlp_endpoint == endpoint


@pytest.mark.parametrize(
    "endpoint",
    ["collector:4317", "grpc://collector:4317", "http://", "http://a b:1", "http://c:1x"],
)
def test_an_otlp_endpoint_without_a_scheme_is_refused(endpoint) -> None:
    with pytest.raises(ConfigError, match=r"--otlp-endpoint / FASHION_OTLP_ENDPOINT: .* http://"):
        Settings(otlp_endpoint=endpoint)


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--otlp-endpoint", "http://127.0.0.1:4317"], {}),
        ([], {"FASHION_OTLP_ENDPOINT": "http://127.0.0.1:4317"}),
        ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}),
    ],
)
def test_tracing_without_the_otel_extra_is_a_settings_error(monkeypatch, argv, environ) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(ConfigError, match=r'install the otel extra \(pip install "fashion-serving'):
        load_settings(argv, environ)
    # Off: the extra is not needed, and not looked for.
    assert load_settings([], {}).otlp_endpoint == ""


NO_OTEL = importlib.util.find_spec("opentelemetry") is None


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        pytest.param(
            "http://127.0.0.1:9",
            marks=pytest.mark.skipif(NO_OTEL, reason="the otel extra is not installed"),
        ),
    ],
)
def test_the_server_imports_opentelemetry_only_when_tracing_is_on(model_repo, endpoint) -> None:
    """Settings, the app and a served request: not one opentelemetry module loaded when off
    (and, so that this test can fail, some when on)."""
    script = (
        "import asyncio, sys\n"
        "from server.config import load_settings\n"
        "from server.app import create_app\n"
        "from server.codec import PredictCodec\n"
        "from server._proto.fashion.v1 import prediction_pb2 as pb\n"
        "async def main():\n"
        f"    s = load_settings(['--model-repo', {str(model_repo)!r}, '--port', '0',\n"
        f"        '--metrics-port', '-1', '--http-port', '-1', '--access-log',\n"
        f"        '--otlp-endpoint', {endpoint!r}], {{}})\n"
        "    app = create_app(s)\n"
        "    await app.start()\n"
        "    context = app.plane.begin('Predict')\n"
        "    request = pb.PredictRequest(images=[pb.Image(raw=bytes(784))])\n"
        "    await app.plane.infer(PredictCodec('fashion'), request, None)\n"
        "    assert context.images == 1 and context.batch > 0\n"
        "    app.plane.observe('Predict', app.plane.failure('Predict', ValueError()).code, 0.0,\n"
        "        context)\n"
        "    await app.stop(grace_s=0)\n"
        "asyncio.run(main())\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')\n"
        "print('opentelemetry modules:', len(loaded), loaded[:3])\n"
    )
    # Nothing listens on port 9: no span is recorded, so none waits to be exported at stop.
    environ = {**os.environ, "OTEL_TRACES_SAMPLER": "always_off"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=environ
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if endpoint:
        assert "opentelemetry modules: 0 " not in result.stdout, result.stdout
    else:
        assert "opentelemetry modules: 0 []" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--otlp-endpoint", "http://127.0.0.1:4317"], {}),
        ([], {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}),
    ],
)
def test_fashion_serve_exits_2_when_tracing_is_asked_for_without_the_extra(
    tmp_path, args, env
) -> None:
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if the otel extra were not installed\n"
        "from server.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FASHION_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-c", script, "--model-repo", str(tmp_path), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **env},
    )
    assert result.returncode == 2, result.stderr
    assert 'install the otel extra (pip install "fashion-serving[otel]")' in result.stderr
    assert "Traceback" not in result.stderr
