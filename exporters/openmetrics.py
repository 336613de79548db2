"""Backfill: closed windows as an OpenMetrics file with timestamps, for ``promtool tsdb
create-blocks-from openmetrics FILE DIR``, so a replayed history shows in Prometheus and
Grafana exactly as the live agent would have exported it (each sample at its window's end).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition
from prometheus_client.registry import Collector

from .prometheus import window_families
from .records import parse_time, segment_label

__all__ = ["openmetrics_text", "write_openmetrics"]


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def openmetrics_text(
    records: Iterable[Mapping[str, Any]], *, max_terms: int = 10, reference_f1: float | None = None
) -> bytes:
    """The OpenMetrics exposition of every record, one timestamped sample per series and window."""
    ordered = sorted(records, key=lambda r: parse_time(r["window_end"]))
    merged: dict[str, Metric] = {}
    for record in ordered:
        key = (str(record["model"]), segment_label(tuple((record.get("segment") or {}).items())))
        for family in window_families({key: record}, max_terms, timestamped=True):
            target = merged.setdefault(family.name, family)
            if target is not family:
                target.samples.extend(family.samples)
    families = list(merged.values())
    if reference_f1 is not None:
        ref = GaugeMetricFamily(
            "embmon_reference_classification_f1",
            "Macro F1 of the reference data.",
            labels=["model"],
        )
        ends = {(str(r["model"]), parse_time(r["window_end"])): None for r in ordered}
        for model, end in ends:  # one sample per model and window, whatever the segments
            ref.add_metric([model], reference_f1, timestamp=end)
        families.append(ref)
    registry = CollectorRegistry()
    registry.register(_Families(families))
    generate = cast(Callable[[CollectorRegistry], bytes], exposition.generate_latest)
    return generate(registry)


def write_openmetrics(
    records: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    max_terms: int = 10,
    reference_f1: float | None = None,
) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(openmetrics_text(records, max_terms=max_terms, reference_f1=reference_f1))
    return out
