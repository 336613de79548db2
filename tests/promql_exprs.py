"""Every PromQL expression embmon ships, ready to send to a Prometheus.

- :func:`rule_expressions`: the ``expr`` of every recording and alerting rule in
  ``deploy/prometheus/embmon-rules.yaml``.
- :func:`check_with_promtool`: fails unless promtool parses each of a list of expressions.
- :func:`dashboard_expressions`: the ``expr`` of every query of every dashboard in
  ``deploy/grafana/generated/``, plus the series selector of each ``label_values(...)`` template
  variable, with Grafana's variables replaced so that Prometheus can run them: ``$model``,
  ``${model}``, ``${model:regex}`` and ``[[model]]`` become ``.*`` (every dashboard selector
  uses ``=~`` for them), ``$__rate_interval``, ``$__interval`` and ``$__range`` become
  ``5m``.

Reads files only (PyYAML and json), so the end-to-end tests can use it without the
Grafana SDK installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = [
    "DASHBOARD_DIR",
    "RULES_FILE",
    "check_with_promtool",
    "dashboard_expressions",
    "dashboard_files",
    "rule_expressions",
    "substitute_grafana_variables",
]

REPO = Path(__file__).resolve().parents[1]
RULES_FILE = REPO / "deploy" / "prometheus" / "embmon-rules.yaml"
DASHBOARD_DIR = REPO / "deploy" / "grafana" / "generated"

# What Grafana's interval variables become; any duration Prometheus accepts would do.
INTERVAL = "5m"
# What every other template variable becomes: matches any value, and an absent label.
ANY_VALUE = ".*"

_INTERVAL_VARIABLE = re.compile(r"\$\{?__(?:rate_interval|interval|range)(?:_ms|_s)?\}?")
_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+|\[\[\w+\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.+),\s*\w+\s*\)\s*$", re.DOTALL)


def substitute_grafana_variables(expr: str) -> str:
    """Replaces Grafana's template variables by values Prometheus accepts.

    >>> substitute_grafana_variables('rate(x{model=~"$model"}[$__rate_interval])')
    'rate(x{model=~".*"}[5m])'
    >>> substitute_grafana_variables('y{segment=~"${segment:regex}",job=~"[[job]]"}')
    'y{segment=~".*",job=~".*"}'
    """
    expr = _INTERVAL_VARIABLE.sub(INTERVAL, expr)
    return _VARIABLE.sub(ANY_VALUE, expr)


def rule_expressions(path: Path = RULES_FILE) -> list[str]:
    """The expression of every rule of a Prometheus rule file, in file order."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [str(rule["expr"]) for group in document["groups"] for rule in group["rules"]]


def dashboard_files(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """The generated dashboard JSON files, sorted by name."""
    return sorted(directory.glob("*.json"))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _raw_dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield str(target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") != "query":
            continue
        if isinstance(query, dict):
            query = query.get("query", "")
        match = _LABEL_VALUES.match(str(query))
        if match:
            yield match.group("selector")


def dashboard_expressions(directory: Path = DASHBOARD_DIR) -> list[str]:
    """Every PromQL expression of the generated dashboards, variables substituted."""
    expressions: list[str] = []
    for path in dashboard_files(directory):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        expressions.extend(
            substitute_grafana_variables(expr) for expr in _raw_dashboard_expressions(dashboard)
        )
    return expressions


def check_with_promtool(expressions: Sequence[str], rule_file: Path) -> None:
    """Fail unless promtool parses every one of ``expressions``. promtool has no bare PromQL
    parser, so each becomes a recording rule of a file written to ``rule_file``."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not on PATH; install it with: "
            "apt-get install -y prometheus prometheus-alertmanager",
            pytrace=False,
        )
    rules = [
        {"record": f"embmon_{rule_file.stem.replace('-', '_')}:expr_{index}", "expr": expr}
        for index, expr in enumerate(expressions)
    ]
    rule_file.write_text(
        yaml.safe_dump({"groups": [{"name": rule_file.stem, "rules": rules}]}), encoding="utf-8"
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout
