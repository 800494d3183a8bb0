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
        ([], {"FASHION_PROT": "1"}, "unknown setting FASHION_PROT; did you mean FASHION_PORT?"),
        # Floats are finite: nan passes every range comparison, inf overflows gRPC's ints.
        ([], {"FASHION_GRACE_S": "nan"}, "--grace-s / FASHION_GRACE_S must be a finite number"),
        (["--poll-interval-s", "nan"], {}, "--poll-interval-s / FASHION_POLL_INTERVAL_S must be a"),
        (["--max-batch-delay-ms", "nan"], {}, "FASHION_MAX_BATCH_DELAY_MS must be a finite"),
        (["--max-batch-delay-ms=-inf"], {}, "FASHION_MAX_BATCH_DELAY_MS must be a finite"),
        ([], {"FASHION_MAX_CONNECTION_AGE_S": "inf"}, "FASHION_MAX_CONNECTION_AGE_S must be a"),
        # gRPC keeps the connection age in int32 milliseconds: ~24.8 days at most.
        ([], {"FASHION_MAX_CONNECTION_AGE_S": "1e300"}, "must be <= 2147483.0, got 1e+300"),
        ([], {"FASHION_MAX_CONNECTION_AGE_S": "2592000"}, "must be <= 2147483.0, got 2592000"),
        ([], {"FASHION_MAX_MESSAGE_BYTES": str(2**31)}, "FASHION_MAX_MESSAGE_BYTES must be <="),
        (["--max-concurrent-rpcs", "0"], {}, "FASHION_MAX_CONCURRENT_RPCS must be >= 1"),
        (["--max-concurrent-streams", "0"], {}, "FASHION_MAX_CONCURRENT_STREAMS must be >= 1"),
        (["--host", "[nope]"], {}, "--host / FASHION_HOST: '[nope]' is not an IPv6 address"),
        (["--host", "bad host"], {}, "'bad host' is not an IP address or host name"),
        ([], {"FASHION_WAIT_FOR_MODEL": "maybe"}, "FASHION_WAIT_FOR_MODEL must be one of 1, true"),
        (["--worker-timeout-s", "-1"], {}, "--worker-timeout-s / FASHION_WORKER_TIMEOUT_S must be"),
    ],
)
def test_invalid_values_name_the_setting(argv, env, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(argv, env)
    assert message in str(info.value)


def test_model_repo_that_is_a_file_is_refused(tmp_path) -> None:
    (tmp_path / "models").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"--model-repo / FASHION_MODEL_REPO: .* not a directory"):
        load_settings(["--model-repo", str(tmp_path / "models")], {})
    # A repository that does not exist yet is fine: --wait-for-model waits for it.
    assert load_settings(["--model-repo", str(tmp_path / "later")], {}).model_repo.name == "later"


@pytest.mark.parametrize(
    ("given", "bound"), [("[::1]", "::1"), ("::", "::"), ("0.0.0.0", "0.0.0.0")]
)
def test_host_has_one_spelling(given, bound) -> None:
    assert load_settings(["--host", given], {}).host == bound


def test_wait_for_model_is_a_flag_or_a_value() -> None:
    assert load_settings([], {}).wait_for_model is False
    assert load_settings(["--wait-for-model"], {}).wait_for_model is True
    assert load_settings(["--wait-for-model", "false"], {}).wait_for_model is False
    assert load_settings([], {"FASHION_WAIT_FOR_MODEL": "1"}).wait_for_model is True
    assert load_settings([], {"FASHION_WAIT_FOR_MODEL": "off"}).wait_for_model is False


def test_project_variables_are_not_settings_and_pass_silently() -> None:
    # FASHION_VENV / FASHION_PERF_VENV: scripts/bootstrap.sh; FASHION_MNIST_DIR: training.
    env = {"FASHION_MNIST_DIR": "/data", "FASHION_VENV": "/v", "FASHION_PERF_VENV": "/p"}
    env["FASHION_TEST_BASE_IMAGE"] = "localhost/base"  # tests/deploy/podman.py
    warnings: list[str] = []
    assert load_settings([], env, warnings=warnings).port == 50051
    assert warnings == []


