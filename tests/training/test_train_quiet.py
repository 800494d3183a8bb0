"""fashion-train's console: TensorFlow's harmless GPU-less start-up errors are not shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.data import DEBIAN_DIR
from training.train import QUIET_TF_LOG_LEVEL, TF_LOG_LEVEL_ENV, quiet_tensorflow_log

NOISE = ("failed call to cuInit", "use_unbounded_threadpool")


def test_the_users_own_log_level_is_kept() -> None:
    environ = {TF_LOG_LEVEL_ENV: "0"}
    quiet_tensorflow_log(environ)
    assert environ == {TF_LOG_LEVEL_ENV: "0"}
    empty: dict[str, str] = {}
    quiet_tensorflow_log(empty)
    assert empty == {TF_LOG_LEVEL_ENV: QUIET_TF_LOG_LEVEL}


@pytest.mark.slow
@pytest.mark.skipif(
    not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_a_training_run_prints_no_tensorflow_start_up_errors(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if k != TF_LOG_LEVEL_ENV}
    command = [
        str(Path(sys.executable).parent / "fashion-train"),
        "--limit",
        "300",
        "--epochs",
        "1",
    ]
    result = subprocess.run(
        [*command, "--model-repo", "models"],  # relative, as the default is
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for noise in NOISE:
        assert noise not in result.stderr
    assert "devices: " in result.stderr  # what the quieted log would have said, in one line
    # The published path is absolute: a relative repository is not left to guesswork.
    published = tmp_path.resolve() / "models" / "fashion" / "1"
    assert result.stdout.endswith(f"published version 1 to {published}\n")
