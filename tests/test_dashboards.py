"""The generated Grafana dashboards are current, complete, and their PromQL parses.

Regeneration needs ``grafana-foundation-sdk==1769699379!11.6.0`` (the build for Grafana 11.6);
the PromQL check needs promtool (Debian package ``prometheus``). Nothing is skipped.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "deploy" / "grafana" / "dashboards.py"
GENERATED = REPO / "deploy" / "grafana" / "generated"
RULES = REPO / "deploy" / "prometheus" / "embmon-rules.yaml"
SDK = "grafana-foundation-sdk"
SDK_VERSION = "1769699379!11.6.0"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


promql_exprs = _load("promql_exprs", Path(__file__).with_name("promql_exprs.py"))
DASHBOARDS = promql_exprs.dashboard_files()


def _require_sdk() -> None:
    try:
        version = importlib.metadata.version(SDK)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version != SDK_VERSION:
        pytest.fail(
            f"{SDK} {version or 'is not installed'}; the dashboards are generated with the "
            f"Grafana 11.6 build: pip install '{SDK}=={SDK_VERSION}'",
            pytrace=False,
        )


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def _dashboard(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def test_dashboards_are_generated() -> None:
    assert [path.name for path in DASHBOARDS] == ["embmon-agent.json", "embmon-drift.json"]


def test_regenerating_gives_the_committed_json(tmp_path: Path) -> None:
    _require_sdk()
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    regenerated = sorted(path.name for path in tmp_path.glob("*.json"))
    assert regenerated == [path.name for path in DASHBOARDS]
    for path in DASHBOARDS:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), (
            f"{path.relative_to(REPO)} is stale: run python deploy/grafana/dashboards.py "
            "--out deploy/grafana/generated/"
        )


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_every_panel_has_a_datasource_and_a_query(path: Path) -> None:
    dashboard = _dashboard(path)
    panels = [panel for panel in _panels(dashboard["panels"]) if panel["type"] != "row"]
    assert panels
    for panel in panels:
        title = panel.get("title")
        assert panel.get("datasource") == DATASOURCE, title
        assert panel.get("targets"), f"{title}: no query"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{title}: empty query"
            assert target.get("datasource") == DATASOURCE, title
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"])
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are not unique"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_variables(path: Path) -> None:
    dashboard = _dashboard(path)
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["query"].startswith("label_values(")
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE
            assert variable["allValue"] == ".*"


def test_drift_dashboard_has_the_seed_panels() -> None:
    dashboard = _dashboard(GENERATED / "embmon-drift.json")
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "model", "segment", "metric"} <= names
    exprs = " ".join(
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    )
    for metric in (
        "embmon_closest_centroid_ratio",
        "embmon_drift_score",
        "embmon_drift_threshold",
        "embmon_frequent_term_ratio",
        "embmon_classification_f1",
        "embmon_reference_classification_f1",
        "embmon_classification_accuracy",
    ):
        assert metric in exprs, metric


def test_agent_dashboard_shows_window_completeness() -> None:
    """The scaled layout's panels read only series a single process exports too (the
    end-to-end test wants data from every dashboard query), and name an alert that exists."""
    dashboard = _dashboard(GENERATED / "embmon-agent.json")
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert "Scaled layout" in rows
    panels = {panel.get("title"): panel for panel in _panels(dashboard["panels"])}
    completeness = panels["Window completeness"]
    assert completeness["type"] == "state-timeline"
    assert "embmon_window_complete" in completeness["targets"][0]["expr"]
    assert "embmon_window_complete" in panels["Partial windows"]["targets"][0]["expr"]
    alerts = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    names = {rule.get("alert") for group in alerts for rule in group["rules"]}
    assert "EmbmonWindowIncomplete" in completeness["description"]
    assert "EmbmonWindowIncomplete" in names


def test_dashboard_expressions_parse_with_promtool(tmp_path: Path) -> None:
    """Every dashboard query, its variables replaced, parses with promtool."""
    expressions = promql_exprs.dashboard_expressions()
    assert len(expressions) > 20
    assert not [expr for expr in expressions if "$" in expr or "[[" in expr]
    promql_exprs.check_with_promtool(expressions, tmp_path / "dashboards.yaml")


def test_alert_thresholds_drawn_on_dashboards_match_the_rules() -> None:
    _require_sdk()
    generator = _load("embmon_dashboards", GENERATOR)
    rules = RULES.read_text(encoding="utf-8")
    assert f"(embmon_reference_classification_f1 - {generator.F1_ALERT_MARGIN:.2f})" in rules
    assert f"ratio_rate5m > {generator.REJECT_ALERT_RATIO}" in rules
    assert f"lag_records:sum > {generator.LAG_ALERT_FLOOR:.0f}" in rules
