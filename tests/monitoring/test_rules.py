"""deploy/monitoring's rules: promtool checks them and runs their unit tests; every alert
has a firing and a quiet unit test, the annotations an operator needs and a runbook
section; the PrometheusRule says the same; the e2e test's time-scaled copy changes nothing
but durations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.monitoring import rules
from tests.monitoring.prometheus import promtool

SEVERITIES = {"critical", "warning"}


def test_rule_file_passes_promtool_check() -> None:
    result = promtool("check", "rules", str(rules.RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(rules.RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    spec = yaml.safe_load(rules.RULE_TESTS.read_text())
    assert spec["rule_files"] == [rules.RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in spec["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
            for alert in case["exp_alerts"]:
                # Rendered annotations are compared too: the templates are tested.
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
    names = set(rules.alerts())
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("name", sorted(rules.alerts()))
def test_alert_has_severity_summary_description_and_runbook(name: str) -> None:
    alert = rules.alerts()[name]
    assert name.startswith("FashionServing")
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    # The description shows the values it is about, except where there are none: absent()
    # fires on a missing series.
    if "absent(" not in alert["expr"]:
        assert "$value" in annotations["description"] or "$labels" in annotations["description"]
    url = annotations["runbook_url"]
    assert url == f"deploy/monitoring/RUNBOOK.md#{name.lower()}"
    assert (rules.ROOT / url.split("#")[0]).is_file()


def runbook_sections() -> dict[str, str]:
    text = rules.RUNBOOK.read_text()
    parts = re.split(r"^## (\S+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_runbook_has_one_section_per_alert_saying_what_it_means_checks_and_does() -> None:
    sections = runbook_sections()
    alert_sections = {k: v for k, v in sections.items() if k.startswith("FashionServing")}
    assert set(alert_sections) == set(rules.alerts())
    for name, body in alert_sections.items():
        for part in ("**What it means.**", "**What to check.**", "**What to do.**"):
            assert part in body, f"{name}: no {part}"
    # The summary table links every alert.
    for name in rules.alerts():
        assert f"[{name}](#{name.lower()})" in rules.RUNBOOK.read_text()


def test_every_recorded_series_an_expression_reads_is_recorded_first() -> None:
    recorded: set[str] = set()
    for group in rules.load_groups():
        for rule in group["rules"]:
            used = set(re.findall(r"\b[a-z_]+:[a-z_0-9]+:[a-z_0-9]+\b", rule["expr"]))
            assert used <= recorded, f"{rule.get('record') or rule['alert']}: {used - recorded}"
            if "record" in rule:
                recorded.add(rule["record"])


def test_prometheus_rule_is_the_rule_file() -> None:
    assert rules.PROMETHEUS_RULE.read_text() == rules.prometheus_rule_text(), (
        "prometheusrule.yaml is stale: python -m tests.monitoring.rules --write"
    )
    resource = yaml.safe_load(rules.PROMETHEUS_RULE.read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == yaml.safe_load(rules.RULES.read_text())


def strip_durations(expr: str) -> str:
    return re.sub(r"\[\d+[smhd]\]|offset \d+[smhd]", "D", expr)


def test_scaled_rules_differ_only_in_durations_and_pass_promtool(tmp_path: Path) -> None:
    original = rules.load_groups()
    scaled = rules.scaled_groups(30)
    for group, fast in zip(original, scaled, strict=True):
        for rule, quick in zip(group["rules"], fast["rules"], strict=True):
            assert strip_durations(rule["expr"]) == strip_durations(quick["expr"])
            assert {k: v for k, v in rule.items() if k not in ("expr", "for")} == {
                k: v for k, v in quick.items() if k not in ("expr", "for")
            }
            if "for" in rule:
                assert rules.seconds(quick["for"]) * 30 == rules.seconds(rule["for"])
    assert "[10s]" in rules.scaled_groups(30)[0]["rules"][0]["expr"]
    path = tmp_path / "fast.rules.yml"
    path.write_text(yaml.safe_dump({"groups": scaled}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scaling_refuses_a_duration_it_cannot_scale() -> None:
    with pytest.raises(ValueError, match="does not handle"):
        rules.scale_expr("max_over_time(rate(x[5m])[1h:1m])", 30)
    with pytest.raises(ValueError, match="whole number"):
        rules.scale_expr("rate(x[45s])", 30)