def test_training_variables_pass_silently() -> None:
    # One pod spec may carry fashion-train's settings too (training/config.py); the trainer
    # checks its own FASHION_TRAIN_* names, typos included.
    from training.config import variables

    env = {name: "3" for name in variables() if name.startswith("FASHION_TRAIN_")}
    assert "FASHION_TRAIN_BATCH_SIZE" in env  # ~ FASHION_MAX_BATCH_SIZE, not a typo of it
    env |= {"FASHION_MNIST_DIR": "/data", "FASHION_MODEL_REPO": "/srv/models"}  # shared
    env["FASHION_TRAIN_BATCH_SIZ"] = "3"  # the trainer's typo: the trainer refuses it
    warnings: list[str] = []
    settings = load_settings([], env, warnings=warnings)
    assert settings.model_repo == Path("/srv/models") and settings.max_batch_size == 64
    assert warnings == []


def service_links(service: str, ip: str, ports: dict[str, int]) -> dict[str, str]:
    """The variables the kubelet injects for one Service (pkg/kubelet/envvars), in general."""
    prefix = service.upper().replace("-", "_")
    first = next(iter(ports.values()))
    env = {
        f"{prefix}_SERVICE_HOST": ip,
        f"{prefix}_SERVICE_PORT": str(first),
        f"{prefix}_PORT": f"tcp://{ip}:{first}",
    }
    for name, port in ports.items():
        env[f"{prefix}_SERVICE_PORT_{name.upper().replace('-', '_')}"] = str(port)
        link = f"{prefix}_PORT_{port}_TCP"
        env.update(
            {
                link: f"tcp://{ip}:{port}",
                f"{link}_PROTO": "tcp",
                f"{link}_PORT": str(port),
                f"{link}_ADDR": ip,
            }
        )
    return env


# Exactly what a pod in the namespace of deploy/k8s/base's Service fashion-serving
# (ports grpc 50051, http 8000, metrics 9090) is given (NOTES.md), written out, not
# generated.
FASHION_SERVING_LINKS = {
    "FASHION_SERVING_SERVICE_HOST": "10.96.12.34",
    "FASHION_SERVING_SERVICE_PORT": "50051",
    "FASHION_SERVING_SERVICE_PORT_GRPC": "50051",
    "FASHION_SERVING_SERVICE_PORT_HTTP": "8000",
    "FASHION_SERVING_SERVICE_PORT_METRICS": "9090",
    "FASHION_SERVING_PORT": "tcp://10.96.12.34:50051",
    "FASHION_SERVING_PORT_50051_TCP": "tcp://10.96.12.34:50051",
    "FASHION_SERVING_PORT_50051_TCP_PROTO": "tcp",
    "FASHION_SERVING_PORT_50051_TCP_PORT": "50051",
    "FASHION_SERVING_PORT_50051_TCP_ADDR": "10.96.12.34",
    "FASHION_SERVING_PORT_8000_TCP": "tcp://10.96.12.34:8000",
    "FASHION_SERVING_PORT_8000_TCP_PROTO": "tcp",
    "FASHION_SERVING_PORT_8000_TCP_PORT": "8000",
    "FASHION_SERVING_PORT_8000_TCP_ADDR": "10.96.12.34",
    "FASHION_SERVING_PORT_9090_TCP": "tcp://10.96.12.34:9090",
    "FASHION_SERVING_PORT_9090_TCP_PROTO": "tcp",
    "FASHION_SERVING_PORT_9090_TCP_PORT": "9090",
    "FASHION_SERVING_PORT_9090_TCP_ADDR": "10.96.12.34",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
}


def test_the_generator_reproduces_the_known_set() -> None:
    generated = service_links(
        "fashion-serving", "10.96.12.34", {"grpc": 50051, "http": 8000, "metrics": 9090}
    )
    assert generated == {k: v for k, v in FASHION_SERVING_LINKS.items() if k.startswith("FASHION")}


