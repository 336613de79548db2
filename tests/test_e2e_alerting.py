"""End to end: Kafka -> ``embmon run`` -> Prometheus (the shipped rules) -> Alertmanager (the
shipped routing) -> a webhook. Every PromQL expression of the rules and dashboards is then run
against that Prometheus.

Real parts only: a Tansu broker (the session fixture ``kafka_bootstrap``), the agent as a
subprocess (live: no ``--until-end``), Prometheus and Alertmanager processes from the Debian
packages, and an HTTP server of the test's own as webhook receiver.

What is changed for the test, and only this:

- the rule file is ``deploy/prometheus/embmon-rules.yaml`` as shipped except that every
  ``for:`` duration is rewritten to ``2s`` (a textual substitution in a temporary copy; the
  expressions, labels and annotation templates are byte for byte the shipped ones), so that
  a 5-minute hold becomes 2 seconds with Prometheus evaluating every second;
- the Alertmanager configuration is ``deploy/alertmanager/alertmanager.yml`` (routes,
  grouping, inhibitions as shipped) with ``group_wait``/``group_interval`` of 1 s and every
  webhook URL pointed at the test's receiver (paths kept, so the route taken is visible).

The stream (digits embeddings, 1-day windows, 2 partitions) is produced in two phases:

1. clean days D0, D1, D2 and a clean first event of D3 on each partition: the watermark
   passes D2's end, so the agent closes the three clean windows. The test waits until
   Prometheus has scraped them and evaluated the alert rules at least four times over that
   state (twice the shortened ``for:``), then checks that no drift alert is pending, firing
   or delivered;
2. the rest of D3, with 70 % of the vectors reversed (a broken transform), a late event, a
   malformed record, and a first event of D4 on each partition: D3 closes drifted, and the
   drift alert must reach the webhook with its ``model`` and ``metric`` labels.

The days are placed so that the last closed window always ended less than two windows ago
(D4 starts at the last UTC midnight before now + 1 h, so at most 1 h ahead of the clock):
otherwise EmbmonWindowsStale would fire and, through the shipped inhibition rule, silence the
drift alert.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.broker import new_topic, produce
from tests.e2e_services import (
    DAY,
    EMBMON,
    Delivery,
    DigitsStream,
    Service,
    WebhookReceiver,
    prometheus_alerts,
    prometheus_query,
    prometheus_rule_groups,
    shorten_for_durations,
    start_alertmanager,
    start_prometheus,
    start_service,
    wait_until,
    webhook_alertmanager_config,
)
from tests.promql_exprs import RULES_FILE, dashboard_expressions, rule_expressions

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
ALERTMANAGER_FILE = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
MODEL = "digits"
PARTITIONS = 2
PER_DAY = 300
SHORT_FOR = "2s"
CLEAN_EVALUATIONS = 4
DRIFT_ALERT = "EmbmonEmbeddingDrift"
ALERT_DEADLINE_S = 90.0

# Alert expressions that must return nothing in this scenario, and why. Every other
# expression of the rules and the dashboards must return data.
EXPECTED_EMPTY = {
    "EmbmonWindowsStale": "the last closed window always ended less than 2 windows ago",
    "EmbmonWindowsNotPersisted": "every window is persisted at once: embmon_windows_held is 0",
    "EmbmonWindowIncomplete": "a single process writes only complete windows: embmon_window_complete is 1",
    "EmbmonHighRejectRate": "2 malformed records out of ~1200 is below the 5 % threshold",
    "EmbmonLateEventsHigh": "1 late event out of ~1200 is below the 1 % threshold",
    "EmbmonConsumerLagGrowing": "the agent keeps up: lag is 0, far below the 1000 floor",
    "EmbmonAgentDown": "the agent is up: up == 1",
    "EmbmonAgentAbsent": "a target of job embmon exists, so absent() is empty",
}


def _rule_ids() -> list[str]:
    """A readable id per rule (record or alert name), in the order of rule_expressions()."""
    document = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return [rule.get("alert") or rule["record"] for g in document["groups"] for rule in g["rules"]]


@dataclass
class Scenario:
    prometheus: Service
    alertmanager: Service
    agent: Service
    webhook: WebhookReceiver
    days: dict[str, float]
    clean_alerts: list[dict[str, Any]] = field(default_factory=list)
    clean_deliveries: list[Delivery] = field(default_factory=list)
    clean_evaluations: int = 0
    clean_max_ratio: float = math.nan
    windows: list[dict[str, Any]] = field(default_factory=list)
    drift_alert_error: str = ""


def _day_anchor(now: float) -> float:
    """Start of D4: the UTC midnight at or before ``now + 1 h``."""
    return math.floor((now + 3600) / DAY) * DAY


def _round_robin(values: list[bytes], start: int = 0) -> list[tuple[int, bytes, int | None]]:
    return [((start + i) % PARTITIONS, v, None) for i, v in enumerate(values)]


def _windows(out: Path) -> list[dict[str, Any]]:
    path = out / "windows.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _drift_alerts(webhook: WebhookReceiver) -> list[tuple[Delivery, dict[str, Any]]]:
    return [(d, a) for d, a in webhook.alerts() if a["labels"].get("alertname") == DRIFT_ALERT]


def _note_evaluation(prometheus: Service, seen: set[str]) -> int:
    """Adds the embmon.alerts group's last evaluation time to ``seen``; returns how many."""
    for group in prometheus_rule_groups(prometheus.url):
        if group["name"] == "embmon.alerts" and group.get("lastEvaluation"):
            seen.add(group["lastEvaluation"])
    return len(seen)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return DigitsStream.load().build_reference(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def scenario(
    kafka_bootstrap: str, reference_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    work = tmp_path_factory.mktemp("e2e")
    stream = DigitsStream.load()
    rng = np.random.default_rng(7)
    topic = new_topic(kafka_bootstrap, PARTITIONS, prefix="e2e")

    rules_text, replaced = shorten_for_durations(RULES_FILE.read_text(encoding="utf-8"), SHORT_FOR)
    assert replaced == len(
        [r for g in yaml.safe_load(rules_text)["groups"] for r in g["rules"] if "alert" in r]
    ), "every alert has a for: and every one was shortened"
    rules_path = work / "embmon-rules.yaml"
    rules_path.write_text(rules_text, encoding="utf-8")

    out = work / "agent-out"

    def agent_command(port: int) -> list[str]:
        return [
            EMBMON, "run",
            "--bootstrap-servers", kafka_bootstrap,
            "--topic", topic,
            "--group-id", f"embmon-{topic}",
            "--reference", str(reference_dir),
            "--window", "1d",
            "--metrics-host", "127.0.0.1",
            "--metrics-port", str(port),
            "--out", str(out),
            "--session-timeout-ms", "6000",
            "--heartbeat-interval-ms", "1000",
            "--max-poll-interval-ms", "10000",
        ]  # fmt: skip

    shipped_am = yaml.safe_load(ALERTMANAGER_FILE.read_text(encoding="utf-8"))
    with WebhookReceiver() as webhook:
        alertmanager = start_alertmanager(
            work / "alertmanager", webhook_alertmanager_config(shipped_am, webhook.url)
        )
        agent = prometheus = None
        try:
            agent = start_service("embmon", agent_command, work / "agent", ready_path="/readyz")
            prometheus = start_prometheus(
                work / "prometheus",
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules_path)],
                    "alerting": {
                        "alertmanagers": [
                            {"static_configs": [{"targets": [alertmanager.url.split("//")[1]]}]}
                        ]
                    },
                    "scrape_configs": [
                        {
                            "job_name": "embmon",
                            "static_configs": [{"targets": [agent.url.split("//")[1]]}],
                        }
                    ],
                },
            )
            d4 = _day_anchor(time.time())
            days = {f"D{i}": d4 - (4 - i) * DAY for i in range(5)}
            scenario = Scenario(prometheus, alertmanager, agent, webhook, days)

            # Phase 1: clean D0..D2, a malformed record, a clean first event of D3 per partition.
            clean = [
                e
                for day in ("D0", "D1", "D2")
                for e in stream.events(rng, days[day], PER_DAY, shifted=False)
            ]
            ticks = stream.events(rng, days["D3"], PARTITIONS, shifted=False, spacing_s=1)
            produce(
                kafka_bootstrap,
                topic,
                [*_round_robin(clean), (0, b'{"not json', None), *_round_robin(ticks)],
            )
            closed_through = (
                f'embmon_last_window_end_timestamp_seconds{{job="embmon",model="{MODEL}"}}'
            )
            wait_until(
                lambda: any(
                    float(s["value"][1]) == days["D3"]
                    for s in prometheus_query(prometheus.url, closed_through)["result"]
                ),
                timeout_s=60,
                what="Prometheus scrapes the three clean windows",
            )
            # The first time noted may predate the scrape of the closed windows: count one more.
            evaluations: set[str] = set()
            wait_until(
                lambda: _note_evaluation(prometheus, evaluations) > CLEAN_EVALUATIONS,
                timeout_s=30,
                interval_s=0.25,
                what=f"{CLEAN_EVALUATIONS} rule evaluations over the clean windows",
            )
            scenario.clean_evaluations = len(evaluations) - 1
            scenario.clean_alerts = prometheus_alerts(prometheus.url)
            scenario.clean_deliveries = webhook.snapshot()
            ratios = prometheus_query(
                prometheus.url, "model_segment_metric:embmon_drift_score_to_threshold:ratio"
            )["result"]
            scenario.clean_max_ratio = max((float(s["value"][1]) for s in ratios), default=math.nan)

            # Phase 2: the rest of D3 shifted, a late event, a malformed record, D4 begins.
            shifted = stream.events(rng, days["D3"] + 60, PER_DAY, shifted=True)
            late = stream.events(rng, days["D0"] + 3600, 1, shifted=False)
            ticks = stream.events(rng, days["D4"], PARTITIONS, shifted=True, spacing_s=1)
            produce(
                kafka_bootstrap,
                topic,
                [
                    *_round_robin(shifted),
                    (1, late[0], None),
                    (1, b"[1, 2, 3]", None),
                    *_round_robin(ticks),
                ],
            )
            expected = wait_until(
                lambda: next(
                    (
                        {m for m, r in w["drift"].items() if r["drifted"]}
                        for w in _windows(out)
                        if w["window_start"] == _iso(days["D3"])
                    ),
                    None,
                ),
                timeout_s=60,
                what="the agent closes D3",
            )
            try:
                wait_until(
                    lambda: (
                        {a["labels"].get("metric") for _, a in _drift_alerts(webhook)} >= expected
                    ),
                    timeout_s=ALERT_DEADLINE_S,
                    interval_s=0.25,
                    what=f"{DRIFT_ALERT} for every drifted metric {sorted(expected)} delivered",
                )
            except TimeoutError as exc:
                scenario.drift_alert_error = (
                    f"{exc}; Prometheus alerts: {prometheus_alerts(prometheus.url)}; "
                    f"deliveries: {webhook.snapshot()}; alertmanager log:\n"
                    f"{alertmanager.log_tail()}"
                )
            scenario.windows = _windows(out)
            yield scenario
        finally:
            for service in (prometheus, agent, alertmanager):
                if service is not None:
                    service.stop()


