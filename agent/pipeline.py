"""The path of every event, live or replayed: decode, window, close, evaluate, persist.

``agent.driver`` feeds it the polls of any source (Kafka for ``embmon run``, a file for
``embmon replay``), so a backfill, a backtest and the live agent can never disagree about a
window. A window is persisted as its profile file, then its ledger line, then its
``windows.jsonl`` record (``agent.ledger`` says why in that order); only then may the driver
commit the offsets it covered.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Literal

from exporters.profile_sink import ProfileSink
from exporters.records import WindowRecord
from exporters.windows_log import WindowsLog
from sketches.batch import EventBatch
from sketches.drift import evaluate
from sketches.profile import WindowProfile
from sketches.reference import Reference

from .accounting import Accounting
from .decode import DecodedBatch, Decoder, RecordLike
from .ledger import WindowLedger
from .source import Partition
from .windows import WindowKey, WindowStore

__all__ = ["Pipeline"]

log = logging.getLogger("embmon")
_LOGGED_PER_REASON = 5


class Pipeline:
    """Decoded events in, closed and persisted window records out.

    ``out_dir`` must be ready for this run (``agent.ledger.prepare_out``); windows its ledger
    already holds are not emitted again, and records a crash kept out of ``windows.jsonl`` are
    written again from their saved profiles.
    """

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
        accounting: Accounting | None = None,
        on_close: Callable[[WindowRecord], None] | None = None,
    ) -> None:
        self.reference = reference
        self.decoder = decoder
        self.log = WindowsLog(out_dir)
        self.sink = ProfileSink(out_dir)
        self.ledger = WindowLedger(out_dir)
        self.accounting = accounting or Accounting()
        self.accounting.window_seconds = window.total_seconds()
        self.accounting.lateness_seconds = lateness.total_seconds()
        self.accounting.reference_version = reference.version
        self.accounting.reference_f1 = reference.classification_f1
        self.on_close = on_close
        self._window_seconds = int(window.total_seconds())
        self._recover()
        self.store: WindowStore[WindowProfile, EventBatch] = WindowStore(
            window=window,
            factory=self._new_profile,
            lateness=lateness,
            persisted=self.ledger.keys(),
            time_mode=time_mode,
            clock=clock,
            max_windows_ahead=max_windows_ahead,
        )
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
        groups = [(g.model, g.segment, g.batch, g.offsets) for g in decoded.groups]
        results = self.store.add_groups(partition, groups)
        for group, result in zip(decoded.groups, results, strict=True):
            added[group.model] += result.added
            late += result.late
            replayed += result.skipped
        rejected = decoded.reject_counts
        if late:
            rejected["late"] += late
        self.accounting.count(
            events=added, rejected=rejected, replayed=replayed, open_windows=self.store.open_windows
        )
        return decoded

    def close(self, everything: bool = False) -> list[WindowRecord]:
        """Close what is due (or everything), evaluate and persist; returns the new records."""
        closed = self.store.close_all() if everything else self.store.close_ready()
        for window in closed:
            self.sink.write(window.key.model, window.key.segment, window.key.start, window.profile)
        self.ledger.append(window.key for window in closed)
        records = [self._record(window.key, window.end, window.profile) for window in closed]
        self.log.append(records)
        self.accounting.closed(
            records, open_windows=self.store.open_windows, watermark=self.store.watermark()
        )
        if self.on_close is not None:
            for record in records:
                self.on_close(record)
        return records

    def _record(self, key: WindowKey, end: int, profile: WindowProfile) -> WindowRecord:
        drift = evaluate(profile, self.reference)
        return WindowRecord.from_profile(key.model, key.segment, key.start, end, profile, drift)

    def _recover(self) -> None:
        """Write the records of windows persisted just before a crash cut off their log line."""
        missing = self.ledger.missing_from(self.log.path)
        if missing:
            log.warning(
                "writing %d window record(s) a crash left out of windows.jsonl", len(missing)
            )
        self.log.append(
            self._record(key, key.start + self._window_seconds, self.sink.read(*key))
            for key in missing
        )
