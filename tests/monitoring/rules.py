"""The rule file, the PrometheusRule made from it, and its time-scaled copy for the e2e test.

python -m tests.monitoring.rules --write   # regenerate deploy/monitoring/prometheusrule.yaml
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "fashion-serving.rules.yml"
RULE_TESTS = MONITORING / "fashion-serving.rules.test.yml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "fashion-serving.dashboard.json"
RUNBOOK = MONITORING / "RUNBOOK.md"

PROMETHEUS_RULE_HEADER = """\
# GENERATED from fashion-serving.rules.yml by `python -m tests.monitoring.rules --write`:
# edit the rule file, then regenerate (tests/monitoring fails while the two differ).
# The Prometheus Operator loads it if your Prometheus' ruleSelector selects its labels
# (e.g. add `release: <your kube-prometheus-stack release>` with a kustomize patch).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: fashion-serving
  namespace: fashion-serving
  labels:
    app.kubernetes.io/name: fashion-serving
    app.kubernetes.io/component: server
spec:
"""

# A Prometheus duration as the rules write them: one number and one unit.
DURATION = re.compile(r"^(\d+)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Where an expression holds a duration: a range selector or an offset.
RANGE = re.compile(r"\[(\d+[smhd])\]")
OFFSET = re.compile(r"\boffset (\d+[smhd])\b")
# Anything else that looks like a duration (a subquery step, `@`, ...) is not scaled: refuse it.
ANY_DURATION = re.compile(r"\b\d+(?:ms|[smhdwy])\b")


def load_groups(path: Path = RULES) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def alerts(path: Path = RULES) -> dict[str, dict[str, Any]]:
    """Every alerting rule by name."""
    return {r["alert"]: r for g in load_groups(path) for r in g["rules"] if "alert" in r}


def prometheus_rule_text(rules_text: str | None = None) -> str:
    """The PrometheusRule: the header, then the rule file from `groups:` on under `spec:`."""
    text = RULES.read_text() if rules_text is None else rules_text
    body = text[text.index("\ngroups:") + 1 :]
    indented = "".join(f"  {line}" if line.strip() else line for line in body.splitlines(True))
    return PROMETHEUS_RULE_HEADER + indented


def seconds(duration: str) -> int:
    match = DURATION.match(duration)
    if match is None:
        raise ValueError(f"not a plain duration: {duration!r}")
    return int(match[1]) * UNIT_S[match[2]]


def scale_duration(duration: str, factor: int) -> str:
    total = seconds(duration)
    if total % factor:
        raise ValueError(f"{duration} is not a whole number of seconds divided by {factor}")
    return f"{total // factor}s"


def scale_expr(expr: str, factor: int) -> str:
    scaled = RANGE.sub(lambda m: f"[{scale_duration(m[1], factor)}]", expr)
    scaled = OFFSET.sub(lambda m: f"offset {scale_duration(m[1], factor)}", scaled)
    # Every duration left must be one just written (…s); a recording rule's name such
    # as job:x:rate5m is not a duration (no word boundary before the digit).
    leftover = set(ANY_DURATION.findall(RANGE.sub("", OFFSET.sub("", scaled))))
    if leftover:
        raise ValueError(f"durations the scaling does not handle in {expr!r}: {leftover}")
    return scaled


def scaled_groups(factor: int, path: Path = RULES) -> list[dict[str, Any]]:
    """The rule file with every window, offset and ``for`` divided by ``factor``.

    The expressions, thresholds, labels and annotations stay exactly as written: what the
    e2e test proves is the production rules, run ``factor`` times faster.
    """
    groups = load_groups(path)
    for group in groups:
        if "interval" in group:
            group["interval"] = scale_duration(group["interval"], factor)
        for rule in group["rules"]:
            rule["expr"] = scale_expr(rule["expr"], factor)
            if "for" in rule:
                rule["for"] = scale_duration(rule["for"], factor)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {PROMETHEUS_RULE.name}")
    args = parser.parse_args()
    text = prometheus_rule_text()
    if args.write:
        PROMETHEUS_RULE.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
