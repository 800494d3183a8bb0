"""deploy/k8s: every kustomization renders, passes strict schema validation for a range of
Kubernetes versions, and agrees with the server's settings, the images and itself."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from server import tracing
from server.app import READINESS_SERVICE, SETTLE_S
from server.config import ENV_PREFIX, Settings, load_settings
from server.watchdog import PING_EVERY_S
from tests.deploy.manifests import (
    CRD_KINDS,
    IMAGES,
    K8S,
    KUSTOMIZATIONS,
    OVERLAYS,
    ROOT,
    SERVICEMONITOR,
    TRACING,
    container_env,
    containers,
    cpu_cores,
    dockerfile,
    image_name_and_tag,
    kubectl,
    one,
    pod_specs,
    render,
    render_text,
)

# Native gRPC probes are GA in 1.27, `preStop: sleep` exists from 1.30 (beta, on by default).
MIN_KUBERNETES = (1, 30)
# After server.stop(grace) returns, the batcher drains and the process exits.
EXIT_MARGIN_S = 5.0
GPU = "nvidia.com/gpu"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
KNOWN_SETTINGS = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.__dataclass_fields__}


def kubernetes_versions() -> list[str]:
    utils = pytest.importorskip(
        "kubernetes_validate.utils", reason="kubernetes-validate (dev extra) is not installed"
    )
    versions = sorted({tuple(int(p) for p in v.split(".")[:2]) for v in utils.all_versions()})
    supported = [
        f"{major}.{minor}" for major, minor in versions if (major, minor) >= MIN_KUBERNETES
    ]
    assert len(supported) >= 4, f"kubernetes-validate knows too few versions: {versions}"
    return supported


def kubernetes_validate_cli() -> str:
    path = shutil.which("kubernetes-validate") or str(
        Path(sys.executable).parent / "kubernetes-validate"
    )
    if not Path(path).is_file():
        pytest.skip("kubernetes-validate (dev extra) is not installed")
    return path


def server_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment", "fashion-serving")["spec"]["template"]["spec"][
        "containers"
    ]
    return container


def settings_of(overlay: str) -> Settings:
    docs = render(f"overlays/{overlay}")
    container = server_container(docs)
    image = dockerfile(IMAGES[image_name_and_tag(container["image"])[0]])
    base = {k: v for k, v in image.env().items() if k.startswith(ENV_PREFIX)}
    return load_settings(container.get("args", []), container_env(container, docs, base))


def validate_strict(paths: list[Path], version: str) -> None:
    result = subprocess.run(
        [kubernetes_validate_cli(), "--strict", "-k", version, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A missing schema is only a warning: acceptable for CRDs, never for a core kind
    # (a typo in apiVersion would otherwise pass unchecked).
    for kind in re.findall(r"Couldn't find schema for kind (\S+)", output):
        assert kind in CRD_KINDS, output


@pytest.fixture(scope="module")
def rendered_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("rendered")
    paths = []
    for name in KUSTOMIZATIONS:
        path = directory / (name.replace("/", "-") + ".yaml")
        path.write_text(render_text(name))
        paths.append(path)
    # The KServe predictor is a PodSpec plus a few KServe fields: validate that PodSpec
    # strictly as a Pod (the InferenceService itself has no schema offline).
    predictor = dict(one(render("kserve"), "InferenceService")["spec"]["predictor"])
    for kserve_field in ("minReplicas", "maxReplicas"):
        predictor.pop(kserve_field)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-predictor"},
        "spec": predictor,
    }
    (directory / "kserve-predictor-pod.yaml").write_text(yaml.safe_dump(pod))
    paths.append(directory / "kserve-predictor-pod.yaml")
    return paths


def test_every_kustomization_passes_strict_validation_for_each_kubernetes_version(
    rendered_files: list[Path],
) -> None:
    for version in kubernetes_versions():
        validate_strict(rendered_files, version)


def render_with_component(tmp_path: Path, component: Path) -> list[dict[str, Any]]:
    """The CPU overlay with one optional component, as an overlay of the user's would add it."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize refuses absolute paths to bases and components.
                "resources": [os.path.relpath(K8S / "overlays" / "cpu", tmp_path)],
                "components": [os.path.relpath(component, tmp_path)],
            }
        )
    )
    return render(tmp_path)


