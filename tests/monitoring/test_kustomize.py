"""deploy/monitoring as a kustomize component: with the cpu overlay it renders, passes
strict validation, and its ServiceMonitor, PrometheusRule and dashboard ConfigMap carry
exactly what the files here say, in the server's namespace, for the job the rules select."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import K8S, one, render
from tests.deploy.test_manifests import kubernetes_versions, validate_strict
from tests.monitoring import rules

COMPONENT = rules.MONITORING


@pytest.fixture
def rendered(tmp_path: Path) -> list[dict[str, Any]]:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize refuses absolute paths to bases and components.
                "resources": [os.path.relpath(K8S / "overlays" / "cpu", tmp_path)],
                "components": [os.path.relpath(COMPONENT, tmp_path)],
            }
        )
    )
    return render(tmp_path)


def test_component_passes_strict_validation(rendered, tmp_path: Path) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(rendered))
    validate_strict([path], kubernetes_versions()[-1])


def test_everything_lands_in_the_server_namespace(rendered) -> None:
    namespaces = {doc["metadata"].get("namespace") for doc in rendered}
    assert namespaces == {"fashion-serving"}


def test_prometheus_rule_carries_the_rule_file(rendered) -> None:
    rule = one(rendered, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(rules.RULES.read_text())


def test_dashboard_configmap_carries_the_dashboard_for_grafanas_sidecar(rendered) -> None:
    config_map = one(rendered, "ConfigMap", "fashion-serving-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config_map["data"].values()
    assert json.loads(text) == json.loads(rules.DASHBOARD.read_text())


def test_servicemonitor_job_is_the_job_the_rules_select(rendered) -> None:
    # The Operator names a ServiceMonitor's job after the Service (no jobLabel set here).
    monitor = one(rendered, "ServiceMonitor")
    assert "jobLabel" not in monitor["spec"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s
        for s in rendered
        if s["kind"] == "Service"
        and selector.items() <= s["metadata"]["labels"].items()
        and any(p["name"] == "metrics" for p in s["spec"]["ports"])
    ]
    assert [s["metadata"]["name"] for s in services] == ["fashion-serving"]
    jobs = set(re.findall(r'job="([^"]+)"', rules.RULES.read_text()))
    assert jobs == {"fashion-serving"}
    annotations = one(rendered, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false", "would be scraped twice"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_say_how_to_enable_it(overlay: str) -> None:
    text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
    hint = os.path.relpath(COMPONENT, K8S / "overlays" / overlay)
    assert f"#   - {hint}" in text
    assert (K8S / "overlays" / overlay / hint / "kustomization.yaml").is_file()
