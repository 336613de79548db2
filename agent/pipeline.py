"""The path of every event, live or replayed: decode, window, close, evaluate, persist.

``embmon run`` feeds it Kafka polls and ``embmon replay`` feeds it file chunks, so a backfill,
a backtest and the live agent can never disagree about a window.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from exporters.profile_sink import ProfileSink
from exporters.prometheus import AgentMetrics, EmbmonCollector
from exporters.records import Segment, segment_label, window_record
from exporters.windows_log import WindowsLog
from sketches.drift import evaluate
from sketches.profile import WindowProfile
from sketches.reference import Reference

from .decode import DecodedBatch, Decoder, RecordLike
from .windows import ClosedWindow, Partition, WindowKey, WindowStore

__all__ = ["Pipeline"]

log = logging.getLogger("embmon")
_LOGGED_PER_REASON = 5


class Pipeline:
    """Decoded events in, closed and persisted window records out."""

    def __init__(
        self,
        reference: Reference,
        decoder: Decoder,
        *,
        window: timedelta,
        out_dir: str | Path,
        lateness: timedelta = timedelta(0),
        time_mode: Literal["event", "processing"] = "event",
        clock: Callable[[], float] = time.time,
        max_windows_ahead: int = 3,
        collector: EmbmonCollector | None = None,
        on_close: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.reference = reference
        self.decoder = decoder
        self.log = WindowsLog(out_dir)
        self.sink = ProfileSink(out_dir)
        self.collector = collector or EmbmonCollector(AgentMetrics())
        self.metrics = self.collector.state
        self.metrics.window_seconds = window.total_seconds()
        self.metrics.lateness_seconds = lateness.total_seconds()
        self.metrics.reference_version = reference.version
        self.metrics.reference_f1 = reference.classification_f1
        self.on_close = on_close
        self.store: WindowStore[WindowProfile, Any] = WindowStore(
            window=window,
            factory=self._new_profile,
            lateness=lateness,
            closed_keys=(WindowKey(*key) for key in self.log.closed_keys()),
            time_mode=time_mode,
            clock=clock,
            max_windows_ahead=max_windows_ahead,
        )
        self._segments: dict[str, Segment] = {"": ()}
        self._logged: Counter[str] = Counter()

    def _new_profile(self, key: WindowKey) -> WindowProfile:
        return self.reference.new_profile()

    def ingest(self, partition: Partition, records: Sequence[RecordLike]) -> DecodedBatch:
        """Decode one partition's records and route the good events into windows."""
        decoded = self.decoder.decode(records)
        for reject in decoded.rejects:
            if self._logged[reject.reason] < _LOGGED_PER_REASON:
                self._logged[reject.reason] += 1
                log.warning(
                    "rejected record %s/%s offset %s (%s): %s",
                    partition[0],
                    partition[1],
                    reject.offset,
                    reject.reason,
                    reject.detail,
                )
        late = replayed = 0
        added: Counter[str] = Counter()
        for group in decoded.groups:
            label = segment_label(group.segment)
            self._segments.setdefault(label, group.segment)
            result = self.store.add(partition, group.model, label, group.batch, group.offsets)
            added[self.collector.admit_model(group.model)] += result.added
            late += result.late
            replayed += result.skipped
        with self.metrics.lock:
            self.metrics.rejected.update(decoded.reject_counts)
            if late:
                self.metrics.rejected["late"] += late
            self.metrics.events.update(added)
            self.metrics.replayed += replayed
            self.metrics.open_windows = self.store.open_windows  # consistent with the counts
        return decoded

    def close(self, everything: bool = False) -> list[dict[str, Any]]:
        """Close what is due (or everything), evaluate, persist; returns the new records.

        Profiles are written first and ``windows.jsonl`` last: a line there is the promise
        that the window is complete, and only after it may the caller commit offsets.
        """
        closed = self.store.close_all() if everything else self.store.close_ready()
        records = [self._record(window) for window in closed]
        self.log.append(records)
        for record in records:
            self.collector.accept(record)
            if self.on_close is not None:
                self.on_close(record)
        with self.metrics.lock:
            self.metrics.open_windows = self.store.open_windows
            self.metrics.watermark = self.store.watermark()
        return records

    def _record(self, window: ClosedWindow[WindowProfile]) -> dict[str, Any]:
        key = window.key
        self.sink.write(key.model, key.segment, key.start, window.profile)
        drift = evaluate(window.profile, self.reference)
        segment = self._segments.get(key.segment, ())
        return window_record(key.model, segment, key.start, window.end, window.profile, drift)
