"""Prometheus exposition of embmon: a custom collector over the latest closed windows.

Gauges are rebuilt from a snapshot on every scrape, so label values of windows, partitions or
terms that are gone simply vanish. Label cardinality is bounded: models and segments beyond
the configured limits are folded into ``other`` (and counted), terms are the top ``max_terms``.
All values are base units: ratios 0–1, timestamps in seconds.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .records import parse_time, segment_label

__all__ = ["AgentMetrics", "EmbmonCollector", "LabelBudget", "window_families"]

OTHER = "other"


class LabelBudget:
    """Admits at most ``limit`` distinct values of a label; the rest become ``other``.

    >>> b = LabelBudget("model", 1)
    >>> b.admit("a"), b.admit("b"), b.admit("a"), b.folded
    ('a', 'other', 'a', 1)
    """

    def __init__(self, label: str, limit: int) -> None:
        self.label = label
        self.limit = limit
        self._seen: set[str] = set()
        self.folded = 0

    def admit(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        self.folded += 1
        return OTHER


@dataclass
class AgentMetrics:
    """Mutable agent state the collector reads; the run loop updates it under ``lock``."""

    version: str = ""
    reference_version: str = ""
    reference_f1: float | None = None
    window_seconds: float = 0.0
    lateness_seconds: float = 0.0
    events: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    windows_closed: Counter[str] = field(default_factory=Counter)
    replayed: int = 0
    latest: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    open_windows: int = 0
    watermark: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class EmbmonCollector(Collector):
    """Builds every embmon metric family from an :class:`AgentMetrics` snapshot."""

    def __init__(
        self,
        state: AgentMetrics,
        *,
        max_models: int = 50,
        max_segments: int = 50,
        max_terms: int = 10,
    ) -> None:
        self.state = state
        self.models = LabelBudget("model", max_models)
        self.segments = LabelBudget("segment", max_segments)
        self.max_terms = max_terms

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def accept(self, record: Mapping[str, Any]) -> None:
        """Remember a closed window's record as the latest of its (model, segment)."""
        model = self.models.admit(str(record["model"]))
        segments = record.get("segment") or {}
        segment = self.segments.admit(segment_label(tuple(sorted(segments.items()))))
        with self.state.lock:
            self.state.latest[(model, segment)] = dict(record)
            self.state.windows_closed[model] += 1

    def admit_model(self, model: str) -> str:
        return self.models.admit(model)

    def collect(self) -> Iterator[Metric]:
        state = self.state
        with state.lock:
            latest = dict(state.latest)
            events, rejected = Counter(state.events), Counter(state.rejected)
            closed, lag = Counter(state.windows_closed), dict(state.lag)
            open_windows, watermark, replayed = state.open_windows, state.watermark, state.replayed
        yield from self._counters(events, rejected, closed, replayed)
        yield from window_families(latest, self.max_terms)
        lag_family = GaugeMetricFamily(
            "embmon_consumer_lag_records",
            "Records between the consumer position and the partition end.",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(lag.items()):
            lag_family.add_metric([topic, str(partition)], value)
        yield lag_family
        yield GaugeMetricFamily(
            "embmon_open_windows", "Window profiles held open in memory.", value=open_windows
        )
        if watermark is not None:
            yield GaugeMetricFamily(
                "embmon_watermark_timestamp_seconds",
                "Event-time watermark of the agent.",
                value=watermark,
            )
        yield GaugeMetricFamily(
            "embmon_window_size_seconds", "Tumbling window size.", value=state.window_seconds
        )
        yield GaugeMetricFamily(
            "embmon_window_lateness_seconds",
            "Allowed lateness before a window closes.",
            value=state.lateness_seconds,
        )
        folded = CounterMetricFamily(
            "embmon_label_values_folded",
            "Label values folded into 'other' by the cardinality bounds.",
            labels=["label"],
        )
        folded.add_metric(["model"], self.models.folded)
        folded.add_metric(["segment"], self.segments.folded)
        yield folded
        info = GaugeMetricFamily(
            "embmon_build_info",
            "embmon version and reference version.",
            labels=["version", "reference"],
        )
        info.add_metric([state.version, state.reference_version], 1)
        yield info
        if state.reference_f1 is not None:
            ref_f1 = GaugeMetricFamily(
                "embmon_reference_classification_f1",
                "Macro F1 of the reference data.",
                labels=["model"],
            )
            for model in sorted({m for m, _ in latest}):
                ref_f1.add_metric([model], state.reference_f1)
            yield ref_f1

    def _counters(
        self, events: Counter[str], rejected: Counter[str], closed: Counter[str], replayed: int
    ) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "embmon_events", "Events accepted into windows.", labels=["model"]
        )
        for model, count in sorted(events.items()):
            family.add_metric([model], count)
        yield family
        family = CounterMetricFamily(
            "embmon_events_rejected", "Records rejected, by reason.", labels=["reason"]
        )
        for reason, count in sorted(rejected.items()):
            family.add_metric([reason], count)
        yield family
        family = CounterMetricFamily(
            "embmon_windows_closed", "Windows closed and persisted.", labels=["model"]
        )
        for model, count in sorted(closed.items()):
            family.add_metric([model], count)
        yield family
        yield CounterMetricFamily(
            "embmon_events_replayed",
            "Re-read events of windows already closed (skipped, not re-added).",
            value=replayed,
        )


