"""embmon's alerts as Grafana-managed alert rules, generated as code for Grafana 11.x.

    pip install 'grafana-foundation-sdk==1769699379!11.6.0'
    python deploy/grafana/alerts.py --out deploy/grafana/generated/ [--datasource-uid prometheus]

For teams that alert from Grafana instead of (or beside) Prometheus + Alertmanager. Writes
``embmon-alerts.yaml``, a Grafana alerting file-provisioning document (``apiVersion: 1``,
``groups:``; put it in Grafana's ``provisioning/alerting/`` directory, or in a ConfigMap that
the Grafana sidecar loads). The format is the one of Grafana 11.x: rule fields as read by
Grafana's ``AlertRuleGroupV1`` / ``AlertRuleV1`` / ``QueryV1`` (``orgId``, ``name``,
``folder``, ``interval`` per group; ``uid``, ``title``, ``condition``, ``data``, ``for``,
``noDataState``, ``execErrState``, ``labels``, ``annotations``, ``isPaused`` per rule;
``refId``, ``datasourceUid``, ``relativeTimeRange`` in whole seconds, ``model`` per query).

The single source is ``deploy/prometheus/embmon-rules.yaml``: every ``alert:`` of it becomes one
Grafana rule, nothing is restated here. Each Prometheus group with alerts becomes one Grafana
rule group (same name, the group's ``interval`` or 1m) in the folder "embmon". Each rule:

- ``title`` = the alert name; ``uid`` derived from it (``EmbmonWindowsStale`` ->
  ``embmon-windows-stale``); ``for`` = the alert's ``for`` (a ``keep_firing_for`` would become
  ``keepFiringFor``, which older Grafana releases ignore; no alert has one today);
  ``labels`` = the group's and the alert's labels; ``annotations`` = the alert's
  (``runbook_url`` included).
- query ``A``: the alert's PromQL, unchanged, as an instant query on the Prometheus data source
  whose uid ``--datasource-uid`` gives (default "prometheus").
- ``B``: the math expression ``is_number($A) || is_nan($A) || is_inf($A)``, 1 for every series
  A returns whatever its value; ``C`` (the condition): threshold ``B > 0``. This is what
  Grafana's own Prometheus-rule converter builds (pkg/services/ngalert/prom/query.go), so that,
  as in Prometheus, every returned series fires, a 0 or NaN value included.
- ``noDataState: OK`` (a Prometheus alert returning nothing does not fire) and
  ``execErrState: Error``.

Templates: Grafana expands annotations with Prometheus' template functions, so ``$labels`` and
the ``humanize*`` / ``printf`` pipelines work as they are. Two differences:

- ``$value`` is, in Grafana, a string listing every query and expression
  ("[ var='A' labels={...} value=0.42 ], [ var='B' ...") rather than the number; each
  ``$value`` is therefore rewritten to ``$values.A.Value``, the value of query A, as Grafana's
  converter does (its ``VariableReplacer``, pkg/services/ngalert/prom/template.go).
- ``query`` returns nothing in Grafana: the ``{{ with ... | query }}`` parts of descriptions
  print their ``{{ else }}`` text ("(unknown)"), and EmbmonHighRejectRate lists no reasons.

Alerts whose PromQL reads a recording rule (listed in the generated file's header) need that
file's recording rules loaded in Prometheus: without them they see no data and stay quiet.

YAML written with sorted keys, so that regenerating it is byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import alerting
from grafana_foundation_sdk.builders import expr as expression
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as alerting_model
from grafana_foundation_sdk.models import dashboard as dashboard_model

__all__ = [
    "DEFAULT_DATASOURCE_UID",
    "FIRES_ON_ANY_SERIES",
    "build_document",
    "build_groups",
    "grafana_template",
    "main",
    "render",
    "rule_uid",
]

HERE = Path(__file__).resolve().parent
RULES_FILE = HERE.parents[1] / "deploy" / "prometheus" / "embmon-rules.yaml"
OUTPUT_NAME = "embmon-alerts.yaml"

FOLDER = "embmon"
ORG_ID = 1
DEFAULT_DATASOURCE_UID = "prometheus"
DEFAULT_INTERVAL = "1m"

QUERY_REF = "A"
MATH_REF = "B"
CONDITION_REF = "C"
# Grafana's converter: 1 for a number, NaN or ±Inf, i.e. for every series query A returns.
FIRES_ON_ANY_SERIES = f"is_number(${QUERY_REF}) || is_nan(${QUERY_REF}) || is_inf(${QUERY_REF})"
# Seconds before the evaluation time that query A covers (Grafana's converter uses 600 s). An
# instant query reads the end of the range only; range vectors in the PromQL keep their own.
QUERY_TIME_RANGE = 600
EXPRESSION_DATASOURCE = "__expr__"

# The value of query A in a Grafana template; what Prometheus' $value is.
GRAFANA_VALUE = f"$values.{QUERY_REF}.Value"

# Fields of Grafana's file-provisioning rule (AlertRuleV1) and query (QueryV1), Grafana 11.x.
RULE_FIELDS = frozenset(
    {
        "uid",
        "title",
        "condition",
        "data",
        "dashboardUid",
        "panelId",
        "noDataState",
        "execErrState",
        "for",
        "keepFiringFor",
        "annotations",
        "labels",
        "isPaused",
        "notification_settings",
        "record",
    }
)
QUERY_FIELDS = frozenset({"refId", "queryType", "relativeTimeRange", "datasourceUid", "model"})
# What the SDK's Rule (the HTTP API's shape) carries that the file format holds per group.
API_ONLY_RULE_FIELDS = frozenset({"folderUID", "ruleGroup", "orgID"})

_UID_MAX = 40
_UID_VALID = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")
_ACTION = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_VALUE_VARIABLE = re.compile(r"\$value\b")
_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_DURATION_UNITS = (
    ("y", 365 * 86400),
    ("w", 7 * 86400),
    ("d", 86400),
    ("h", 3600),
    ("m", 60),
    ("s", 1),
)


# --- from the Prometheus rule file ----------------------------------------------------------


def _load_groups(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    groups: list[dict[str, Any]] = document["groups"]
    return groups


def _seconds(duration: str) -> int:
    """A Prometheus duration in whole seconds (y, w, d, h, m, s; no ms)."""
    match = _DURATION.match(duration.strip())
    if not duration.strip() or match is None:
        raise ValueError(f"not a duration in whole seconds: {duration!r}")
    factors = [factor for _, factor in _DURATION_UNITS]
    return sum(
        int(part) * factor for part, factor in zip(match.groups(), factors, strict=True) if part
    )


def _duration(seconds: int) -> str:
    """Whole seconds as a Prometheus duration: 60 -> "1m", 90 -> "1m30s"."""
    if seconds == 0:
        return "0s"
    parts: list[str] = []
    for unit, factor in _DURATION_UNITS:
        if seconds >= factor:
            parts.append(f"{seconds // factor}{unit}")
            seconds %= factor
    return "".join(parts)


def recording_rules(path: Path = RULES_FILE) -> list[str]:
    """The names of the recording rules of the rule file, in file order."""
    return [
        str(rule["record"])
        for group in _load_groups(path)
        for rule in group["rules"]
        if "record" in rule
    ]


def _reads(expr: str, record: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(record)}(?![\w:])", expr) is not None


def alerts_reading_recording_rules(path: Path = RULES_FILE) -> list[str]:
    """The alerts whose PromQL reads a recording rule of the same file, in file order."""
    records = recording_rules(path)
    return [
        str(rule["alert"])
        for group in _load_groups(path)
        for rule in group["rules"]
        if "alert" in rule and any(_reads(str(rule["expr"]), record) for record in records)
    ]


# --- building blocks ------------------------------------------------------------------------


def rule_uid(alert: str) -> str:
    """A Grafana rule uid derived from the alert name: ``EmbmonAgentDown`` -> ``embmon-agent-down``.

    Grafana wants at most 40 characters of [a-zA-Z0-9-_]; a longer name keeps its first 31 and
    a hash of the whole.
    """
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", alert).lower()
    uid = re.sub(r"[^a-z0-9_-]+", "-", words).strip("-")
    if len(uid) > _UID_MAX:
        uid = f"{uid[:31]}-{hashlib.sha256(alert.encode()).hexdigest()[:8]}"
    if not _UID_VALID.match(uid):
        raise ValueError(f"cannot derive a Grafana uid from {alert!r}")
    return uid


def grafana_template(text: str) -> str:
    """A Prometheus annotation template for Grafana: ``$value`` becomes ``$values.A.Value``.

    >>> grafana_template("{{ $value | humanizePercentage }} of {{ $labels.instance }}")
    '{{ $values.A.Value | humanizePercentage }} of {{ $labels.instance }}'
    """
    return _ACTION.sub(lambda action: _VALUE_VARIABLE.sub(GRAFANA_VALUE, action.group()), text)


def _expression_datasource() -> dashboard_model.DataSourceRef:
    return dashboard_model.DataSourceRef(type_val=EXPRESSION_DATASOURCE, uid=EXPRESSION_DATASOURCE)


def _queries(
    expr: str, datasource_uid: str, offset: int
) -> list[cogbuilder.Builder[alerting_model.Query]]:
    """A: the PromQL as an instant query; B: 1 for each of its series; C (condition): B > 0."""
    promql = (
        alerting.Query(QUERY_REF)
        .datasource_uid(datasource_uid)
        .relative_time_range(
            alerting_model.RelativeTimeRange(from_val=QUERY_TIME_RANGE + offset, to=offset)
        )
        .model(
            prom.Dataquery()
            .expr(expr)
            .instant()
            .ref_id(QUERY_REF)
            .datasource(dashboard_model.DataSourceRef(type_val="prometheus", uid=datasource_uid))
        )
    )
    any_series = (
        alerting.Query(MATH_REF)
        .datasource_uid(EXPRESSION_DATASOURCE)
        .query_type("math")
        .model(
            expression.TypeMath()
            .expression(FIRES_ON_ANY_SERIES)
            .ref_id(MATH_REF)
            .datasource(_expression_datasource())
        )
    )
    condition = (
        alerting.Query(CONDITION_REF)
        .datasource_uid(EXPRESSION_DATASOURCE)
        .query_type("threshold")
        .model(
            expression.TypeThreshold()
            .expression(MATH_REF)
            .conditions(
                [
                    expression.ExprTypeThresholdConditions().evaluator(
                        expression.ExprTypeThresholdConditionsEvaluator().type("gt").params([0])
                    )
                ]
            )
            .ref_id(CONDITION_REF)
            .datasource(_expression_datasource())
        )
    )
    return [promql, any_series, condition]


def _check_interpolation(
    alert: str, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> None:
    """Grafana's file provisioning expands environment variables: ``$X`` in titles and labels,
    ``${X}`` in annotations. None may occur in what is copied from the rule file."""
    if "$" in alert or any("$" in key + value for key, value in labels.items()):
        raise ValueError(f"{alert}: '$' in the name or a label would be read as a variable")
    if any("${" in value for value in annotations.values()):
        raise ValueError(f"{alert}: '${{' in an annotation would be read as a variable")


def _rule(group: Mapping[str, Any], alert: Mapping[str, Any], datasource_uid: str) -> alerting.Rule:
    name = str(alert["alert"])
    labels = {**group.get("labels", {}), **alert.get("labels", {})}
    annotations = {
        key: grafana_template(str(value)) for key, value in alert.get("annotations", {}).items()
    }
    _check_interpolation(name, labels, annotations)
    offset = _seconds(str(group["query_offset"])) if "query_offset" in group else 0
    return (
        alerting.Rule(name)
        .uid(rule_uid(name))
        .rule_group(str(group["name"]))
        .folder_uid(FOLDER)
        .org_id(ORG_ID)
        .queries(_queries(str(alert["expr"]), datasource_uid, offset))
        .condition(CONDITION_REF)
        .for_val(str(alert.get("for", "0s")))
        .labels(labels)
        .annotations(annotations)
        .no_data_state("OK")
        .exec_err_state("Error")
        .is_paused(False)
    )


def build_groups(
    datasource_uid: str = DEFAULT_DATASOURCE_UID, rules_file: Path = RULES_FILE
) -> list[alerting_model.RuleGroup]:
    """One Grafana rule group per Prometheus group with alerts, one rule per alert."""
    groups: list[alerting_model.RuleGroup] = []
    for group in _load_groups(rules_file):
        alerts = [rule for rule in group["rules"] if "alert" in rule]
        if not alerts:
            continue
        builder = alerting.RuleGroup(str(group["name"])).folder_uid(FOLDER)
        builder.interval(_seconds(str(group.get("interval", DEFAULT_INTERVAL))))
        groups.append(
            builder.rules([_rule(group, alert, datasource_uid) for alert in alerts]).build()
        )
    uids = [str(rule.uid) for group in groups for rule in group.rules or []]
    if len(uids) != len(set(uids)):
        raise ValueError(f"alert names give the same Grafana uid: {sorted(uids)}")
    return groups


# --- to the file-provisioning format --------------------------------------------------------


def _plain(value: object) -> Any:
    """SDK objects as plain JSON values (the HTTP API's shape)."""
    return json.loads(JSONEncoder().encode(value))


def _file_rule(rule: alerting_model.Rule, keep_firing_for: str | None) -> dict[str, Any]:
    """The SDK's rule (HTTP API shape) as a file-provisioning rule (AlertRuleV1)."""
    fields: dict[str, Any] = _plain(rule)
    for key in API_ONLY_RULE_FIELDS:
        fields.pop(key, None)
    if keep_firing_for is not None:
        fields["keepFiringFor"] = keep_firing_for
    unknown = set(fields) - RULE_FIELDS
    if unknown:
        raise ValueError(f"{rule.title}: no such field in Grafana's rule file format: {unknown}")
    for query in fields["data"]:
        unknown = set(query) - QUERY_FIELDS
        if unknown:
            raise ValueError(f"{rule.title}: no such field in Grafana's query format: {unknown}")
    return fields


def build_document(
    datasource_uid: str = DEFAULT_DATASOURCE_UID, rules_file: Path = RULES_FILE
) -> dict[str, Any]:
    """The Grafana alerting file-provisioning document (apiVersion 1)."""
    keep_firing = {
        str(rule["alert"]): str(rule["keep_firing_for"])
        for group in _load_groups(rules_file)
        for rule in group["rules"]
        if "alert" in rule and "keep_firing_for" in rule
    }
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": ORG_ID,
                "name": group.title,
                "folder": FOLDER,
                "interval": _duration(group.interval or _seconds(DEFAULT_INTERVAL)),
                "rules": [
                    _file_rule(rule, keep_firing.get(rule.title)) for rule in group.rules or []
                ],
            }
            for group in build_groups(datasource_uid, rules_file)
        ],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as in the rule file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _header(datasource_uid: str, rules_file: Path) -> str:
    readers = alerts_reading_recording_rules(rules_file)
    lines = [
        "Grafana-managed copies of the alerts of deploy/prometheus/embmon-rules.yaml (Grafana 11.x",
        "alerting file provisioning). Generated by deploy/grafana/alerts.py: do not edit; run",
        "  python deploy/grafana/alerts.py --out deploy/grafana/generated/",
        f"Prometheus data source uid: {datasource_uid} (--datasource-uid).",
    ]
    if readers:
        lines += [
            "These alerts read recording rules of embmon-rules.yaml, which Prometheus must load:",
            *(f"  {name}" for name in readers),
        ]
    return "".join(f"# {line}\n" for line in lines)


def render(datasource_uid: str = DEFAULT_DATASOURCE_UID, rules_file: Path = RULES_FILE) -> str:
    """The provisioning file: a header comment, then YAML with sorted keys."""
    body = yaml.dump(
        build_document(datasource_uid, rules_file),
        Dumper=_Dumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=10_000,
    )
    return _header(datasource_uid, rules_file) + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "generated",
        help=f"directory to write {OUTPUT_NAME} to (default: %(default)s)",
    )
    parser.add_argument(
        "--datasource-uid",
        default=DEFAULT_DATASOURCE_UID,
        help="uid of the Prometheus data source in Grafana (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / OUTPUT_NAME
    path.write_text(render(args.datasource_uid), encoding="utf-8")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
