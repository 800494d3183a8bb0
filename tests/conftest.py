"""Shared fixtures: a real model trained and exported by the project's own code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.contract import MODEL_FILE, MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
# Set by scripts/test.sh so its two pytest sessions share one exported model;
# the fixture trains into it when it holds none (or into a temp dir when unset).
CACHE_ENV = "TEST_MODEL_REPO_DIR"


def _train(repo: Path) -> None:
    # A subprocess keeps TensorFlow out of the test process (and proves the CLI).
    command = [
        sys.executable,
        "-m",
        "training.train",
        "--model-repo",
        str(repo),
        "--limit",
        "3000",
        "--epochs",
        "1",
        "--seed",
        "1",
    ]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding version 1 of a small real model (read-only for tests)."""
    cached = os.environ.get(CACHE_ENV)
    repo = Path(cached) if cached else tmp_path_factory.mktemp("model_repo")
    if not (repo / MODEL_NAME / "1" / MODEL_FILE).is_file():
        _train(repo)
    return repo


@pytest.fixture
def private_repo(model_repo: Path, tmp_path: Path) -> Path:
    """A writable copy of the model repository, for tests that add or break versions."""
    target = tmp_path / "repo"
    shutil.copytree(model_repo, target)
    return target
