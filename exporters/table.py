"""A readable console line per closed window (replay, run and the demo print these).

A partial window (evaluated after its grace period without every collector's part) says
``partial`` after its status; its later, complete record gets a line of its own.

>>> from sketches.drift import DriftResult
>>> from exporters.records import SegmentKey
>>> rec = WindowRecord("news", SegmentKey(), 1_763_596_800, 1_763_683_200, 312,
...     {"closest_centroid": DriftResult("hellinger", 0.41, 0.12, True)},
...     {"forsale": 0.61, "space": 0.05}, {}, "sha256:x", frequent_terms=(("de", 120),))
>>> print(format_row(rec))
2025-11-20 00:00 news       312  DRIFT  closest_centroid 0.410>0.120 | mix forsale 61% space 5% | terms de
>>> from dataclasses import replace
>>> print(format_row(replace(rec, complete=False), max_metrics=1).split(" | ")[0])
2025-11-20 00:00 news       312  DRIFT  partial  closest_centroid 0.410>0.120
"""

from __future__ import annotations

from sketches.drift import DriftResult

from .records import WindowRecord, format_time

__all__ = ["HEADER", "format_row"]

HEADER = "window           model   events  status drift (score>threshold) | f1 | closest-centroid mix | top terms"


def format_row(record: WindowRecord, max_metrics: int = 3) -> str:
    """One line: when, how many, drifted or not (and partial), the worst metrics, F1, mix and
    top terms."""
    start = format_time(record.start).replace("T", " ")[:16]
    status = "DRIFT" if record.drifted else "ok   "
    ranked = sorted(record.drift.items(), key=lambda kv: -_ratio(kv[1]))[:max_metrics]
    parts = []
    for name, result in ranked:
        mark = ">" if result.drifted else "<="
        limit = "n/a" if result.threshold is None else f"{result.threshold:.3f}"
        parts.append(f"{name} {result.score:.3f}{mark}{limit}")
    model = record.model if not record.segment else f"{record.model}[{record.segment.label}]"
    partial = "" if record.complete else "partial  "
    line = f"{start} {model:<8} {record.events:>5}  {status}  {partial}{', '.join(parts)}"
    if record.classification is not None:
        line += f" | f1 {record.classification.f1_macro:.2f}"
    mix = sorted(record.closest_centroid.items(), key=lambda kv: -kv[1])[:3]
    if mix:
        line += " | mix " + " ".join(f"{name} {ratio:.0%}" for name, ratio in mix)
    if record.frequent_terms:
        line += " | terms " + " ".join(term for term, _ in record.frequent_terms[:5])
    return line


def _ratio(result: DriftResult) -> float:
    return result.score / result.threshold if result.threshold else 0.0
