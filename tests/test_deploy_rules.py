"""The Prometheus rules and the Alertmanager example in deploy/ are valid and tested.

Runs the real tools: promtool (Debian package ``prometheus``) and amtool (Debian package
``prometheus-alertmanager``). Nothing is skipped: without the tools these tests fail.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "embmon-rules.yaml"
RULE_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.yaml"))
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = REPO / "docs" / "runbooks"
RUNBOOK_URL = "https://github.com/embmon/embmon/blob/main/docs/runbooks/{alert}.md"
SEVERITIES = {"critical", "warning", "info"}
INSTALL_HINT = "install it with: apt-get install -y prometheus prometheus-alertmanager"


def _load_promql_exprs() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "promql_exprs", Path(__file__).with_name("promql_exprs.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH; {INSTALL_HINT}", pytrace=False)
    return path


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def _alerts() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


ALERT_NAMES = sorted({rule["alert"] for rule in _alerts()})


def test_promtool_check_rules() -> None:
    result = _run(_tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules() -> None:
    assert RULE_TESTS, "no promtool test files in deploy/prometheus/tests/"
    result = _run(_tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_every_alert_is_tested_firing_and_not_firing(alert: str) -> None:
    firing, quiet = 0, 0
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in group.get("alert_rule_test", []):
                if case["alertname"] == alert:
                    if case.get("exp_alerts"):
                        firing += 1
                    else:
                        quiet += 1
    assert firing, f"{alert}: no promtool test case where it fires"
    assert quiet, f"{alert}: no promtool test case where it stays quiet"


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: str(rule["alert"]))
def test_alert_labels_annotations_and_runbook(rule: dict[str, Any]) -> None:
    alert = rule["alert"]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    if "embmon_" in rule["expr"]:
        assert "{{ $value" in annotations["description"], "the description gives the value"
    assert annotations["runbook_url"] == RUNBOOK_URL.format(alert=alert)
    runbook = RUNBOOKS / f"{alert}.md"
    assert runbook.is_file(), f"missing runbook {runbook.relative_to(REPO)}"
    assert runbook.read_text(encoding="utf-8").startswith(f"# {alert}\n")


def test_rule_expressions_helper_lists_every_rule() -> None:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    expressions = _load_promql_exprs().rule_expressions()
    assert expressions == [rule["expr"] for rule in rules]


def test_amtool_check_config() -> None:
    result = _run(_tool("amtool"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_check_config_with_the_commented_receivers(tmp_path: Path) -> None:
    """The Slack / PagerDuty / e-mail examples stay valid once uncommented."""
    text = ALERTMANAGER.read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^(\s*)# (\s*(?:[a-z_]+:|- ).*)$", r"\1\2", text)
    for key in ("api_url_file", "routing_key_file", "auth_password_file", "smtp_smarthost"):
        assert re.search(rf"(?m)^\s*-?\s*{key}:", uncommented), f"{key} example missing"
    config = tmp_path / "alertmanager.yml"
    config.write_text(uncommented, encoding="utf-8")
    result = _run(_tool("amtool"), "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=EmbmonAgentDown", "severity=critical", "job=embmon"], "oncall"),
        (["alertname=EmbmonEmbeddingDrift", "severity=warning", "model=news"], "team-news"),
        (["alertname=EmbmonEmbeddingDrift", "severity=warning", "model=digits"], "ml-platform"),
        (["alertname=EmbmonLateEventsHigh", "severity=info"], "default-webhook"),
    ],
)
def test_alertmanager_routes_by_severity_and_model(labels: list[str], receiver: str) -> None:
    result = _run(
        _tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_inhibit_rules_name_existing_alerts() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    named: set[str] = set()
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'alertname=~?"(?P<names>[^"]+)"', matcher)
            assert match, f"inhibit matcher {matcher!r} is not on alertname"
            named.update(match.group("names").split("|"))
    assert named <= set(ALERT_NAMES), f"unknown alerts: {sorted(named - set(ALERT_NAMES))}"
    sources = {m.split('"')[1] for rule in config["inhibit_rules"] for m in rule["source_matchers"]}
    assert {"EmbmonAgentDown", "EmbmonAgentAbsent", "EmbmonWindowsStale"} <= sources
