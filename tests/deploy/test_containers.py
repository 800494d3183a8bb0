"""The images, built with podman and run the way a kubelet runs the rendered manifests: the
first deploy (a server pod before any model exists, then the training Job), predictions,
metrics, a new version under load, a canary labelled, promoted and rolled back by the
fashion-repo Job under load, and termination under load.

One server container serves the whole module, in the order of a real deployment's life; the
tests after the first make sure a model was published, so each can also run alone.
Skipped with the reason where podman is missing or cannot run; with CI=true they must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from bench.memory import large_json_body, post
from server._proto.fashion.v1 import prediction_pb2 as pb
from server._proto.fashion.v1 import prediction_pb2_grpc as pb_grpc
from server.app import SETTLE_S
from tests.deploy import kubelet
from tests.deploy.kubelet import MASTER_SERVICE, SERVING, Container, Prober
from tests.deploy.manifests import IMAGES, image_name_and_tag, one, render
from tests.deploy.podman import Podman, unavailable
from training.data import load_test_split

# A guard against hangs only; the first test's setup includes building the images (a fresh
# machine: ~7 min on 2 cores).
pytestmark = pytest.mark.timeout(1800)

# The Job trains for 20 epochs on 60k images; here a subset is enough to publish a real
# version (flags added to the Job's command, which has none of its own).
TRAIN_ARGS = ("--limit", "2000", "--epochs", "1")
TRAIN_TIMEOUT_S = 600
POLL_S = 0.2


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool is not installed (Debian's prometheus; scripts/test.sh installs it)")
    return str(path)


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    return Podman.find(tmp_path_factory.mktemp("podman"))


def image_of(docs: list[dict[str, Any]], kind: str) -> str:
    (container,) = one(docs, kind)["spec"]["template"]["spec"]["containers"]
    return str(container["image"])


@pytest.fixture(scope="session")
def images(podman: Podman) -> dict[str, str]:
    """Both images, tagged as the manifests name them (layers cached between runs)."""
    built = {}
    for docs, kind in ((render("overlays/cpu"), "Deployment"), (render("training"), "Job")):
        image = image_of(docs, kind)
        podman.build(IMAGES[image_name_and_tag(image)[0]], image)
        built[kind] = image
    return built


@dataclass
class Load:
    """Client threads sending Predict in a loop, each on its own channel; every call recorded
    as (sent, done, status code name, model version)."""

    address: str
    images: np.ndarray
    threads: int
    per_request: int = 1
    pause_s: float = 0.0
    label: str = ""  # version_label ("" = the model's default version)
    calls: list[tuple[float, float, str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)

    def _run(self, n: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.PredictionServiceStub(channel)
            i = n
            while not self._stop.is_set():
                batch = [
                    pb.Image(raw=self.images[(i + k) % len(self.images)].tobytes())
                    for k in range(self.per_request)
                ]
                i += self.per_request
                sent = time.monotonic()
                try:
                    request = pb.PredictRequest(images=batch, version_label=self.label)
                    reply = stub.Predict(request, timeout=30)
                    code, version = "OK", int(reply.model_version)
                except grpc.RpcError as exc:
                    code, version = exc.code().name, 0
                self.calls.append((sent, time.monotonic(), code, version))
                if code == "UNAVAILABLE" and self._stop.wait(0.05):  # a client's backoff
                    return
                if self.pause_s and self._stop.wait(self.pause_s):
                    return

    def count(self, *, after: float = 0.0) -> int:
        return sum(1 for sent, *_ in self.calls if sent >= after)


@dataclass
class Deployment:
    """The server pod of the cpu overlay and the model volume the training Job writes."""

    podman: Podman
    images: dict[str, str]
    volume: Path
    scratch: Path
    server: Container
    prober: Prober
    grpc_port: int
    metrics_port: int
    started: float
    job_runs: int = 0

    def health(self, service: str) -> int | None:
        return kubelet.grpc_health(self.server.address(self.grpc_port), service, 2)

    def versions(self) -> list[int]:
        root = self.volume / "fashion"
        if not root.exists():
            return []
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())

    def start_job(
        self,
        kustomization: str,
        tag: str,
        *,
        env: Mapping[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> Container:
        """Start a Job's container (as the Job runs it) on the server's model volume. ``env``
        sets the container's variables, replacing a value or adding the variable, as
        `kubectl set env` does."""
        docs = render(kustomization)
        spec = one(docs, "Job")["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        variables = container.setdefault("env", [])
        for key, value in (env or {}).items():
            variables[:] = [v for v in variables if v["name"] != key]
            variables.append({"name": key, "value": value})
        self.job_runs += 1
        name = f"{self.server.name}-{tag}-{self.job_runs}"
        # enableServiceLinks: false in the Job: only the master Service's variables.
        assert spec["enableServiceLinks"] is False
        return kubelet.start(
            self.podman,
            name,
            docs,
            spec,
            container,
            claims={"fashion-models": self.volume},
            scratch=self.scratch / name,
            service_links=kubelet.service_link_env([MASTER_SERVICE]),
            extra_args=extra_args,
        )

    def run_trainer(self) -> Container:
        """Start the training Job's container on the same volume."""
        return self.start_job("training", "train", extra_args=TRAIN_ARGS)

    def run_repo(self, *args: str) -> tuple[int, str]:
        """One fashion-repo Job (deploy/k8s/repo) run to completion: its exit code and log.
        The arguments go where deploy/README's `kubectl set env ... FASHION_REPO_ARGS=` puts
        them."""
        job = self.start_job("repo", "repo", env={"FASHION_REPO_ARGS": " ".join(args)})
        try:
            return job.wait(120), job.logs()
        finally:
            job.remove()

    def train(self) -> int:
        """One training Job run to completion; returns the version it published."""
        before = self.versions()
        trainer = self.run_trainer()
        try:
            code = trainer.wait(TRAIN_TIMEOUT_S)
            assert code == 0, f"trainer exited {code}:\n{trainer.logs()[-5000:]}"
        finally:
            trainer.remove()
        (new,) = set(self.versions()) - set(before)
        return new

    def wait_ready(self, budget_s: float) -> float:
        deadline = time.monotonic() + budget_s
        while self.health(kubelet_readiness(self)) != SERVING:
            assert self.server.running(), f"server exited:\n{self.server.logs()[-5000:]}"
            assert self.prober.killed is None, self.prober.killed
            assert time.monotonic() < deadline, f"not ready within {budget_s} s"
            time.sleep(POLL_S)
        return time.monotonic()

    def ensure_model(self) -> None:
        """For a test run alone: publish a first version if the first-deploy test did not."""
        if not self.versions():
            self.train()
        self.wait_ready(self.prober.probes["startupProbe"].budget_s)


def kubelet_readiness(deployment: Deployment) -> str:
    return deployment.prober.probes["readinessProbe"].service


@pytest.fixture(scope="module")
def deployment(
    podman: Podman, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    docs = render("overlays/cpu")
    spec = one(docs, "Deployment", "fashion-serving")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    scratch = tmp_path_factory.mktemp("pods")
    # The model PVC, fresh: like a first deploy. fsGroup 10001 (set by the Job) makes the
    # kubelet give the volume that group, writable and setgid.
    volume = tmp_path_factory.mktemp("fashion-models")
    try:
        os.chown(volume, 0, 10001)
        volume.chmod(0o2775)
    except PermissionError:
        volume.chmod(0o777)
    # The namespace's own Services as service-link variables, although the Deployment turns
    # them off: a cluster policy or a patched manifest may turn them back on, and the server
    # must start either way.
    services = [d for d in docs if d["kind"] == "Service"]
    links = kubelet.service_link_env([MASTER_SERVICE, *services, *kserve_services()])
    assert "FASHION_SERVING_PORT" in links and "FASHION_PREDICTOR_SERVICE_HOST" in links
    probes = kubelet.probes_of(container)
    grpc_port = probes["startupProbe"].port
    metrics_port = int(
        one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
    )
    name = f"fashion-test-{os.getpid()}"
    started = time.monotonic()
    server = kubelet.start(
        podman,
        name,
        docs,
        spec,
        container,
        claims={"fashion-models": volume},
        scratch=scratch,
        service_links=links,
    )
    prober = Prober(server.address(grpc_port), probes, started=started)
    prober.start()
    deployment = Deployment(
        podman, images, volume, scratch, server, prober, grpc_port, metrics_port, started
    )
    try:
        yield deployment
    finally:
        prober.stop()
        server.remove()
        for leftover in podman.run("ps", "-a", "--format={{.Names}}").stdout.split():
            if leftover.startswith(f"{name}-"):
                podman.run("rm", "--force", "--time=0", leftover, check=False)


def kserve_services() -> list[dict[str, Any]]:
    """The Service KServe creates for the example InferenceService (RawDeployment):
    `<name>-predictor`, port 80 to the predictor's first container port, the others as is."""
    isvc = one(render("kserve"), "InferenceService")
    (container,) = isvc["spec"]["predictor"]["containers"]
    ports = [
        {"name": port["name"], "port": 80 if n == 0 else port["containerPort"], "protocol": "TCP"}
        for n, port in enumerate(container["ports"])
    ]
    name = f"{isvc['metadata']['name']}-predictor"
    return [{"metadata": {"name": name}, "spec": {"ports": ports}}]


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    images, _labels, _dir = load_test_split()
    return images[:512]


def test_first_deploy_waits_for_the_training_job_then_turns_ready(
    deployment: Deployment,
) -> None:
    probes = deployment.prober.probes
    startup = probes["startupProbe"]
    # Started before any model exists: alive (the startup probe passes in its budget) ...
    while deployment.prober.startup_done_s is None:
        assert deployment.server.running(), deployment.server.logs()[-5000:]
        assert deployment.prober.killed is None, deployment.prober.killed
        assert time.monotonic() - deployment.started < startup.budget_s + startup.period_s
        time.sleep(POLL_S)
    assert deployment.prober.startup_done_s <= startup.budget_s
    assert not deployment.versions()
    # ... but not ready, and it says why.
    assert deployment.health(probes["readinessProbe"].service) != SERVING
    assert deployment.health(probes["livenessProbe"].service) == SERVING
    with grpc.insecure_channel(deployment.server.address(deployment.grpc_port)) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.PredictionServiceStub(channel).Predict(
                pb.PredictRequest(images=[pb.Image(raw=bytes(784))]), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    # The training Job runs meanwhile: the waiting server stays alive and unready throughout.
    trainer = deployment.run_trainer()
    try:
        while trainer.running():
            assert deployment.server.running(), deployment.server.logs()[-5000:]
            assert deployment.prober.killed is None, deployment.prober.killed
            if not deployment.versions():
                assert deployment.health(probes["readinessProbe"].service) != SERVING
            time.sleep(1.0)
        code = trainer.wait(60)
        assert code == 0, f"trainer exited {code}:\n{trainer.logs()[-5000:]}"
    finally:
        trainer.remove()
    assert deployment.versions() == [1]
    published = time.monotonic()
    # Ready within one poll interval plus loading, well inside a readiness budget.
    ready = deployment.wait_ready(startup.budget_s)
    assert ready - published < probes["readinessProbe"].period_s + 10
    assert deployment.prober.killed is None
    # The kubelet's own readiness probe sees it too, within its period.
    deadline = time.monotonic() + 2 * probes["readinessProbe"].period_s
    while not any(
        kind == "readinessProbe" and status == SERVING
        for at, kind, status in deployment.prober.results
    ):
        assert time.monotonic() < deadline, deployment.prober.results[-10:]
        time.sleep(POLL_S)


def test_predictions_equal_in_process_onnxruntime(
    deployment: Deployment, test_images: np.ndarray
) -> None:
    deployment.ensure_model()
    with grpc.insecure_channel(deployment.server.address(deployment.grpc_port)) as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        version = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).version
        served = []
        for start in range(0, len(test_images), 64):
            chunk = test_images[start : start + 64]
            reply = stub.Predict(
                pb.PredictRequest(
                    images=[pb.Image(raw=image.tobytes()) for image in chunk],
                    include_probabilities=True,
                ),
                timeout=30,
            )
            assert reply.model_version == version
            served += [list(p.probabilities) for p in reply.predictions]
    session = ort.InferenceSession(
        str(deployment.volume / "fashion" / str(version) / "model.onnx"),
        providers=["CPUExecutionProvider"],
    )
    (expected,) = session.run(["probabilities"], {"images": test_images})
    np.testing.assert_allclose(np.array(served), expected, atol=1e-5)
    assert (np.array(served).argmax(axis=1) == expected.argmax(axis=1)).all()


def scrape(deployment: Deployment) -> str:
    docs = render("overlays/cpu")
    path = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"][
        "prometheus.io/path"
    ]
    url = f"http://{deployment.server.address(deployment.metrics_port)}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def start_every_rest_parse_worker(deployment: Deployment, workers: int) -> str:
    """The largest REST JSON bodies a request may hold (256 images), on fresh connections,
    until every worker has started its REST parse worker (in the scrape): the pod's memory
    as its limit must allow it. The scrape that shows them all."""
    docs = render("overlays/cpu")
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    (http,) = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    url = f"http://{deployment.server.address(http)}/v2/models/fashion/infer"
    body = large_json_body(256)
    wanted = {f'process="worker-{i}/rest-parse"' for i in range(workers)}
    for _ in range(80):
        assert post(url, body) == 200
        text = scrape(deployment)
        if all(label in text for label in wanted):
            return text
    raise AssertionError(f"80 bodies did not reach every worker: {wanted}")