def test_clean_windows_raise_no_drift_alert(scenario: Scenario) -> None:
    clean = [w for w in scenario.windows if w["window_end"] <= _iso(scenario.days["D3"])]
    assert [w["window_start"][:10] for w in clean] == [
        _iso(scenario.days[d])[:10] for d in ("D0", "D1", "D2")
    ]
    assert not any(w["drifted"] for w in clean), "the clean days themselves drifted: bad data"
    assert scenario.clean_evaluations >= CLEAN_EVALUATIONS
    assert scenario.clean_max_ratio < 1.0
    pending_or_firing = [
        a for a in scenario.clean_alerts if a["labels"]["alertname"] == DRIFT_ALERT
    ]
    assert pending_or_firing == [], pending_or_firing
    delivered = [
        a
        for d in scenario.clean_deliveries
        for a in d.payload.get("alerts", [])
        if a["labels"].get("alertname") == DRIFT_ALERT
    ]
    assert delivered == [], delivered


def test_drift_alert_is_delivered_with_model_and_metric(scenario: Scenario) -> None:
    assert not scenario.drift_alert_error, scenario.drift_alert_error
    d3 = next(w for w in scenario.windows if w["window_start"] == _iso(scenario.days["D3"]))
    assert d3["drifted"]
    drifted = {m: r for m, r in d3["drift"].items() if r["drifted"]}
    alerts = _drift_alerts(scenario.webhook)
    assert alerts
    for delivery, alert in alerts:
        labels = alert["labels"]
        assert alert["status"] == "firing"
        assert labels["alertname"] == DRIFT_ALERT
        assert labels["model"] == MODEL
        assert labels["metric"] in drifted, labels
        assert labels["severity"] == "warning"
        assert labels["job"] == "embmon"
        assert "segment" not in labels  # events carry no segment: the empty label is dropped
        # the shipped routing: warning, not model "news" -> ml-platform
        assert delivery.path == "/ml-platform"
        assert delivery.payload["receiver"] == "ml-platform"
        assert delivery.payload["groupLabels"] == {
            "alertname": DRIFT_ALERT,
            "job": "embmon",
            "model": MODEL,
        }
        # the annotation templates ran, and their query() found the threshold
        annotations = alert["annotations"]
        threshold = drifted[labels["metric"]]["threshold"]
        assert annotations["summary"] == f"Drift in {labels['metric']} for model {MODEL}"
        assert f"{threshold:.3f}" in annotations["description"], annotations["description"]
        assert "(unknown)" not in annotations["description"]
        assert "error" not in json.dumps(annotations).lower()
        # the parts that moved most, from embmon_drift_contributor, for metrics that have parts
        parts = drifted[labels["metric"]].get("contributors", [])
        named = "Moved most: " in annotations["description"]
        assert named == bool(parts), (parts, annotations["description"])
        if parts:  # D3 is the last closed window: its parts, most moved first
            first = f"Moved most: {parts[0]['part']} ({parts[0]['value']:+.3f})"
            assert first in annotations["description"], annotations["description"]
    assert {a["labels"]["metric"] for _, a in alerts} == set(drifted)


