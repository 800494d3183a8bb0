"""What a kubelet does with a rendered pod spec, done with podman: the container's flags
(user, read-only root, capabilities, volumes, limits), its environment (ConfigMap, downward
API, service links), its probes run at their periods, and termination (preStop, SIGTERM,
terminationGracePeriodSeconds)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.manifests import container_env
from tests.deploy.podman import Podman

SERVING = health_pb2.HealthCheckResponse.SERVING
PROBE_KINDS = ("startupProbe", "readinessProbe", "livenessProbe")
# Made-up cluster IPs for the service-link values (nothing connects to them).
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def memory_bytes(quantity: str) -> int:
    for suffix, factor in _BINARY_SUFFIXES.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", name.upper())


def service_link_env(services: list[dict[str, Any]]) -> dict[str, str]:
    """The Docker-link-style variables the kubelet gives a pod for these Services (as in
    kubelet's envvars.FromServices): none for headless Services, the first port is the
    default one."""
    env: dict[str, str] = {}
    for index, service in enumerate(services, start=10):
        spec = service["spec"]
        if spec.get("clusterIP") == "None" or not spec.get("ports"):
            continue
        ip = str(spec.get("clusterIP") or SERVICE_CIDR[index])
        name = _env_name(service["metadata"]["name"])
        ports = spec["ports"]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
        first = ports[0]
        env[f"{name}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
        for port in ports:
            protocol = port.get("protocol", "TCP")
            prefix = f"{name}_PORT_{port['port']}_{protocol}"
            env[prefix] = f"{protocol.lower()}://{ip}:{port['port']}"
            env[f"{prefix}_PROTO"] = protocol.lower()
            env[f"{prefix}_PORT"] = str(port["port"])
            env[f"{prefix}_ADDR"] = ip
    return env


# The `kubernetes` Service of the default namespace: its variables reach every pod, whatever
# enableServiceLinks says.
MASTER_SERVICE = {
    "metadata": {"name": "kubernetes"},
    "spec": {
        "clusterIP": str(SERVICE_CIDR[1]),
        "ports": [{"name": "https", "port": 443, "protocol": "TCP"}],
    },
}


@dataclass(frozen=True)
class Probe:
    kind: str
    port: int
    service: str
    period_s: float
    timeout_s: float
    failure_threshold: int
    initial_delay_s: float

    @classmethod
    def of(cls, kind: str, spec: Mapping[str, Any]) -> Probe:
        # Kubernetes' defaults: period 10 s, timeout 1 s, failureThreshold 3, no delay.
        return cls(
            kind,
            int(spec["grpc"]["port"]),
            spec["grpc"].get("service", ""),
            spec.get("periodSeconds", 10),
            spec.get("timeoutSeconds", 1),
            spec.get("failureThreshold", 3),
            spec.get("initialDelaySeconds", 0),
        )

    @property
    def budget_s(self) -> float:
        """How long the probe may fail before the kubelet acts (kills, or marks unready)."""
        return self.initial_delay_s + self.period_s * self.failure_threshold


def grpc_health(address: str, service: str, timeout_s: float) -> int | None:
    """One kubelet gRPC probe: a fresh connection, Health/Check, a deadline. None = error."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return None
        return int(reply.status)


@dataclass
class Prober:
    """The kubelet's prober for one container: the startup probe until it first succeeds,
    then readiness and liveness, each at its own period. Records every result and what the
    kubelet would do: restart the container (startup or liveness failures in a row)."""

    address: str
    probes: dict[str, Probe]
    started: float = field(default_factory=time.monotonic)
    results: list[tuple[float, str, int | None]] = field(default_factory=list)
    killed: str | None = None
    startup_done_s: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="kubelet-prober")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        startup = self.probes["startupProbe"]
        due = {"startupProbe": self.started + startup.initial_delay_s}
        failures = dict.fromkeys(PROBE_KINDS, 0)
        while not self._stop.is_set() and self.killed is None:
            kind = min(due, key=due.__getitem__)
            if self._stop.wait(max(0.0, due[kind] - time.monotonic())):
                return
            probe = self.probes[kind]
            status = grpc_health(self.address, probe.service, probe.timeout_s)
            now = time.monotonic()
            self.results.append((now - self.started, kind, status))
            failures[kind] = 0 if status == SERVING else failures[kind] + 1
            due[kind] = now + probe.period_s
            if kind == "startupProbe" and status == SERVING:
                self.startup_done_s = now - self.started
                del due["startupProbe"]
                for other in ("readinessProbe", "livenessProbe"):
                    due[other] = now + self.probes[other].initial_delay_s
            elif kind != "readinessProbe" and failures[kind] >= probe.failure_threshold:
                self.killed = f"{kind} failed {failures[kind]} times in a row at {now:.1f}s"


