"""``embmon replay``: the live agent's path over a file of events (backtests, backfills)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from exporters.prometheus import AgentMetrics, EmbmonCollector
from sketches.reference import Reference

from .decode import Decoder
from .fields import FieldMap
from .file_source import iter_file_records
from .pipeline import Pipeline
from .progress import Progress

__all__ = ["ReplaySummary", "replay"]


@dataclass(frozen=True)
class ReplaySummary:
    windows: list[dict[str, Any]]
    events: int
    rejected: dict[str, int]
    out: Path


def replay(
    reference: Reference,
    input_path: str | Path,
    *,
    window: timedelta,
    out_dir: str | Path,
    lateness: timedelta | None = None,
    fields: FieldMap | None = None,
    segment_keys: tuple[str, ...] = (),
    default_model: str = "default",
    chunk_size: int = 10_000,
    on_close: Callable[[dict[str, Any]], None] | None = None,
    show_progress: bool = True,
) -> ReplaySummary:
    """Window a file's events like the live agent and write ``out_dir/windows.jsonl``.

    Windows close as event time advances past them plus ``lateness`` (default: one window, so
    mildly unordered files lose nothing); events older than that are counted as late.
    """
    path = Path(input_path)
    decoder = Decoder(reference.dim, fields, segment_keys=segment_keys, default_model=default_model)
    collector = EmbmonCollector(AgentMetrics())
    pipeline = Pipeline(
        reference,
        decoder,
        window=window,
        out_dir=out_dir,
        lateness=window if lateness is None else lateness,
        collector=collector,
        on_close=on_close,
    )
    partition = (f"file:{path.name}", 0)
    pipeline.store.assign(partition, None)
    progress = (
        Progress(f"replaying {path.name}", total=os.path.getsize(path), unit=" B")
        if show_progress
        else None
    )
    windows: list[dict[str, Any]] = []
    done = 0
    for chunk in iter_file_records(path, chunk_size=chunk_size):
        pipeline.ingest(partition, chunk)
        pipeline.store.advance(partition, chunk[-1].offset + 1, caught_up=False)
        windows.extend(pipeline.close())
        done += sum(len(r.value or b"") + 1 for r in chunk)
        if progress is not None:
            progress.update(done, f"{sum(collector.state.events.values()):,} events")
    windows.extend(pipeline.close(everything=True))
    if progress is not None:
        progress.finish(f"{sum(collector.state.events.values()):,} events")
    state = collector.state
    return ReplaySummary(
        windows, sum(state.events.values()), dict(state.rejected), pipeline.log.path.parent
    )
