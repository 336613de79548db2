"""Prometheus exposition of embmon: a custom collector over the agent's latest snapshot.

Gauges are rebuilt from a :class:`Snapshot` on every scrape, so label values of windows,
partitions or terms that are gone simply vanish. Label cardinality is bounded here, at export
only: models beyond ``max_models`` and, per model, segments beyond ``max_segments`` are folded
into ``other`` (and counted); terms are the top ``max_terms``. All values are base units:
ratios 0–1, timestamps in seconds.

Frequent terms are event text, so they are the one label that can carry user data verbatim.
``term_labels=False`` exports none of them (``embmon_frequent_term_ratio`` is not exported at
all). When on, each term goes through :func:`term_label` before it becomes a label value: at
most :data:`TERM_LABEL_MAX` (64) characters (longer terms keep 63 and end in ``…``), and control
characters (C0, DEL, C1: newlines and tabs too), line and paragraph separators, bidirectional
overrides and lone surrogates (text that is not valid UTF-8) each become U+FFFD ``�``. Terms
that turn out the same are one series whose ratio is their sum.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .records import WindowRecord
from .snapshot import DeadLetterCounts, ProfileCounts, Snapshot

__all__ = [
    "TERM_LABEL_MAX",
    "DeadLetterCounts",
    "EmbmonCollector",
    "LabelBudget",
    "ProfileCounts",
    "Snapshot",
    "term_label",
    "window_families",
]

OTHER = "other"
TERM_LABEL_MAX = 64  # characters of a term label value, "…" included
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def term_label(term: str) -> str:
    """The label value of a frequent term: bounded and free of control characters.

    >>> term_label("plain"), term_label("two\\nlines\\x00"), term_label("\\ud800x")
    ('plain', 'two�lines�', '�x')
    >>> long = term_label("a" * 10_000)
    >>> len(long), long[-2:]
    (64, 'a…')
    >>> term_label("")
    '(empty)'
    """
    if len(term) > TERM_LABEL_MAX:
        term = term[: TERM_LABEL_MAX - 1] + "…"
    return _UNSAFE.sub("\ufffd", term) or "(empty)"


class LabelBudget:
    """Admits at most ``limit`` distinct values of a label, first come; the rest become ``other``.

    >>> b = LabelBudget("model", 1)
    >>> b.admit("a"), b.admit("b"), b.admit("a"), b.admit("b"), b.folded
    ('a', 'other', 'a', 'other', 1)
    """

    def __init__(self, label: str, limit: int) -> None:
        self.label = label
        self.limit = limit
        self._seen: set[str] = set()
        self._folded: set[str] = set()

    @property
    def folded(self) -> int:
        """Distinct values folded into ``other`` so far."""
        return len(self._folded)

    def admit(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        self._folded.add(value)
        return OTHER


class EmbmonCollector(Collector):
    """Builds every embmon metric family from the snapshot ``snapshot()`` returns."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        max_models: int = 50,
        max_segments: int = 50,
        max_terms: int = 10,
        term_labels: bool = True,
    ) -> None:
        self._snapshot = snapshot
        self.models = LabelBudget("model", max_models)
        self._max_segments = max_segments
        self._segments: dict[str, LabelBudget] = {}
        self.max_terms = max_terms
        self.term_labels = term_labels

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        latest: dict[tuple[str, str], WindowRecord] = {}
        for record in s.latest:
            key = (self.models.admit(record.model), self._segment(record))
            if key not in latest or latest[key].end <= record.end:
                latest[key] = record
        yield from self._counters(s)
        yield from window_families(latest.items(), self.max_terms, term_labels=self.term_labels)
        lag = GaugeMetricFamily(
            "embmon_consumer_lag_records",
            "Records between the consumer position and the partition end.",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(s.lag.items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        yield GaugeMetricFamily(
            "embmon_open_windows", "Window profiles held open in memory.", value=s.open_windows
        )
        if s.watermark is not None:
            yield GaugeMetricFamily(
                "embmon_watermark_timestamp_seconds",
                "Event-time watermark of the agent.",
                value=s.watermark,
            )
        yield GaugeMetricFamily(
            "embmon_window_size_seconds", "Tumbling window size.", value=s.window_seconds
        )
        yield GaugeMetricFamily(
            "embmon_window_lateness_seconds",
            "Allowed lateness before a window closes.",
            value=s.lateness_seconds,
        )
        folded = CounterMetricFamily(
            "embmon_label_values_folded",
            "Distinct label values folded into 'other' by the cardinality bounds.",
            labels=["label"],
        )
        folded.add_metric(["model"], self.models.folded)
        folded.add_metric(["segment"], sum(b.folded for b in self._segments.values()))
        yield folded
        info = GaugeMetricFamily(
            "embmon_build_info",
            "embmon version and reference version.",
            labels=["version", "reference"],
        )
        info.add_metric([s.version, s.reference_version], 1)
        yield info
        if s.reference_f1 is not None:
            ref_f1 = GaugeMetricFamily(
                "embmon_reference_classification_f1",
                "Macro F1 of the reference data.",
                labels=["model"],
            )
            for model in sorted({m for m, _ in latest}):
                ref_f1.add_metric([model], s.reference_f1)
            yield ref_f1

    def _segment(self, record: WindowRecord) -> str:
        budget = self._segments.setdefault(record.model, LabelBudget("segment", self._max_segments))
        return budget.admit(record.segment.label)

    def _by_model(self, counts: Mapping[str, int]) -> list[tuple[str, int]]:
        folded: Counter[str] = Counter()
        for model, count in counts.items():
            folded[self.models.admit(model)] += count
        return sorted(folded.items())

    def _counters(self, s: Snapshot) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "embmon_events", "Events accepted into windows.", labels=["model"]
        )
        for model, count in self._by_model(s.events):
            family.add_metric([model], count)
        yield family
        family = CounterMetricFamily(
            "embmon_events_rejected", "Records rejected, by reason.", labels=["reason"]
        )
        for reason, count in sorted(s.rejected.items()):
            family.add_metric([reason], count)
        yield family
        family = CounterMetricFamily(
            "embmon_windows_closed", "Windows closed and persisted.", labels=["model"]
        )
        for model, count in self._by_model(s.windows_closed):
            family.add_metric([model], count)
        yield family
        yield CounterMetricFamily(
            "embmon_events_replayed",
            "Records read again (after a restart or a revocation), each counted once before.",
            value=s.replayed,
        )
        yield CounterMetricFamily(
            "embmon_events_folded",
            "Events windowed as model or segment 'other': over max_models or max_segments "
            "with open windows.",
            value=s.folded,
        )
        yield CounterMetricFamily(
            "embmon_persist_errors",
            "Failed attempts to persist closed windows (each is held and tried again).",
            value=s.persist_errors,
        )
        yield GaugeMetricFamily(
            "embmon_windows_held",
            "Closed windows waiting to be persisted again; offsets are not committed past them.",
            value=s.held_windows,
        )
        if s.dead_letters is not None:
            yield from _dead_letter_families(s.dead_letters)
        if s.profiles is not None:
            yield from _profile_families(s.profiles)
        if s.partitions_owned is not None:
            yield GaugeMetricFamily(
                "embmon_partitions_owned",
                "Partitions this member holds (of the events topic for a collector, of the "
                "profiles topic for an evaluator).",
                value=s.partitions_owned,
            )


def _profile_families(counts: ProfileCounts) -> Iterator[Metric]:
    """The scaled layout's partial-profile counts: each family only on the side that counts it
    (``published`` on collectors, the others on evaluators)."""
    counters = (
        (
            "published",
            counts.published,
            "Partial window profiles published to the profiles topic (collectors only).",
        ),
        (
            "merged",
            counts.merged,
            "Partial window profiles merged into their windows (evaluators only).",
        ),
        (
            "duplicate",
            counts.duplicate,
            "Partial window profiles dropped as already merged: published again after a "
            "collector's crash or refused commit (evaluators only).",
        ),
        (
            "late",
            counts.late,
            "Partial window profiles dropped because their window was already emitted "
            "complete; their events count as late (evaluators only).",
        ),
    )
    for name, value, doc in counters:
        if value is not None:
            yield CounterMetricFamily(f"embmon_profiles_{name}", doc, value=value)
    if counts.pending is not None:
        yield GaugeMetricFamily(
            "embmon_profiles_pending",
            "Partial window profiles received and waiting for their seal or for a gap before "
            "them (evaluators only).",
            value=counts.pending,
        )


def _dead_letter_families(counts: DeadLetterCounts) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "embmon_dead_letters_sent",
        "Rejected records written to the dead-letter topic (acknowledged by the broker).",
        value=counts.sent,
    )
    dropped = CounterMetricFamily(
        "embmon_dead_letters_dropped",
        "Rejected records not on the dead-letter topic: over dead_letter_rate, or undeliverable "
        "after the producer's retries.",
        labels=["reason"],
    )
    dropped.add_metric(["rate"], counts.dropped_rate)
    dropped.add_metric(["undeliverable"], counts.dropped_undeliverable)
    yield dropped
    yield GaugeMetricFamily(
        "embmon_dead_letters_pending",
        "Dead letters in flight; offsets are not committed past them.",
        value=counts.pending,
    )