def test_metrics_scrape_passes_promtool_and_has_process_series(deployment: Deployment) -> None:
    deployment.ensure_model()
    text = start_every_rest_parse_worker(deployment, workers=2)
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The standard series of every exporter, measured inside the container: with the
    # Deployment's workers (one per CPU of the limit: 2), one per process, labelled.
    series = {line.split()[0] for line in text.splitlines() if line and line[0] != "#"}
    # Each worker's REST parse worker is reported too: it holds memory the pod's limit counts.
    processes = {"supervisor", "worker-0", "worker-1", "worker-0/rest-parse", "worker-1/rest-parse"}
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        found = {s.split('process="')[1].split('"')[0] for s in series if s.startswith(name + "{")}
        assert found == processes, (name, found)
    assert any(s.startswith("python_info{") for s in series)
    assert any(s.startswith("fashion_model_info{") for s in series)
    assert any(s.startswith("fashion_workers{") for s in series)
    rss = [
        float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("process_resident_memory_bytes{")
    ]
    # Every worker has served 256-image batches and parsed 256-image JSON bodies.
    assert 0 < sum(rss) < 1024**3, "the pod's memory limit is 1 GiB: every process together"


# A line in --log-format text (server/logs.py): TIME [worker N ]LEVEL LOGGER: message.
TEXT_LOG_LINE = re.compile(r"^\S+ \S+ (worker \d+ )?(DEBUG|INFO|WARNING|ERROR) ", re.M)


