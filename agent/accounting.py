"""What the agent has counted and closed, as one consistent snapshot for the exporters.

The run loop (or a replay) is the only writer; the Prometheus collector reads a
:class:`Snapshot` on each scrape, from the HTTP thread, so every change happens under one
lock and a snapshot never shows counts of one poll with the open windows of another. Label
budgets are the exporter's business; here names are kept exactly as they came.

The latest record of each (model, segment) is kept until that series falls
``expire_after_windows`` windows behind the newest window closed (0: never), so a model or
segment that stopped sending stops being exported instead of showing its last window for ever.

The dead-letter counts are not copied here: ``dead_letters`` (``DeadLetters.counts`` in
``embmon run``) is read on each snapshot, since the producer's own thread updates them.

>>> a = Accounting(window_seconds=60.0, expire_after_windows=2)
>>> a.count(events={"m": 3}, rejected={"late": 1})
>>> s = a.snapshot()
>>> dict(s.events), dict(s.rejected), s.window_seconds
({'m': 3}, {'late': 1}, 60.0)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from exporters.prometheus import DeadLetterCounts, Snapshot
from exporters.records import SegmentKey, WindowRecord

__all__ = ["Accounting"]


@dataclass
class Accounting:
    """Counters of records and windows, lag, and the latest closed window of each series."""

    version: str = ""
    reference_version: str = ""
    reference_f1: float | None = None
    window_seconds: float = 0.0
    lateness_seconds: float = 0.0
    expire_after_windows: int = 0
    dead_letters: Callable[[], DeadLetterCounts] | None = None
    _events: Counter[str] = field(default_factory=Counter)
    _rejected: Counter[str] = field(default_factory=Counter)
    _replayed: int = 0
    _folded: int = 0
    _persist_errors: int = 0
    _held: int = 0
    _windows_closed: Counter[str] = field(default_factory=Counter)
    _latest: dict[tuple[str, SegmentKey], WindowRecord] = field(default_factory=dict)
    _lag: dict[tuple[str, int], int] = field(default_factory=dict)
    _open_windows: int = 0
    _watermark: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(
        self,
        *,
        events: Mapping[str, int] = MappingProxyType({}),
        rejected: Mapping[str, int] = MappingProxyType({}),
        replayed: int = 0,
        folded: int = 0,
        persist_errors: int = 0,
        open_windows: int | None = None,
    ) -> None:
        """Add what one batch of records came to (``open_windows``: the store's count after it).

        ``folded``: events windowed under ``other`` by the caps; ``persist_errors``: failed
        attempts to persist windows.
        """
        with self._lock:
            self._events.update(events)
            self._rejected.update(rejected)
            self._replayed += replayed
            self._folded += folded
            self._persist_errors += persist_errors
            if open_windows is not None:
                self._open_windows = open_windows

    def closed(
        self,
        records: Iterable[WindowRecord],
        *,
        open_windows: int,
        watermark: float | None,
        held: int = 0,
    ) -> None:
        """Windows closed and persisted: they become the latest of their series (``held``:
        closed windows still waiting to be persisted)."""
        with self._lock:
            self._held = held
            for record in records:
                self._latest[(record.model, record.segment)] = record
                self._windows_closed[record.model] += 1
            self._open_windows, self._watermark = open_windows, watermark
            self._expire()

    def set_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        with self._lock:
            self._lag = dict(lag)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                version=self.version,
                reference_version=self.reference_version,
                reference_f1=self.reference_f1,
                window_seconds=self.window_seconds,
                lateness_seconds=self.lateness_seconds,
                events=MappingProxyType(Counter(self._events)),
                rejected=MappingProxyType(Counter(self._rejected)),
                replayed=self._replayed,
                windows_closed=MappingProxyType(Counter(self._windows_closed)),
                latest=tuple(self._latest[key] for key in sorted(self._latest, key=_order)),
                lag=MappingProxyType(dict(self._lag)),
                open_windows=self._open_windows,
                watermark=self._watermark,
                folded=self._folded,
                persist_errors=self._persist_errors,
                held_windows=self._held,
                dead_letters=self.dead_letters() if self.dead_letters is not None else None,
            )

    def _expire(self) -> None:
        if not self.expire_after_windows or not self._latest:
            return
        newest = max(record.end for record in self._latest.values())
        oldest_kept = newest - self.expire_after_windows * self.window_seconds
        for key in [k for k, r in self._latest.items() if r.end < oldest_kept]:
            del self._latest[key]


def _order(key: tuple[str, SegmentKey]) -> tuple[str, str]:
    return key[0], key[1].label
