"""A readable console line per closed window (replay, run and the demo print these).

>>> rec = {"model": "news", "window_start": "2026-11-20T00:00:00Z", "events": 312,
...        "drifted": True, "closest_centroid": {"forsale": 0.61, "space": 0.05},
...        "drift": {"closest_centroid": {"score": 0.41, "threshold": 0.12, "drifted": True}},
...        "classification": {"f1_macro": 0.48}, "frequent_terms": [["de", 120]]}
>>> print(format_row(rec))
2026-11-20 00:00 news       312  DRIFT  closest_centroid 0.410>0.120 | f1 0.48 | mix forsale 61% space 5% | terms de
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["HEADER", "format_row"]

HEADER = "window           model   events  status drift (score>threshold) | f1 | closest-centroid mix | top terms"


def format_row(record: Mapping[str, Any], max_metrics: int = 3) -> str:
    """One line: when, how many, drifted or not, the worst metrics, F1, mix and top terms."""
    start = str(record["window_start"]).replace("T", " ")[:16]
    status = "DRIFT" if record.get("drifted") else "ok   "
    drift = record.get("drift", {})
    ranked = sorted(drift.items(), key=lambda kv: -_ratio(kv[1]))[:max_metrics]
    parts = []
    for name, result in ranked:
        threshold = result.get("threshold")
        mark = ">" if result.get("drifted") else "<="
        limit = "n/a" if threshold is None else f"{threshold:.3f}"
        parts.append(f"{name} {result['score']:.3f}{mark}{limit}")
    line = f"{start} {record['model']:<8} {record['events']:>5}  {status}  {', '.join(parts)}"
    classification = record.get("classification")
    if classification:
        line += f" | f1 {classification['f1_macro']:.2f}"
    mix = sorted(record.get("closest_centroid", {}).items(), key=lambda kv: -kv[1])[:3]
    if mix:
        line += " | mix " + " ".join(f"{name} {ratio:.0%}" for name, ratio in mix)
    terms = record.get("frequent_terms")
    if terms:
        line += " | terms " + " ".join(str(term) for term, _ in terms[:5])
    return line


def _ratio(result: Mapping[str, Any]) -> float:
    threshold = result.get("threshold")
    return float(result["score"]) / threshold if threshold else 0.0
