"""The path of every event, live or replayed: decode, window, close, evaluate, persist.

``agent.driver`` feeds it the polls of any source (Kafka for ``embmon run``, a file for
``embmon replay``), so a backfill, a backtest and the live agent can never disagree about a
window. A window is persisted as its profile file, then its ledger line, then its
``windows.jsonl`` record (``agent.ledger`` says why in that order); only then may the driver
commit the offsets it covered.

Closing is bounded in time: a turn persists due windows for at most ``close_budget_s`` and
leaves the rest for the next turns, so thousands of windows closing at once never keep the
consumer from polling. A window that fails to persist (a full disk, a read-only volume) is
held by the window store, which commits nothing past it, and is tried again each
``retry_every_s``; the other windows go on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Literal

from exporters.records import WindowRecord
from sketches.batch import EventBatch
from sketches.profile import WindowProfile
from sketches.reference import Reference

from .accounting import Accounting
from .decode import DecodedBatch, Decoder, RecordLike
from .output import WindowOutput
from .source import Partition
from .window_caps import Caps
from .window_types import ClosedWindow
from .windows import WindowKey, WindowStore

__all__ = ["Pipeline"]

log = logging.getLogger("embmon")
_LOGGED_PER_REASON = 5
_CLOSE_CHUNK = 32


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
        caps: Caps | None = None,
        revoked_hold_s: float = 30.0,
        close_budget_s: float = 1.0,
        retry_every_s: float = 5.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reference = reference
        self.decoder = decoder
        self.accounting = accounting or Accounting()
        self.accounting.window_seconds = window.total_seconds()
        self.accounting.lateness_seconds = lateness.total_seconds()
        self.accounting.reference_version = reference.version
        self.accounting.reference_f1 = reference.classification_f1
        self.on_close = on_close
        self.output = WindowOutput(
            out_dir,
            reference,
            self.accounting,
            window_seconds=int(window.total_seconds()),
            retry_every_s=retry_every_s,
            timer=timer,
        )
        self._close_budget = close_budget_s
        self._timer = timer
        self._caps = caps or Caps()
        self._logged: Counter[str] = Counter()
        self.behind = False
        """The last ``close`` ran out of time with due windows left."""
        self.store: WindowStore[WindowProfile, EventBatch] = WindowStore(
            window=window,
            factory=self._new_profile,
            lateness=lateness,
            persisted=self.output.ledger.keys(),
            time_mode=time_mode,
            clock=clock,
            max_windows_ahead=max_windows_ahead,
            caps=caps,
            revoked_hold_s=revoked_hold_s,
            timer=timer,
        )

    def _new_profile(self, key: WindowKey) -> WindowProfile:
        return self.reference.new_profile()

    def ingest(self, partition: Partition, records: Sequence[RecordLike]) -> DecodedBatch:
        """Decode one partition's records and route the good events into windows."""
        decoded = self.decoder.decode(records)
        for reject in decoded.rejects:
            self._warn(
                reject.reason,
                "rejected record %s/%s offset %s (%s): %s",
                partition[0],
                partition[1],
                reject.offset,
                reject.reason,
                reject.detail,
            )
        groups = [(g.model, g.segment, g.batch, g.offsets) for g in decoded.groups]
        results = self.store.add_groups(partition, groups)
        added: Counter[str] = Counter()
        rejected = decoded.reject_counts
        replayed = folded = 0
        for group, result in zip(decoded.groups, results, strict=True):
            added[group.model] += result.added
            rejected["late"] += result.late
            rejected["too_many_windows"] += result.refused
            replayed += result.skipped + result.again
            folded += result.folded
            if result.folded:
                self._warn_fold(group.model, group.segment.label)
            if result.refused:
                self._warn(
                    "too_many_windows",
                    "rejected %d event(s) of %s: %d windows are open (max_open_windows)",
                    result.refused,
                    group.model,
                    self._caps.max_windows,
                )
        self.accounting.count(
            events=+added,
            rejected=+rejected,
            replayed=replayed,
            folded=folded,
            open_windows=self.store.open_windows,
        )
        return decoded

    def close(self, everything: bool = False) -> list[WindowRecord]:
        """Close what is due (or everything) and persist it, for at most ``close_budget_s``;
        returns the records persisted. Windows left over come out of the next calls."""
        deadline = self._timer() + self._close_budget
        self.output.catch_up()
        pending: list[ClosedWindow[WindowProfile]] = []
        if self.store.held and self.output.retry_due:
            pending = self.store.take_held()
        records: list[WindowRecord] = []
        self.behind = False
        while True:
            chunk = pending or (
                self.store.close_all(_CLOSE_CHUNK)
                if everything
                else self.store.close_ready(_CLOSE_CHUNK)
            )
            pending = []
            if not chunk:
                break
            records += self._persist(chunk)
            if self._timer() >= deadline:
                self.behind = True
                break
        self.accounting.closed(
            records,
            open_windows=self.store.open_windows,
            watermark=self.store.watermark(),
            held=self.store.held,
        )
        if self.on_close is not None:
            for record in records:
                self.on_close(record)
        return records

    @property
    def done(self) -> bool:
        """No window is open or waiting to be persisted again."""
        return not self.store.open_windows and not self.store.held

    def _persist(self, windows: list[ClosedWindow[WindowProfile]]) -> list[WindowRecord]:
        """Persist ``windows`` (``agent.output``); what fails is held for another try."""
        records, failed = self.output.persist(windows)
        self.store.hold(failed)
        return records

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """Log the first few warnings of each kind (the counters count them all)."""
        if self._logged[kind] < _LOGGED_PER_REASON:
            self._logged[kind] += 1
            log.warning(message, *args)

    def _warn_fold(self, model: str, segment: str) -> None:
        caps = self._caps
        self._warn(
            "folded",
            "windowing events of model %r segment %r as 'other': more than %d models, or %d "
            "segments of a model, have open windows (max_models, max_segments)",
            model,
            segment,
            caps.max_models,
            caps.max_segments,
        )
