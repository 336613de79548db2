"""``embmon replay``: the live agent's driver over a file of events (backtests, backfills)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from exporters.records import WindowRecord
from sketches.reference import Reference

from .accounting import Accounting
from .decode import Decoder
from .driver import Driver
from .fields import FieldMap
from .file_source import FileSource
from .ledger import prepare_out
from .pipeline import Pipeline
from .progress import Progress
from .window_caps import Caps

__all__ = ["ReplaySummary", "replay"]


@dataclass(frozen=True)
class ReplaySummary:
    windows: list[WindowRecord]
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
    overwrite: bool = False,
    resume: bool = False,
    on_close: Callable[[WindowRecord], None] | None = None,
    show_progress: bool = True,
    caps: Caps | None = None,
) -> ReplaySummary:
    """Window a file's events like the live agent and write ``out_dir/windows.jsonl``.

    Windows close as event time advances past them plus ``lateness`` (default: one window, so
    mildly unordered files lose nothing); events older than that are counted as late. An
    ``out_dir`` holding an earlier run's output is refused unless ``overwrite`` (start again)
    or ``resume`` (continue it: windows already persisted are not emitted again). ``caps``
    bound the models, segments and open windows as in the live agent (``agent.window_caps``).
    """
    out = prepare_out(out_dir, overwrite=overwrite, resume=resume)
    source = FileSource(input_path, chunk_size=chunk_size)
    decoder = Decoder(reference.dim, fields, segment_keys=segment_keys, default_model=default_model)
    windows: list[WindowRecord] = []

    def closed(record: WindowRecord) -> None:
        windows.append(record)
        if on_close is not None:
            on_close(record)

    accounting = Accounting()
    pipeline = Pipeline(
        reference,
        decoder,
        window=window,
        out_dir=out,
        lateness=window if lateness is None else lateness,
        accounting=accounting,
        on_close=closed,
        caps=caps,
    )
    progress = (
        Progress(f"replaying {source.partition[0][5:]}", total=source.size, unit=" B")
        if show_progress
        else None
    )

    def events() -> str:
        return f"{sum(accounting.snapshot().events.values()):,} events"

    def turn() -> None:
        if progress is not None:
            progress.update(source.bytes_read, events())

    Driver(pipeline, source, poll_timeout_ms=0, on_turn=turn).run()
    if progress is not None:
        progress.finish(events())
    snapshot = accounting.snapshot()
    return ReplaySummary(windows, sum(snapshot.events.values()), dict(snapshot.rejected), out)
