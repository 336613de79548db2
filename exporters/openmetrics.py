"""Backfill: closed windows as an OpenMetrics file with timestamps, for ``promtool tsdb
create-blocks-from openmetrics FILE DIR``, so a replayed history shows in Prometheus and
Grafana exactly as the live agent would have exported it (each sample at its window's end,
under the same canonical segment label).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition
from prometheus_client.registry import Collector

from .prometheus import window_families
from .records import WindowRecord

__all__ = ["openmetrics_text", "write_openmetrics"]


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def openmetrics_text(
    records: Iterable[WindowRecord],
    *,
    max_terms: int = 10,
    reference_f1: float | None = None,
    term_labels: bool = True,
) -> bytes:
    """The OpenMetrics exposition of every record, one timestamped sample per series and window
    (frequent terms as label values only with ``term_labels``, as the live endpoint)."""
    ordered = sorted(records, key=lambda r: r.end)
    labelled = (((r.model, r.segment.label), r) for r in ordered)
    families: list[Metric] = list(
        window_families(labelled, max_terms, True, term_labels=term_labels)
    )
    if reference_f1 is not None:
        ref = GaugeMetricFamily(
            "embmon_reference_classification_f1",
            "Macro F1 of the reference data.",
            labels=["model"],
        )
        ends = {(r.model, r.end): None for r in ordered}
        for model, end in ends:  # one sample per model and window, whatever the segments
            ref.add_metric([model], reference_f1, timestamp=float(end))
        families.append(ref)
    registry = CollectorRegistry()
    registry.register(_Families(families))
    generate = cast(Callable[[CollectorRegistry], bytes], exposition.generate_latest)
    return generate(registry)


def write_openmetrics(
    records: Iterable[WindowRecord],
    path: str | Path,
    *,
    max_terms: int = 10,
    reference_f1: float | None = None,
    term_labels: bool = True,
) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = openmetrics_text(
        records, max_terms=max_terms, reference_f1=reference_f1, term_labels=term_labels
    )
    out.write_bytes(text)
    return out