def test_servicemonitor_component_scrapes_the_metrics_port_instead_of_annotations(
    tmp_path: Path,
) -> None:
    docs = render_with_component(tmp_path, SERVICEMONITOR)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    port_names = {e["port"] for e in monitor["spec"]["endpoints"]}
    services = [
        s
        for s in docs
        if s["kind"] == "Service" and selector.items() <= s["metadata"]["labels"].items()
    ]
    metrics_ports = [p for s in services for p in s["spec"]["ports"] if p["name"] in port_names]
    assert len(metrics_ports) == 1, "exactly one Service port to scrape per pod"
    settings = settings_of("cpu")
    container = server_container(docs)
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert by_name[metrics_ports[0]["targetPort"]] == settings.metrics_port
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false", "would be scraped twice"
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    validate_strict([rendered], kubernetes_versions()[-1])


def test_tracing_component_turns_tracing_on_and_opens_only_dns_and_the_collector(
    tmp_path: Path,
) -> None:
    docs = render_with_component(tmp_path, TRACING)
    container = server_container(docs)
    image = dockerfile(IMAGES[image_name_and_tag(container["image"])[0]])
    base = {k: v for k, v in image.env().items() if k.startswith(ENV_PREFIX)}
    env = container_env(container, docs, base)
    settings = load_settings(container.get("args", []), env)  # a valid endpoint
    assert tracing.requested(settings.otlp_endpoint, env) and not tracing.disabled_by(env)
    collector_port = int(settings.otlp_endpoint.rsplit(":", 1)[1])
    policy = one(docs, "NetworkPolicy", "fashion-serving")
    egress = policy["spec"]["egress"]
    opened = {(p["port"], p["protocol"]) for rule in egress for p in rule["ports"]}
    assert opened == {(53, "UDP"), (53, "TCP"), (collector_port, "TCP")}
    assert "Egress" in policy["spec"]["policyTypes"]
    # Everything else is the CPU overlay's: the component adds, it does not replace.
    ingress = one(render("overlays/cpu"), "NetworkPolicy", "fashion-serving")["spec"]["ingress"]
    assert policy["spec"]["ingress"] == ingress
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    validate_strict([rendered], kubernetes_versions()[-1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probe_ports_container_ports_and_configured_ports_agree(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    settings = settings_of(overlay)
    container = server_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": settings.port,
        "http": settings.http_port,
        "metrics": settings.metrics_port,
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == settings.port, probe  # numeric, not a name
    # Startup and liveness ask whether the process works (service ""), which a server waiting
    # for its first model does: probing readiness there would kill it on a first deploy.
    assert container["startupProbe"]["grpc"].get("service", "") == ""
    assert container["livenessProbe"]["grpc"].get("service", "") == ""
    assert container["readinessProbe"]["grpc"]["service"] == READINESS_SERVICE
    assert settings.wait_for_model, "a first deploy must wait for the training Job, not exit"
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    for service in (d for d in docs if d["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: {port}"
            if port["targetPort"] == "grpc":
                assert port["appProtocol"] in ("kubernetes.io/h2c", "h2c")
            if port["targetPort"] == "http":
                assert port["appProtocol"] == "http"
    # Both Services carry the REST API beside gRPC.
    for service in (d for d in docs if d["kind"] == "Service"):
        assert "http" in {p["targetPort"] for p in service["spec"]["ports"]}
    policy = one(docs, "NetworkPolicy")
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {settings.port, settings.http_port, settings.metrics_port}
    assert all("from" not in rule or rule["from"] for rule in policy["spec"]["ingress"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_denies_all_egress(overlay: str) -> None:
    # The server only answers: no DNS, no telemetry, the model comes from the volume. An
    # Egress policy type with no rules denies everything; without the type, all is allowed.
    policy = one(render(f"overlays/{overlay}"), "NetworkPolicy")
    assert "Egress" in policy["spec"]["policyTypes"]
    assert policy["spec"].get("egress", []) == []


@pytest.mark.parametrize("job", ["training", "repo"])
def test_the_jobs_are_cut_off_from_the_network(job: str) -> None:
    docs = render(job)
    labels = one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not policy["spec"].get("egress") and not policy["spec"].get("ingress")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_fashion_variable_is_a_real_setting_with_a_valid_value(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    env = container_env(server_container(docs), docs)
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - KNOWN_SETTINGS
    assert not unknown, f"not server settings: {unknown}"
    settings = settings_of(overlay)  # raises ConfigError on any invalid value
    assert settings.host in ("0.0.0.0", "::"), "probes and Services reach the pod IP"
    assert settings.max_connection_age_s > 0, "long-lived clients must rebalance on scale-out"
    assert settings.metrics_port > 0 and settings.port > 0
    assert settings.device == ("cuda" if overlay == "gpu" else "cpu")
    # The kubelet's gRPC probes speak plaintext only: a TLS server would never turn Ready.
    assert not getattr(settings, "tls_cert", ""), "native gRPC probes cannot use TLS"
    limit = math.ceil(cpu_cores(server_container(docs)["resources"]["limits"]["cpu"]))
    # One worker per CPU of the limit (one per GPU on the GPU overlay), each with the limit
    # shared out as its onnxruntime threads (threads 0: the supervisor divides).
    assert settings.worker_count == (1 if overlay == "gpu" else limit)
    assert settings.threads == 0, "each worker's threads follow the limit and the workers"


def test_kserve_predictor_settings_are_valid() -> None:
    isvc = one(render("kserve"), "InferenceService")
    (container,) = isvc["spec"]["predictor"]["containers"]
    env = container_env(container, [])
    assert {k for k in env if k.startswith(ENV_PREFIX)} <= KNOWN_SETTINGS
    settings = load_settings(container.get("args", []), env)
    # Served over REST (KServe's default: the first port, http1), the gRPC port kept (h2c).
    assert container["ports"] == [
        {"name": "http1", "containerPort": settings.http_port, "protocol": "TCP"},
        {"name": "h2c", "containerPort": settings.port, "protocol": "TCP"},
    ]
    assert settings.http_port > 0
    assert container["readinessProbe"]["grpc"] == {
        "port": settings.port,
        "service": READINESS_SERVICE,
    }
    assert container["startupProbe"]["grpc"] == {"port": settings.port}
    assert container["livenessProbe"]["grpc"] == {"port": settings.port}
    assert settings.wait_for_model
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.model_repo) in mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_the_server_drain(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    settings = settings_of(overlay)
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = server_container(docs)
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop_s + SETTLE_S + settings.grace_s + EXIT_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] >= needed
    # While draining the server reports NOT_SERVING: liveness must not kill it meanwhile.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > SETTLE_S + settings.grace_s


@pytest.mark.parametrize("pod", [*OVERLAYS, "kserve"])
def test_a_hung_worker_is_replaced_before_liveness_restarts_the_container(pod: str) -> None:
    """Every server pod, the KServe predictor included (it ran 2 workers with the default
    --worker-timeout-s of 30 s: liveness could restart the whole container first)."""
    (container, settings) = {name: (c, s) for name, c, s in server_pods()}[pod]
    if settings.worker_count == 1:
        pytest.skip("one worker: no supervisor, liveness alone watches the process")
    live = container["livenessProbe"]
    # Liveness restarts the container after failureThreshold failed probes periodSeconds
    # apart: (failureThreshold - 1) periods after the first at the earliest. The watchdog
    # kills a silent worker within --worker-timeout-s plus one ping interval.
    earliest_restart_s = live["periodSeconds"] * (live["failureThreshold"] - 1)
    assert 0 < settings.worker_timeout_s + PING_EVERY_S < earliest_restart_s


MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
# What a pod is expected to hold, below its memory limit: 90 % is where
# FashionServingMemoryNearLimit fires.
ALERT_FRACTION = 0.9


def memory_mib(quantity: str | int) -> float:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|)", str(quantity))
    assert match, f"not a memory quantity this test reads: {quantity}"
    return int(match[1]) * MEMORY_UNITS[match[2]] / 2**20


def measured_memory_mib(workers: int) -> float:
    """A pod of ``workers`` workers serving stable and a canary, each worker having computed
    256-image batches and started its REST parse worker: from bench.memory's files in
    docs/perf/workers (PERFORMANCE.md, "Workers, measured"), the largest of each figure."""
    rows = json.loads((ROOT / "docs/perf/workers/memory.json").read_text())
    versions = json.loads((ROOT / "docs/perf/workers/memory-versions.json").read_text())
    supervisor = max(r["supervisor_mib"] for r in rows if r["workers"] > 1)
    worker = max(
        grown + parse
        for r in rows
        for grown, parse in zip(
            r["worker_mib_after_256_image_bodies"], r["rest_parse_mib"], strict=True
        )
    )
    # A further version: its sessions, and their arena once they compute 256 images.
    arena = max(
        after - before
        for r in rows
        for after, before in zip(
            r["worker_mib_after_256_image_bodies"],
            r["worker_mib"] or [r["process_mib"]],
            strict=True,
        )
    )
    first, last = versions[0], versions[-1]
    per_version = (last["process_mib"] - first["process_mib"]) / (
        last["versions"] - first["versions"]
    )
    canary = per_version + arena
    if workers == 1:
        one = [r for r in rows if r["workers"] == 1]
        return max(r["total_with_rest_parse_mib"] for r in one) + canary
    return supervisor + workers * (worker + canary)


def server_pods() -> list[tuple[str, dict[str, Any], Settings]]:
    found = []
    for overlay in OVERLAYS:
        docs = render(f"overlays/{overlay}")
        found.append((overlay, server_container(docs), settings_of(overlay)))
    (container,) = one(render("kserve"), "InferenceService")["spec"]["predictor"]["containers"]
    found.append(("kserve", container, load_settings([], container_env(container, []))))
    return found


def test_every_server_pod_logs_json_lines() -> None:
    """In a cluster a node agent reads the container's stderr line by line: JSON keeps a
    record (and its traceback) in one line, with its fields. tests/deploy/test_containers.py
    reads the lines of the running pod."""
    for name, _container, settings in server_pods():
        assert settings.log_format == "json", name


def test_the_memory_limit_holds_every_worker_with_a_canary() -> None:
    """Workers follow the CPU limit; the memory limit must follow them (measured memory of
    N workers with stable and a canary, each having served the largest requests over JSON,
    below the alert's 90 %). Raising the CPU limit alone (4 workers in 1 GiB) fails here.
    On the GPU overlay this is the host memory measured on CPU: a lower bound."""
    for name, container, settings in server_pods():
        limit = memory_mib(container["resources"]["limits"]["memory"])
        needed = measured_memory_mib(settings.worker_count)
        assert needed < ALERT_FRACTION * limit, (name, settings.worker_count, needed, limit)
    # The check can fail: the CPU overlay's 1 GiB would not hold 4 workers.
    assert measured_memory_mib(4) > ALERT_FRACTION * memory_mib("1Gi")


def all_pods() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (name, where, spec) for name in KUSTOMIZATIONS for where, spec in pod_specs(render(name))
    ]


def test_gpu_is_requested_only_by_the_gpu_overlay() -> None:
    for name, where, spec in all_pods():
        for container in containers(spec):
            wants_gpu = GPU in container["resources"].get("limits", {})
            assert wants_gpu == (name == "overlays/gpu"), f"{name}: {where}/{container['name']}"
            assert GPU not in container["resources"].get("requests", {}), "GPUs go in limits"
    spec = one(render("overlays/gpu"), "Deployment")["spec"]["template"]["spec"]
    assert server_container(render("overlays/gpu"))["resources"]["limits"][GPU] == 1
    assert any(t["key"] == GPU for t in spec["tolerations"])
    image = server_container(render("overlays/gpu"))["image"]
    assert image_name_and_tag(image)[0] == "fashion-serving-gpu"


def test_images_are_pinned_to_the_project_version_and_built_here() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, where, spec in all_pods():
        for container in containers(spec):
            image, tag = image_name_and_tag(container["image"])
            assert tag not in (None, "latest"), f"{name}: {where}: {container['image']}"
            assert tag == version, f"{name}: {where}: {container['image']} (project {version})"
            assert image in IMAGES, f"{name}: {where}: no Dockerfile builds {image}"
            command = container["command"]
            if command[:2] == ["/bin/sh", "-c"]:
                # Another of the project's programs in the same image (the fashion-repo Job).
                exec_, program, *_ = command[2].split()
                assert exec_ == "exec" and program in PROJECT["scripts"], where
            else:
                assert command == dockerfile(IMAGES[image]).exec_form("ENTRYPOINT"), where


def test_every_container_sets_cpu_and_memory_requests_and_limits() -> None:
    for name, where, spec in all_pods():
        for container in containers(spec):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources.get(kind, {}).keys(), (
                    f"{name}: {where}/{container['name']} lacks {kind}"
                )


def test_no_pod_gets_service_link_variables() -> None:
    # Otherwise the kubelet adds <SERVICE>_SERVICE_HOST, <SERVICE>_PORT=tcp://... for every
    # Service in the namespace: FASHION_SERVING_*, FASHION_PREDICTOR_* in our own pods.
    for name, where, spec in all_pods():
        assert spec.get("enableServiceLinks") is False, f"{name}: {where}"


def test_every_pod_is_hardened() -> None:
    for name, where, spec in all_pods():
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert context["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in containers(spec):
            c = container["securityContext"]
            assert c["allowPrivilegeEscalation"] is False, where
            assert c["readOnlyRootFilesystem"] is True, where
            assert c["capabilities"]["drop"] == ["ALL"] and "add" not in c["capabilities"]
            assert c.get("privileged", False) is False
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{name}: {where}: /tmp"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_budget_policy_and_autoscaler_select_the_server_pods(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"
    for service in (d for d in docs if d["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
    headless = one(docs, "Service", "fashion-serving-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert one(docs, "Service", "fashion-serving")["spec"]["type"] == "ClusterIP"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (
        one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    )
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # A budget that allows no disruption at minReplicas would block every node drain.
    assert pdb["spec"]["maxUnavailable"] >= 1


def test_server_reads_and_the_job_writes_the_same_model_volume() -> None:
    pvc = one(render("storage"), "PersistentVolumeClaim")
    namespace = pvc["metadata"]["namespace"]
    for name in KUSTOMIZATIONS:
        for doc in render(name):
            assert doc["metadata"].get("namespace") == namespace, f"{name}: {doc['kind']}"

    def models_mount(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
        claims = {
            v["name"]
            for v in spec["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]
        }
        (mount,) = [m for m in container["volumeMounts"] if m["name"] in claims]
        return mount

    for overlay in OVERLAYS:
        spec = one(render(f"overlays/{overlay}"), "Deployment")["spec"]["template"]["spec"]
        mount = models_mount(spec, server_container(render(f"overlays/{overlay}")))
        assert mount.get("readOnly") is True
        assert str(settings_of(overlay).model_repo) == mount["mountPath"]

    job = one(render("training"), "Job")
    spec = job["spec"]["template"]["spec"]
    (trainer,) = spec["containers"]
    mount = models_mount(spec, trainer)
    assert not mount.get("readOnly", False), "the Job publishes into the volume"
    assert spec["restartPolicy"] == "Never"
    from training.train import parse_args  # numpy only; no TensorFlow at import

    image_env = dockerfile("trainer.Dockerfile").env()
    args = parse_args(trainer.get("args", []), {**image_env, **container_env(trainer, [])})
    assert str(args.model_repo) == mount["mountPath"]

    repo_job = one(render("repo"), "Job")
    spec = repo_job["spec"]["template"]["spec"]
    (repo,) = spec["containers"]
    mount = models_mount(spec, repo)
    assert not mount.get("readOnly", False), "fashion-repo writes config.json"
    assert container_env(repo, [])["FASHION_MODEL_REPO"] == mount["mountPath"]
    assert spec["securityContext"]["fsGroup"] == job["spec"]["template"]["spec"][
        "securityContext"]["fsGroup"], "both Jobs write files the other must replace"  # fmt: skip


@pytest.mark.parametrize("arguments", ["list", "label fashion canary 4"])
def test_the_documented_repo_command_sets_the_jobs_arguments(arguments: str) -> None:
    """deploy/README's `kubectl set env --local -f deploy/k8s/repo/job.yaml ...` pipeline,
    with the pinned kubectl: the Job it prints runs that fashion-repo command, and a refusal
    is not retried. `list` too: kubectl prints nothing for a change that changes nothing,
    so the Job must not carry the variable's default itself (`fashion_repo list` applied
    nothing when it did)."""
    printed = subprocess.run(
        [kubectl(), "set", "env", "--local", "-f", str(K8S / "repo" / "job.yaml"), "-o",
         "yaml", f"FASHION_REPO_ARGS={arguments}"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    job = yaml.safe_load(printed)
    assert job is not None, "kubectl printed no Job"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container_env(container, [])["FASHION_REPO_ARGS"] == arguments
    assert container["command"] == [
        "/bin/sh", "-c", "exec fashion-repo ${FASHION_REPO_ARGS:-list}"
    ]  # fmt: skip
    assert job["spec"]["backoffLimit"] == 0
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "kubectl set env --local -f deploy/k8s/repo/job.yaml -o yaml" in readme
    # `kubectl apply -k deploy/k8s/repo` alone runs the default, `list`.
    (container,) = one(render("repo"), "Job")["spec"]["template"]["spec"]["containers"]
    assert "FASHION_REPO_ARGS" not in container_env(container, [])


def test_the_documented_registry_step_reaches_the_jobs_applied_from_their_files() -> None:
    """`kustomize edit set image` rewrites only what `apply -k` renders; deploy/README's
    fashion_repo and canary training run apply job.yaml itself, so its registry step edits
    their `image:` line, which must be there exactly once in each."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    line = "s|image: fashion-trainer:0.1.0|image: $REGISTRY/fashion-trainer:0.1.0|"
    assert line in readme
    for job in ("repo", "training"):
        text = (K8S / job / "job.yaml").read_text()
        assert text.count("image: fashion-trainer:0.1.0\n") == 1, job


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (["FASHION_TRAIN_LABEL=canary"], {"label": "canary", "epochs": 20, "arch": "course_cnn"}),
        # A flag in the Job would win over these (it had --epochs 20: bn_cnn trained 20
        # epochs, not its recipe's 30, and FASHION_TRAIN_EPOCHS did nothing).
        (["FASHION_TRAIN_ARCH=bn_cnn"], {"arch": "bn_cnn", "epochs": 30}),
        (["FASHION_TRAIN_EPOCHS=5"], {"epochs": 5}),
    ],
)
def test_the_documented_training_run_takes_every_variable(
    variables: list[str], expected: dict[str, object]
) -> None:
    """deploy/README's `kubectl set env --local -f deploy/k8s/training/job.yaml -o yaml
    FASHION_TRAIN_LABEL=canary` (and any other setting so): the trainer it prints is
    configured as the variables say."""
    from training.train import parse_args  # numpy only; no TensorFlow at import

    printed = subprocess.run(
        [kubectl(), "set", "env", "--local", "-f", str(K8S / "training" / "job.yaml"), "-o",
         "yaml", *variables],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    (trainer,) = yaml.safe_load(printed)["spec"]["template"]["spec"]["containers"]
    image_env = dockerfile("trainer.Dockerfile").env()
    config = parse_args(trainer.get("args", []), {**image_env, **container_env(trainer, [])})
    assert {name: getattr(config, name) for name in expected} == expected
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "kubectl set env --local -f deploy/k8s/training/job.yaml -o yaml" in readme
