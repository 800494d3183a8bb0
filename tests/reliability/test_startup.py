"""The real ``fashion-serve`` process at start-up (issue #17 items 7, 8; issue #14 item 1):
bad settings exit 2 naming the flag and variable (never a traceback), SIGHUP while
starting does not kill it, and the kubelet's service-link variables do not stop it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import serverproc
from tests.e2e.test_lifecycle import NO_TENSORFLOW, run_until_exit
from tests.unit.test_config import FASHION_SERVING_LINKS, service_links


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASHION_")}
    return {**env, **extra}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {"FASHION_GRACE_S": "nan"}, "--grace-s / FASHION_GRACE_S must be a finite number"),
        (
            [],
            {"FASHION_MAX_CONNECTION_AGE_S": "inf"},
            "--max-connection-age-s / FASHION_MAX_CONNECTION_AGE_S must be a finite number",
        ),
        ([], {"FASHION_MAX_CONNECTION_AGE_S": "1e300"}, "FASHION_MAX_CONNECTION_AGE_S must be <="),
        (
            [],
            {"FASHION_MAX_CONNECTION_AGE_S": "2592000"},
            "FASHION_MAX_CONNECTION_AGE_S must be <=",
        ),
        ([], {"FASHION_MAX_MESSAGE_BYTES": str(2**31)}, "FASHION_MAX_MESSAGE_BYTES must be <="),
        (["--poll-interval-s", "nan"], {}, "--poll-interval-s / FASHION_POLL_INTERVAL_S must be"),
        (["--max-batch-delay-ms", "nan"], {}, "--max-batch-delay-ms / FASHION_MAX_BATCH_DELAY_MS"),
        ([], {"FASHION_MAX_BATCH": "8"}, "did you mean FASHION_MAX_BATCH_SIZE?"),
    ],
)
def test_bad_settings_exit_2_naming_flag_and_variable(model_repo, args, env, message) -> None:
    result = run_until_exit(
        "--model-repo", str(model_repo), "--port", "0", *args, env=clean_environ(**env)
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_model_repo_that_is_a_file_exits_2(tmp_path) -> None:
    (tmp_path / "models").write_text("")
    result = run_until_exit("--model-repo", str(tmp_path / "models"), env=clean_environ())
    assert result.returncode == 2
    assert (
        "--model-repo / FASHION_MODEL_REPO" in result.stderr and "not a directory" in result.stderr
    )


def test_garbage_tls_certificate_is_named_not_failed_to_bind(model_repo, tmp_path) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    result = run_until_exit(
        "--model-repo", str(model_repo), "--tls-cert", str(cert), "--tls-key", str(key),
        env=clean_environ(),
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--tls-cert / FASHION_TLS_CERT: '{cert}' holds no PEM certificate" in result.stderr
    assert "Failed to bind" not in result.stderr and "Traceback" not in result.stderr


def test_kubelet_service_links_and_project_variables_do_not_stop_the_server(
    model_repo, monkeypatch
) -> None:
    env = {
        **FASHION_SERVING_LINKS,
        **service_links("fashion-serving", "10.96.12.34", {"grpc": 1, "metrics": 2, "http": 3}),
        **service_links("fashion-predictor", "10.96.7.8", {"h2c": 50051}),
        "FASHION_VENV": "/opt/venv",
        "FASHION_MNIST_DIR": "/data",
        "FASHION_GRACE_S": "5",
    }  # fmt: skip
    for name in [k for k in os.environ if k.startswith("FASHION_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    command = [
        sys.executable, "-c", NO_TENSORFLOW, "--model-repo", str(model_repo),
        "--port", "0", "--metrics-port", "0", "--http-port", "0",
    ]  # fmt: skip
    server = serverproc.start_process(command, serverproc.READY_MARK, timeout_s=60)
    assert server.stop() == 0


def sighup_disposition(pid: int) -> str:
    """'ignored', 'caught' or 'default', from /proc/PID/status (bit 0 is signal 1)."""
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    if int(fields["SigIgn"], 16) & 1:
        return "ignored"
    return "caught" if int(fields["SigCgt"], 16) & 1 else "default"


def test_sighup_during_start_up_does_not_kill_the_process(model_repo) -> None:
    """A "HUP every replica" hook can hit a starting pod: SIGHUP is ignored from main()'s
    first line until the reload handler takes over; here SIGHUP is sent every few ms
    from then until the server is ready."""
    command = [
        sys.executable, "-c", NO_TENSORFLOW, "--model-repo", str(model_repo),
        "--port", "0", "--metrics-port", "0", "--http-port", "0",
    ]  # fmt: skip
    env = {**clean_environ(), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        # Python itself starts with the default action; main() must ignore SIGHUP early,
        # before the imports of grpc and onnxruntime (most of the start-up time).
        while sighup_disposition(process.pid) == "default":
            assert process.poll() is None and time.monotonic() < deadline, "never ignored"
            time.sleep(0.001)
        assert sighup_disposition(process.pid) == "ignored", "the handler came first"
        sent = 0
        line = ""
        while serverproc.READY_MARK not in line:
            assert process.poll() is None, f"died with {process.returncode} after {sent} SIGHUPs"
            assert time.monotonic() < deadline
            process.send_signal(signal.SIGHUP)
            sent += 1
            readable, _, _ = select.select([process.stdout], [], [], 0.005)
            if readable:
                line = process.stdout.readline()
        assert sent > 10
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_the_command_exits_with_its_code_and_its_last_log_line(tmp_path) -> None:
    """``fashion-serve`` (server.main:cli) skips the interpreter's teardown after a clean
    stop (0.2-2.7 s of freeing objects, docs/RELIABILITY.md): nothing may be lost."""
    command = [
        sys.executable, "-m", "server.main", "--model-repo", str(tmp_path), "--port", "0",
        "--metrics-port", "0", "--http-port", "0", "--wait-for-model", "--poll-interval-s", "0",
    ]  # fmt: skip
    env = {**clean_environ(), "PYTHONUNBUFFERED": "0"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout.readline().startswith("fashion-serve: waiting for a model on port")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0
        assert stderr.rstrip().endswith("INFO server.app: stopped"), stderr[-300:]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    result = subprocess.run(
        [sys.executable, "-m", "server.main", "--port", "x"],
        capture_output=True, text=True, timeout=60, env=clean_environ(),
    )  # fmt: skip
    assert result.returncode == 2 and "FASHION_PORT must be an integer" in result.stderr


def test_an_unlistable_repository_is_a_start_up_error_not_a_traceback(tmp_path) -> None:
    (tmp_path / "fashion").symlink_to(tmp_path / "fashion")  # fails to list, even for root
    result = run_until_exit(
        "--model-repo", str(tmp_path), "--port", "0", "--metrics-port", "-1", "--http-port", "-1",
        env=clean_environ(),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    # What cannot be read is named, with why (no traceback): its config.json, the first
    # thing read of a model (before its versions: see server/manager.py).
    assert "cannot start: no valid model version in" in result.stderr, result.stderr
    assert "fashion/config.json is unreadable: Too many levels of symbolic links" in (result.stderr)
    assert "Traceback" not in result.stderr
