"""The Grafana dashboard's panels and queries, with its variables filled in as Grafana would."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.monitoring.rules import DASHBOARD

# What Grafana substitutes before a query reaches Prometheus. $__rate_interval is
# max(4 x scrape interval, step + scrape interval); the tests scrape every second and
# look at a 10 s window, the e2e rules' 5 m window scaled down the same way.
VARIABLES = {
    "job": "fashion-serving",
    "instance": ".*",  # "All" (allValue)
    "__rate_interval": "10s",
}
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"{self.panel!r} {self.ref}: {self.expr}"


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels (collapsed rows) included, rows themselves too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(panel["title"], target.get("refId", "?"), target.get("expr", ""))
        for panel in panels(dashboard)
        if panel["type"] != "row"
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, values: dict[str, str] = VARIABLES) -> str:
    """``expr`` with every ``$var`` / ``${var}`` replaced; KeyError names an unknown one."""
    return VARIABLE.sub(lambda m: values[m[1] or m[2]], expr)


def variable_queries(dashboard: dict[str, Any]) -> list[Query]:
    """Each query variable's ``label_values(selector, label)`` as the PromQL that lists the
    same values: ``count by (label) (selector)``."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES.match(text.strip())
        assert match, f"variable {variable['name']}: only label_values(selector, label) is used"
        found.append(Query(f"${variable['name']}", "var", f"count by ({match[2]}) ({match[1]})"))
    return found
