"""podman for the container tests: find it (or skip/fail), build the images, run containers.

This machine (and CI's) has hybrid cgroups and locked rlimits, and no container registry is
reachable (../shared/NOTES.md): podman runs with `runc`, the cgroupfs manager and a
containers.conf without default ulimits, and the images build FROM a local stand-in for
`python:3.11-slim-bookworm` (Debian bookworm's own Python 3.11, made with mmdebstrap).
`FASHION_TEST_BASE_IMAGE` names another base instead (e.g. the public one, where it can be
pulled). Images keep stable tags and are never removed, so podman's layer cache makes every
run after the first take seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.manifests import DOCKER, ROOT

STANDIN_BASE = "localhost/fashion-python-standin:3.11-bookworm"
STANDIN_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,passwd"
# The public image's PATH; `podman import` would otherwise leave the image without one.
STANDIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GLOBAL_FLAGS = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")
# This sandbox intercepts TLS with its own CA; builds see the host's bundle and pip config.
# On an ordinary machine these are the machine's own (valid) files, so mounting is harmless.
BUILD_MOUNTS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf")


def unavailable(reason: str) -> None:
    """Skip, except in CI (CI=true), where a missing container engine is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: the container tests must run, but {reason}")
    pytest.skip(reason)


@dataclass
class Podman:
    executable: str
    conf: Path
    build_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def find(cls, conf_dir: Path) -> Podman:
        for tool in ("podman", "runc"):
            if shutil.which(tool) is None:
                unavailable(
                    f"{tool} is not installed (scripts/test.sh installs podman, runc and "
                    "mmdebstrap with apt-get when it runs as root)"
                )
        conf = conf_dir / "containers.conf"
        conf.write_text(
            "[containers]\n# The sandbox forbids raising RLIMIT_NOFILE.\ndefault_ulimits = []\n"
        )
        podman = cls(shutil.which("podman") or "podman", conf)
        info = podman.run("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
        if info.returncode != 0:
            unavailable(f"podman cannot run here: {info.stderr.strip()[-500:]}")
        return podman

    def command(self, *args: str) -> list[str]:
        return [self.executable, *GLOBAL_FLAGS, *args]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(*args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args[:3])} ... exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "exists", ref, check=False).returncode == 0

    def image_size_bytes(self, ref: str) -> int:
        (image,) = json.loads(self.run("image", "inspect", ref).stdout)
        return int(image["Size"])

    def base_image(self) -> str:
        chosen = os.environ.get("FASHION_TEST_BASE_IMAGE")
        if chosen:
            return chosen
        if not self.image_exists(STANDIN_BASE):
            self._make_standin_base()
        return STANDIN_BASE

    def _make_standin_base(self) -> None:
        if shutil.which("mmdebstrap") is None:
            unavailable("mmdebstrap is not installed: cannot make the stand-in base image")
        with tempfile.TemporaryDirectory() as scratch:
            tarball = Path(scratch) / "base.tar"
            result = subprocess.run(
                ["mmdebstrap", "--variant=minbase", f"--include={STANDIN_PACKAGES}",
                 "bookworm", str(tarball)],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert result.returncode == 0, f"mmdebstrap failed:\n{result.stderr[-3000:]}"
            self.run("import", "--change", f"ENV PATH={STANDIN_PATH}", str(tarball),
                     STANDIN_BASE, timeout=300)  # fmt: skip

    def build(self, dockerfile: str, tag: str, *, timeout: float = 1800) -> None:
        """Build from the repository root (the documented context); cached layers are reused."""
        mounts = [f"--volume={p}:{p}:ro" for p in BUILD_MOUNTS if Path(p).is_file()]
        started = time.monotonic()
        self.run(
            "build",
            "--pull=never",
            "--network=host",
            "--layers",
            f"--build-arg=BASE_IMAGE={self.base_image()}",
            *mounts,
            f"--file={DOCKER / dockerfile}",
            f"--tag={tag}",
            str(ROOT),
            timeout=timeout,
        )
        self.build_seconds[tag] = time.monotonic() - started