@pytest.mark.parametrize(
    "links",
    [
        FASHION_SERVING_LINKS,
        # The same Service with a third port (the HTTP API), and the headless one's cousin.
        service_links(
            "fashion-serving", "10.96.12.34", {"grpc": 50051, "metrics": 9090, "http": 8000}
        ),
        # KServe's RawDeployment predictor Service for the InferenceService "fashion".
        service_links("fashion-predictor", "10.96.7.8", {"h2c": 50051, "http-metrics": 9090}),
        # Knative (serverless KServe) revision Services, with digits and dashes in names.
        service_links("fashion-predictor-00001-private", "10.96.7.9", {"http": 80, "https": 443}),
        # IPv6 cluster.
        service_links("fashion-serving", "fd00::1234", {"grpc": 50051, "metrics": 9090}),
    ],
    ids=["fashion-serving", "three-ports", "kserve-predictor", "knative-private", "ipv6"],
)
def test_service_link_variables_are_ignored_silently(links) -> None:
    warnings: list[str] = []
    settings = load_settings([], {**links, "FASHION_PORT": "6000"}, warnings=warnings)
    assert settings.port == 6000 and settings.metrics_port == 9090
    assert warnings == []


def test_a_service_named_fashion_does_not_set_the_port() -> None:
    # Its links are FASHION_PORT=tcp://... and FASHION_SERVICE_*: the port keeps its default.
    links = service_links("fashion", "10.96.1.2", {"grpc": 50051, "metrics": 9090})
    warnings: list[str] = []
    assert load_settings([], links, warnings=warnings).port == 50051
    assert len(warnings) == 1 and "ignoring FASHION_PORT=tcp://10.96.1.2:50051" in warnings[0]
    # A value set by the operator (the pod's env wins over links) is taken as usual.
    assert load_settings([], {**links, "FASHION_PORT": "7000"}).port == 7000


@pytest.mark.parametrize(
    ("name", "value", "suggestion"),
    [
        ("FASHION_MAX_BATCH", "8", "FASHION_MAX_BATCH_SIZE"),
        ("FASHION_METRIC_PORT", "9091", "FASHION_METRICS_PORT"),  # *_PORT, but not a link's value
        ("FASHION_THREAD", "2", "FASHION_THREADS"),
        ("FASHION_LOGLEVEL", "debug", "FASHION_LOG_LEVEL"),
    ],
)
def test_a_misspelt_setting_is_refused_with_a_suggestion(name, value, suggestion) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings([], {name: value})
    assert str(info.value) == f"unknown setting {name}; did you mean {suggestion}?"


def test_other_unknown_variables_give_one_warning() -> None:
    env = {"FASHION_TEAM": "vision", "FASHION_OWNER_EMAIL": "a@b", **FASHION_SERVING_LINKS}
    warnings: list[str] = []
    assert load_settings([], env, warnings=warnings).port == 50051
    assert len(warnings) == 1
    assert "FASHION_OWNER_EMAIL, FASHION_TEAM" in warnings[0] and "SERVING" not in warnings[0]


def test_serving_docs_document_every_server_flag() -> None:
    import dataclasses

    readme = (Path(__file__).resolve().parents[2] / "docs" / "SERVING.md").read_text()
    missing = [
        f.name
        for f in dataclasses.fields(Settings)
        if f"--{f.name.replace('_', '-')}" not in readme
    ]
    assert not missing, f"docs/SERVING.md's fashion-serve table lacks {missing}"


def test_tls_files_are_parsed_at_start(tmp_path) -> None:
    from tests.reliability.certs import CertificateAuthority

    ca = CertificateAuthority(tmp_path, "ca")
    good, other = ca.issue("server", server=True), ca.issue("other", server=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )

    def tls(cert, key, client_ca=None):
        argv = ["--tls-cert", str(cert), "--tls-key", str(key)]
        return load_settings([*argv, "--tls-client-ca", str(client_ca)] if client_ca else argv, {})

    assert tls(good.cert, good.key, ca.pair.cert).tls
    cases = [
        (
            (garbage, good.key),
            f"--tls-cert / FASHION_TLS_CERT: '{garbage}' holds no PEM certificate",
        ),
        ((good.cert, garbage), "--tls-key / FASHION_TLS_KEY: "),
        ((good.cert, other.key), "is not an unencrypted PEM private key matching"),
        ((good.key, good.key), "holds no PEM certificate"),
        ((good.cert, good.key, garbage), "--tls-client-ca / FASHION_TLS_CLIENT_CA: "),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError) as info:
            tls(*args)
        assert message in str(info.value)