def window_families(
    latest: Iterable[tuple[tuple[str, str], WindowRecord]],
    max_terms: int,
    timestamped: bool = False,
    *,
    term_labels: bool = True,
) -> list[GaugeMetricFamily]:
    """Gauge families of closed windows' records, each under its (model, segment) labels.

    With ``timestamped`` every sample carries its window's end as timestamp (backfill). Terms
    are labels only with ``term_labels``, then through :func:`term_label`.
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
                "embmon_drift_contributor",
                "The parts of a metric that moved most in the last window, by rank (1 = most): "
                "a centroid's share change, KS or share of the shift, a class's or term's share "
                "change.",
                [*ms, "metric", "rank", "part"],
            ),
            (
                "embmon_closest_centroid_ratio",
                "Share of events closest to each centroid.",
                [*ms, "centroid"],
            ),
            (
                "embmon_centroid_distance",
                "Distance quantiles to each centroid.",
                [*ms, "centroid", "q"],
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
            (
                "embmon_window_complete",
                "1 if the last closed window's record is complete, 0 if partial: evaluated "
                "after its grace period without every collector's part.",
                ms,
            ),
            ("embmon_last_window_end_timestamp_seconds", "End of the last closed window.", ms),
        ]
    }
    for (model, segment), record in latest:
        ts = float(record.end) if timestamped else None

        def put(name: str, labels: list[str], value: float) -> None:
            g[name].add_metric(labels, value, timestamp=ts)  # noqa: B023 - used at once

        base = [model, segment]
        for metric, result in record.drift.items():
            put("embmon_drift_score", [*base, metric], result.score)
            if result.threshold is not None:
                put("embmon_drift_threshold", [*base, metric], result.threshold)
            put("embmon_drift_detected", [*base, metric], float(result.drifted))
            if metric == "frequent_terms" and not term_labels:
                continue
            for rank, (part, value) in enumerate(result.contributors, start=1):
                shown = term_label(part) if metric == "frequent_terms" else part
                put("embmon_drift_contributor", [*base, metric, str(rank), shown], value)
        put("embmon_window_drifted", base, float(record.drifted))
        for centroid, ratio in record.closest_centroid.items():
            put("embmon_closest_centroid_ratio", [*base, centroid], ratio)
        for centroid, quantiles in record.centroid_distance.items():
            for q, value in quantiles.items():
                put("embmon_centroid_distance", [*base, centroid, q], value)
        c = record.classification
        if c is not None:
            put("embmon_classification_f1", base, c.f1_macro)
            put("embmon_classification_accuracy", base, c.accuracy)
            put("embmon_classification_precision", base, c.precision_macro)
            put("embmon_classification_recall", base, c.recall_macro)
        for label, ratio in (record.predictions or {}).items():
            put("embmon_prediction_ratio", [*base, label], ratio)
        terms_total = record.text.terms if record.text is not None else 0
        if term_labels and terms_total:
            shares: dict[str, float] = {}
            for term, count in record.frequent_terms[:max_terms]:
                label = term_label(term)
                shares[label] = shares.get(label, 0.0) + count / terms_total
            for label, share in shares.items():
                put("embmon_frequent_term_ratio", [*base, label], share)
        put("embmon_window_events", base, float(record.events))
        put("embmon_window_complete", base, float(record.complete))
        put("embmon_last_window_end_timestamp_seconds", base, float(record.end))
    if not term_labels:
        del g["embmon_frequent_term_ratio"]
    return list(g.values())