def test_every_rule_evaluates_without_error(scenario: Scenario) -> None:
    """Evaluation errors (e.g. many-to-many matching) only show with real series: none here."""
    rules = [r for g in prometheus_rule_groups(scenario.prometheus.url) for r in g["rules"]]
    assert len(rules) == len(rule_expressions())
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert unhealthy == []


EXPRESSIONS = [
    pytest.param(name, expr, id=name)
    for name, expr in [
        *zip(_rule_ids(), rule_expressions(), strict=True),
        *((f"dashboard-{i:02d}", e) for i, e in enumerate(dashboard_expressions())),
    ]
]


@pytest.mark.parametrize(("name", "expr"), EXPRESSIONS)
def test_expression_runs(scenario: Scenario, name: str, expr: str) -> None:
    """Runs without error; returns data unless listed (with the reason) in EXPECTED_EMPTY."""
    if name in EXPECTED_EMPTY:
        result = prometheus_query(scenario.prometheus.url, expr)["result"]
        assert result == [], f"{name} should be empty ({EXPECTED_EMPTY[name]}): {result}"
        return
    # Rates need two samples of a series; the late counter appears only in phase 2.
    wait_until(
        lambda: prometheus_query(scenario.prometheus.url, expr)["result"],
        timeout_s=20,
        interval_s=0.5,
        what=f"data for {name}: {expr}",
    )


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