def window_families(
    latest: Mapping[tuple[str, str], Mapping[str, Any]], max_terms: int, timestamped: bool = False
) -> list[GaugeMetricFamily]:
    """Gauge families of closed windows' records, keyed by (model, segment label).

    With ``timestamped`` every sample carries its window's end as timestamp (backfill).
    """
    ms = ["model", "segment"]
    g = {
        name: GaugeMetricFamily(name, doc, labels=labels)
        for name, doc, labels in [
            ("embmon_drift_score", "Drift score of the last closed window.", [*ms, "metric"]),
            ("embmon_drift_threshold", "Calibrated threshold for that score.", [*ms, "metric"]),
            (
                "embmon_drift_detected",
                "1 if the score exceeded its threshold.",
                [*ms, "metric"],
            ),
            ("embmon_window_drifted", "1 if any metric of the last window drifted.", ms),
            (
                "embmon_closest_centroid_ratio",
                "Share of events closest to each centroid.",
                [*ms, "centroid"],
            ),
            (
                "embmon_centroid_distance",
                "Distance quantiles to each centroid.",
                [*ms, "centroid", "quantile"],
            ),
            ("embmon_classification_f1", "Macro F1 of the last window.", ms),
            ("embmon_classification_accuracy", "Accuracy of the last window.", ms),
            ("embmon_classification_precision", "Macro precision of the last window.", ms),
            ("embmon_classification_recall", "Macro recall of the last window.", ms),
            ("embmon_prediction_ratio", "Share of each predicted class.", [*ms, "class"]),
            (
                "embmon_frequent_term_ratio",
                "Share of all terms taken by each frequent term.",
                [*ms, "term"],
            ),
            ("embmon_window_events", "Events in the last closed window.", ms),
            ("embmon_last_window_end_timestamp_seconds", "End of the last closed window.", ms),
        ]
    }
    for (model, segment), record in sorted(latest.items()):
        ts = parse_time(record["window_end"]) if timestamped else None

        def put(name: str, labels: list[str], value: float) -> None:
            g[name].add_metric(labels, value, timestamp=ts)  # noqa: B023 - used at once

        base = [model, segment]
        for metric, result in record.get("drift", {}).items():
            put("embmon_drift_score", [*base, metric], float(result["score"]))
            if result.get("threshold") is not None:
                put("embmon_drift_threshold", [*base, metric], float(result["threshold"]))
            put("embmon_drift_detected", [*base, metric], float(bool(result["drifted"])))
        put("embmon_window_drifted", base, float(bool(record.get("drifted"))))
        for centroid, ratio in record.get("closest_centroid", {}).items():
            put("embmon_closest_centroid_ratio", [*base, centroid], float(ratio))
        for centroid, quantiles in record.get("centroid_distance", {}).items():
            for quantile, value in quantiles.items():
                put("embmon_centroid_distance", [*base, centroid, quantile], float(value))
        classification = record.get("classification")
        if classification:
            for key, name in [
                ("f1_macro", "f1"),
                ("accuracy", "accuracy"),
                ("precision_macro", "precision"),
                ("recall_macro", "recall"),
            ]:
                put(f"embmon_classification_{name}", base, float(classification[key]))
        for label, ratio in record.get("predictions", {}).items():
            put("embmon_prediction_ratio", [*base, label], float(ratio))
        terms_total = (record.get("text") or {}).get("terms") or 0
        for term, count in record.get("frequent_terms", [])[:max_terms]:
            if terms_total:
                put("embmon_frequent_term_ratio", [*base, term], count / terms_total)
        put("embmon_window_events", base, float(record["events"]))
        put("embmon_last_window_end_timestamp_seconds", base, parse_time(record["window_end"]))
    return list(g.values())