def test_the_container_logs_json_lines_and_no_onnxruntime_telemetry(deployment: Deployment) -> None:
    deployment.ensure_model()
    log = deployment.server.logs()
    # The ConfigMap's FASHION_LOG_FORMAT=json: Python's lines are JSON objects, none text.
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(
        r["level"] == "INFO"
        and r["logger"] == "server.supervisor"
        and r["message"].startswith("ready: 2 workers serving fashion")
        for r in records
    ), log[-3000:]
    assert not TEXT_LOG_LINE.search(log), log[-3000:]
    # With telemetry on, onnxruntime tries to persist a device ID under $HOME and, on the
    # read-only root filesystem, says so at import.
    assert not re.search(r"telemetry", log, re.IGNORECASE), log[-3000:]


# Run inside the server's container: an OTLP/gRPC receiver (the collector's side) on
# loopback, and the server's own Tracing exporting a span to it, as --otlp-endpoint would.
EXPORT_ONE_SPAN = """
import concurrent.futures, grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as rpc
from server.tracing import Tracing
received = []
class Receiver(rpc.TraceServiceServicer):
    def Export(self, request, context):
        received.append(request)
        return pb.ExportTraceServiceResponse()
receiver = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
rpc.add_TraceServiceServicer_to_server(Receiver(), receiver)
port = receiver.add_insecure_port("127.0.0.1:0")
receiver.start()
tracing = Tracing.from_environment(f"http://127.0.0.1:{port}", {})
tracing.start("ModelInfer", None).end()
tracing.shutdown()
receiver.stop(0)
print(*[s.name for r in received for rs in r.resource_spans for ss in rs.scope_spans
        for s in ss.spans])
"""


