"""Settings: flags > FASHION_* variables > defaults, each value validated by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import Settings, load_settings
from server.errors import ConfigError


def test_defaults() -> None:
    s = load_settings([], {})
    assert s == Settings()
    assert (s.host, s.port, s.metrics_port, s.device) == ("127.0.0.1", 50051, 9090, "cpu")
    assert s.model_repo == Path("models")


def test_environment_then_flags_win() -> None:
    env = {"FASHION_PORT": "6000", "FASHION_MAX_BATCH_DELAY_MS": "0.5", "FASHION_DEVICE": "auto"}
    s = load_settings([], env)
    assert (s.port, s.max_batch_delay_ms, s.device) == (6000, 0.5, "auto")
    s = load_settings(["--port", "7000"], env)
    assert s.port == 7000 and s.device == "auto"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "70000"], {}, "--port / FASHION_PORT must be <= 65535, got 70000"),
        ([], {"FASHION_MAX_BATCH_SIZE": "0"}, "FASHION_MAX_BATCH_SIZE must be >= 1, got 0"),
        ([], {"FASHION_THREADS": "two"}, "FASHION_THREADS must be an integer, got 'two'"),
        (["--device", "tpu"], {}, "must be one of cpu, cuda, auto, got 'tpu'"),
        (["--max-batch-delay-ms", "-1"], {}, "must be >= 0.0"),
        (["--max-images-per-request", "2000", "--max-queue", "1000"], {}, "could never be queued"),
        ([], {"FASHION_PROT": "1"}, "unknown setting(s) FASHION_PROT"),
    ],
)
def test_invalid_values_name_the_setting(argv, env, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(argv, env)
    assert message in str(info.value)


def test_training_variables_are_not_unknown() -> None:
    assert load_settings([], {"FASHION_MNIST_DIR": "/data"}).port == 50051


def test_readme_documents_every_server_flag() -> None:
    import dataclasses

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [
        f.name
        for f in dataclasses.fields(Settings)
        if f"--{f.name.replace('_', '-')}" not in readme
    ]
    assert not missing, f"README's fashion-serve table lacks {missing}"
