"""The ``windows.jsonl`` record of a closed window: what every output is built from.

One record per closed (model, segment, window); see docs/contracts.md for the format. The
Prometheus collector, the console table, the report and the OpenMetrics backfill all read
these records, so a replay and a live run can never disagree on what a window showed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sketches.drift import DriftResult
from sketches.profile import WindowProfile

__all__ = [
    "DISTANCE_QUANTILES",
    "TOP_TERMS",
    "Segment",
    "format_time",
    "parse_time",
    "segment_label",
    "window_record",
]

Segment = tuple[tuple[str, str], ...]
DISTANCE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TOP_TERMS = 10


def format_time(epoch_seconds: float) -> str:
    """UTC ISO 8601 with a ``Z``, second precision when whole.

    >>> format_time(0), format_time(1.5)
    ('1970-01-01T00:00:00Z', '1970-01-01T00:00:01.500000Z')
    """
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Inverse of :func:`format_time` (any ISO 8601 with a zone; naive means UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def segment_label(segment: Segment) -> str:
    """Canonical ``k1=v1,k2=v2`` form of a segment ("" for none).

    >>> segment_label((("region", "eu"), ("tier", "gold")))
    'region=eu,tier=gold'
    """
    return ",".join(f"{k}={v}" for k, v in segment)


def window_record(
    model: str,
    segment: Segment,
    start: float,
    end: float,
    profile: WindowProfile,
    drift: Mapping[str, DriftResult],
) -> dict[str, Any]:
    """The JSON-able record of a closed window."""
    record: dict[str, Any] = {"model": model}
    if segment:
        record["segment"] = dict(segment)
    record.update(
        window_start=format_time(start),
        window_end=format_time(end),
        events=profile.count,
        drifted=any(result.drifted for result in drift.values()),
        drift={name: result.to_dict() for name, result in sorted(drift.items())},
        closest_centroid=profile.closest.ratios(),
        centroid_distance={
            label: {str(q): float(v) for q, v in zip(DISTANCE_QUANTILES, values, strict=True)}
            for label, values in profile.distance_quantiles(DISTANCE_QUANTILES).items()
        },
    )
    if profile.invalid:
        record["invalid"] = profile.invalid
    confusion = profile.confusion
    if confusion.total:
        record["classification"] = {
            "labelled": confusion.total,
            "accuracy": confusion.accuracy(),
            "f1_macro": confusion.f1_macro(),
            "precision_macro": confusion.precision_macro(),
            "recall_macro": confusion.recall_macro(),
            "per_class": confusion.per_class(),
        }
    if profile.predictions.total:
        record["predictions"] = profile.predictions.ratios()
    text = profile.text
    if text.documents:
        record["frequent_terms"] = [[t, c] for t, c in text.terms.top(TOP_TERMS)]
        record["text"] = {
            "documents": text.documents,
            "terms": text.terms.total_weight,
            "doc_length_median": float(text.doc_length.quantiles(0, [0.5])[0]),
            "term_length_median": (
                float(text.term_length.quantiles(0, [0.5])[0]) if text.term_length.count else None
            ),
            "distinct_terms": text.distinct.estimate(),
        }
    record["reference"] = profile.reference_version
    return record