def test_the_server_image_exports_traces(deployment: Deployment) -> None:
    """The image holds the otel extra (the tracing component turns it on): a span leaves."""
    result = deployment.podman.run(
        "exec", deployment.server.name, "python", "-c", EXPORT_ONE_SPAN, timeout=60
    )
    assert result.stdout.split() == ["ModelInfer"], result.stdout + result.stderr


def test_server_switches_to_a_new_trained_version_under_load_without_a_failed_request(
    deployment: Deployment, test_images: np.ndarray
) -> None:
    deployment.ensure_model()
    (current,) = deployment.versions()[-1:]
    address = deployment.server.address(deployment.grpc_port)
    with Load(address, test_images, threads=2, pause_s=0.005) as load:
        new = deployment.train()
        deadline = time.monotonic() + 60
        while not any(version == new for *_, version in load.calls):
            assert time.monotonic() < deadline, f"still serving {current} after {new} appeared"
            time.sleep(POLL_S)
        switched = time.monotonic()
        while load.count(after=switched) < 20:
            time.sleep(POLL_S)
    codes = {code for _, _, code, _ in load.calls}
    assert codes == {"OK"}, codes
    versions = [version for *_, version in sorted(load.calls)]
    assert versions[0] == current and versions[-1] == new
    assert set(versions) == {current, new}
    assert deployment.prober.killed is None


