"""The Grafana dashboard: valid JSON, a sound layout, a query in every panel, and every
query parses and runs in a real Prometheus. (The e2e test runs them again where there is
data, and requires data from each.)"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.monitoring import dashboard as dash
from tests.monitoring.prometheus import Prometheus, QueryError, binary
from tests.monitoring.rules import DASHBOARD

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary("prometheus")
    directory: Path = tmp_path_factory.mktemp("prometheus")
    server = Prometheus.start(directory, {"global": {"evaluation_interval": "1s"}})
    try:
        yield server
    finally:
        server.stop()


def test_dashboard_is_valid_json_with_identity_and_variables() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "fashion-serving" and board["title"]
    assert isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["allValue"] == dash.VARIABLES["instance"]
    assert set(variables) - {"datasource"} <= set(dash.VARIABLES)


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    board = dash.load()
    panels = list(dash.panels(board))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x, y in itertools.product(
            range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        ):
            assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
            cells[(x, y)] = panel["title"]


def test_every_panel_has_a_query_on_the_chosen_datasource() -> None:
    for panel in dash.panels(dash.load()):
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']!r}: say what it shows"
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel.get("targets", [])
        assert targets, f"{panel['title']!r} has no query"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in targets:
            assert target["expr"].strip(), f"{panel['title']!r} {target['refId']}: empty"
            assert target["datasource"] == DATASOURCE


def test_every_query_uses_only_known_variables_and_aggregates_explicitly() -> None:
    board = dash.load()
    for query in dash.queries(board) + dash.variable_queries(board):
        dash.substitute(query.expr)  # KeyError: an unknown variable
        if "$job" in query.expr:
            assert 'job="$job"' in query.expr, query
    # Robust to labels the server adds (model, version): every range query aggregates.
    for query in dash.queries(board):
        assert query.expr.lstrip("( ").startswith(("sum", "count", "max", "histogram_quantile")), (
            query
        )


def test_every_query_parses_and_runs_in_prometheus(prometheus: Prometheus) -> None:
    board = dash.load()
    failures = []
    for query in dash.queries(board) + dash.variable_queries(board):
        try:
            prometheus.query(dash.substitute(query.expr))
        except QueryError as exc:
            failures.append(f"{query}: {exc}")
    assert not failures, "\n".join(failures)


def test_a_broken_query_is_reported(prometheus: Prometheus) -> None:
    with pytest.raises(QueryError, match="bad_data"):
        prometheus.query("sum by (le (rate(x[1m]))")