@dataclass
class Container:
    """One container started by podman from a pod spec, with its published ports."""

    podman: Podman
    name: str
    ports: dict[int, int] = field(default_factory=dict)  # container port -> 127.0.0.1 port

    def address(self, container_port: int) -> str:
        return f"127.0.0.1:{self.ports[container_port]}"

    def state(self) -> dict[str, Any]:
        (info,) = json.loads(self.podman.run("inspect", self.name).stdout)
        return dict(info["State"])

    def running(self) -> bool:
        return bool(self.state()["Running"])

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def signal(self, name: str) -> None:
        self.podman.run("kill", f"--signal={name}", self.name)

    def wait(self, timeout_s: float) -> int:
        """The exit code; raises subprocess.TimeoutExpired when it is still running."""
        return int(self.podman.run("wait", self.name, timeout=timeout_s).stdout.strip())

    def remove(self) -> None:
        self.podman.run("rm", "--force", "--time=0", self.name, check=False)


def security_flags(spec: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    pod = spec.get("securityContext", {})
    own = container.get("securityContext", {})
    user = own.get("runAsUser", pod.get("runAsUser"))
    group = own.get("runAsGroup", pod.get("runAsGroup", user))
    flags = [f"--user={user}:{group}"] if user is not None else []
    if "fsGroup" in pod:  # the kubelet adds it as a supplemental group
        flags.append(f"--group-add={pod['fsGroup']}")
    if own.get("readOnlyRootFilesystem"):
        # Not even podman's own tmpfs on /tmp, /run: only the pod's volumes are writable.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    for capability in own.get("capabilities", {}).get("drop", []):
        flags.append(f"--cap-drop={capability}")
    for capability in own.get("capabilities", {}).get("add", []):
        flags.append(f"--cap-add={capability}")
    if own.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    assert not own.get("privileged"), "privileged containers are not emulated"
    # seccomp RuntimeDefault = podman's default profile: nothing to add.
    return flags


def volume_flags(
    spec: Mapping[str, Any],
    container: Mapping[str, Any],
    claims: Mapping[str, Path],
    scratch: Path,
) -> list[str]:
    """PVCs from `claims` (claim name -> host directory); emptyDirs as fresh host directories
    with the kubelet's 0777 mode (disk-backed, like the default medium)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    flags = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        read_only = bool(mount.get("readOnly"))
        if "persistentVolumeClaim" in volume:
            source = claims[volume["persistentVolumeClaim"]["claimName"]]
            read_only = read_only or bool(volume["persistentVolumeClaim"].get("readOnly"))
        elif "emptyDir" in volume:
            source = scratch / f"{container['name']}-{mount['name']}"
            source.mkdir(parents=True)
            source.chmod(0o777)
        else:
            raise AssertionError(f"volume type not emulated: {volume}")
        flags.append(f"--volume={source}:{mount['mountPath']}:{'ro' if read_only else 'rw'}")
    return flags


def resource_flags(container: Mapping[str, Any]) -> list[str]:
    limits = container.get("resources", {}).get("limits", {})
    flags = []
    if "memory" in limits:
        flags.append(f"--memory={memory_bytes(limits['memory'])}")
    if "cpu" in limits:
        # The scheduler would never place a pod whose limit exceeds the node; cap it here.
        cores = min(float(str(limits["cpu"]).rstrip("m")), float(os.cpu_count() or 1))
        flags.append(f"--cpus={cores}")
    return flags


def start(
    podman: Podman,
    name: str,
    docs: list[dict[str, Any]],
    spec: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    claims: Mapping[str, Path],
    scratch: Path,
    service_links: Mapping[str, str],
    extra_args: tuple[str, ...] = (),
) -> Container:
    """`podman run -d` the container as the kubelet would; ports published on 127.0.0.1."""
    env = {**service_links, **container_env(container, docs)}  # the pod's own env wins
    ports = [p["containerPort"] for p in container.get("ports", [])]
    entrypoint = json.dumps(container["command"]) if "command" in container else None
    args = [
        "run",
        "--detach",
        "--pull=never",
        f"--name={name}",
        f"--hostname={name}",
        *security_flags(spec, container),
        *volume_flags(spec, container, claims, scratch),
        *resource_flags(container),
        *[f"--env={key}={value}" for key, value in env.items()],
        *[f"--publish=127.0.0.1::{port}" for port in ports],
        *([f"--entrypoint={entrypoint}"] if entrypoint else []),
        container["image"],
        *container.get("args", []),
        *extra_args,
    ]
    podman.run(*args)
    started = Container(podman, name)
    for port in ports:
        published = podman.run("port", name, f"{port}/tcp").stdout.strip().splitlines()[0]
        started.ports[port] = int(published.rsplit(":", 1)[1])
    return started


def probes_of(container: Mapping[str, Any]) -> dict[str, Probe]:
    return {kind: Probe.of(kind, container[kind]) for kind in PROBE_KINDS}