def predicted_version(address: str, label: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        request = pb.PredictRequest(images=[pb.Image(raw=bytes(784))], version_label=label)
        reply = pb_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    return int(reply.model_version)


def wait_for_version(address: str, version: int, label: str = "") -> None:
    """Until the server answers from ``version`` (it polls the volume every few seconds)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if predicted_version(address, label) == version:
                return
        except grpc.RpcError as exc:  # the label may not exist yet
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        assert time.monotonic() < deadline, f"{label or 'default'} never reached {version}"
        time.sleep(POLL_S)


def test_the_repo_job_labels_promotes_and_rolls_back_a_canary_under_load(
    deployment: Deployment, test_images: np.ndarray
) -> None:
    """deploy/README's canary flow with the fashion-repo Job, as a kubelet runs it (non-root,
    read-only root, the volume writable, its memory limit) beside the running server pod."""
    deployment.ensure_model()
    if len(deployment.versions()) < 2:
        deployment.train()
    old, new = deployment.versions()[-2:]
    address = deployment.server.address(deployment.grpc_port)
    for command in (
        ("policy", "fashion", "latest:2"),
        ("label", "fashion", "stable", str(old)),
        ("label", "fashion", "canary", str(new)),
    ):
        code, log = deployment.run_repo(*command)
        assert code == 0, log
    wait_for_version(address, new, "canary")
    wait_for_version(address, old)
    # A refused change fails the Job, says what exists, and writes nothing.
    config = (deployment.volume / "fashion" / "config.json").read_bytes()
    code, log = deployment.run_repo("label", "fashion", "canary", "99")
    assert code == 1 and "99" in log and str(new) in log, log
    assert (deployment.volume / "fashion" / "config.json").read_bytes() == config
    with (
        Load(address, test_images, threads=1, pause_s=0.005) as stable,
        Load(address, test_images, threads=1, pause_s=0.005, label="canary") as canary,
    ):
        code, log = deployment.run_repo("promote", "fashion")
        assert code == 0, log
        wait_for_version(address, new)
        code, log = deployment.run_repo("rollback", "fashion")
        assert code == 0, log
        wait_for_version(address, old)
        rolled_back = time.monotonic()
        while stable.count(after=rolled_back) < 10:
            time.sleep(POLL_S)
    assert {code for *_, code, _ in stable.calls + canary.calls} == {"OK"}
    assert {version for *_, version in canary.calls} == {new}
    # Every default answer came from stable as it moved: old, then new, then old again.
    versions = [version for *_, version in sorted(stable.calls)]
    moves = [v for n, v in enumerate(versions) if n == 0 or v != versions[n - 1]]
    assert moves == [old, new, old], moves
    code, log = deployment.run_repo("list", "fashion")
    assert code == 0 and f"stable -> {old}" in log and f"canary -> {new}" in log, log
    assert deployment.prober.killed is None


def test_prestop_then_sigterm_under_load_drains_and_exits_zero_within_the_grace_period(
    deployment: Deployment, test_images: np.ndarray
) -> None:
    deployment.ensure_model()
    docs = render("overlays/cpu")
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace_s = spec["terminationGracePeriodSeconds"]
    readiness = deployment.prober.probes["readinessProbe"]
    address = deployment.server.address(deployment.grpc_port)
    with Load(address, test_images, threads=4, per_request=32) as load:
        while load.count() < 20:
            time.sleep(POLL_S)
        # preStop: the kubelet sleeps while the pod leaves the endpoints; the server knows
        # nothing of it and keeps serving.
        pre_stop = time.monotonic()
        deadline = pre_stop + pre_stop_s
        while time.monotonic() < deadline:
            assert deployment.health(readiness.service) == SERVING
            time.sleep(POLL_S)
        # Taken before: `podman kill` returns some time after the signal was delivered.
        sigterm = time.monotonic()
        deployment.server.signal("TERM")
        code = deployment.server.wait(grace_s - pre_stop_s)
        exited = time.monotonic()
        load.stop()
    log = deployment.server.logs()
    assert code == 0, log[-5000:]
    assert exited - pre_stop <= grace_s
    assert "stopped" in log
    # Nothing in flight is lost: every call sent before SIGTERM succeeded; later ones got
    # OK or the explicit, retryable UNAVAILABLE (never INTERNAL or a hang) while the server
    # settles. KNOWN DEFECT, pre-existing (reproduced on the tree of 8bee8cc too): a call
    # that reaches the transport at the instant grpc's server.stop() begins, i.e. at the end
    # of the settle window (SETTLE_S after SIGTERM), is CANCELLED by grpc core; see
    # deploy/README.md "Shutdown". Only that instant may give CANCELLED.
    before = [c for c in load.calls if c[0] < sigterm]
    after = [c for c in load.calls if c[0] >= sigterm]
    failed = [
        (sent - sigterm, done - sigterm, code) for sent, done, code, _ in before if code != "OK"
    ]
    assert before and not failed, f"sent before SIGTERM, failed (s relative to it): {failed}"
    assert {code for _, _, code, _ in after} <= {"OK", "UNAVAILABLE", "CANCELLED"}
    early_cancels = [
        (sent - sigterm, done - sigterm)
        for sent, done, code, _ in after
        if code == "CANCELLED" and done - sigterm < SETTLE_S * 0.9
    ]
    assert not early_cancels, f"CANCELLED during the settle window: {early_cancels}"
    in_flight = [c for c in before if c[1] > sigterm]
    assert in_flight, "no request was in flight at SIGTERM: not a test under load"
    assert deployment.prober.killed is None, deployment.prober.killed
