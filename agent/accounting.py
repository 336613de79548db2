"""What the agent has counted and closed, as one consistent snapshot for the exporters.

The run loop (or a replay) is the only writer; the Prometheus collector reads a
:class:`Snapshot` on each scrape, from the HTTP thread, so every change happens under one
lock and a snapshot never shows counts of one poll with the open windows of another. Label
budgets are the exporter's business; here names are kept exactly as they came.

The latest record of each (model, segment) is kept until that series falls
``expire_after_windows`` windows behind the newest window closed (0: never), so a model or
segment that stopped sending stops being exported instead of showing its last window for ever.
A record replaces its series' latest only if its window starts no earlier: an evaluator of the
scaled layout may emit an older window again (a partial window re-evaluated when its missing
part arrives) after a newer one, and that must not take the series back in time. Such a
re-emission is one window, not another: ``embmon_windows_closed_total`` counts a key again
only if none of its earlier records was partial.

The scaled layout's counts (``count_profiles``, ``set_profiles_pending``,
``set_partitions_owned``) are None in the snapshot until first given, so a single process
exports none of their families. A collector gives ``published``; an evaluator gives the others,
whose four families appear together from its first call (call with 0 at start for the series to
exist from the start).

The dead-letter counts are not copied here: ``dead_letters`` (``DeadLetters.counts`` in
``embmon run``) is read on each snapshot, since the producer's own thread updates them.

>>> a = Accounting(window_seconds=60.0, expire_after_windows=2)
>>> a.count(events={"m": 3}, rejected={"late": 1})
>>> s = a.snapshot()
>>> dict(s.events), dict(s.rejected), s.window_seconds
({'m': 3}, {'late': 1}, 60.0)
>>> s.profiles, s.partitions_owned
(None, None)
>>> a.count_profiles(merged=2, late=1)
>>> a.set_partitions_owned(3)
>>> s = a.snapshot()
>>> s.profiles, s.partitions_owned
(ProfileCounts(published=None, merged=2, duplicate=0, late=1, pending=0), 3)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from exporters.records import SegmentKey, WindowRecord
from exporters.snapshot import DeadLetterCounts, ProfileCounts, Snapshot

__all__ = ["Accounting"]

_PARTIAL_KEYS_KEPT = 10_000  # windows emitted partial remembered, to count each window once


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
    _partial: dict[tuple[str, SegmentKey, int], None] = field(default_factory=dict)
    _published: int | None = None
    _evaluator: bool = False  # merged, duplicate, late and pending given at least once
    _merged: int = 0
    _duplicate: int = 0
    _late: int = 0
    _pending: int = 0
    _partitions_owned: int | None = None
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
        """Windows closed and persisted: each becomes the latest of its series unless that
        holds a later window (``held``: closed windows still waiting to be persisted).

        A record of a key emitted partial before (re-evaluated) is not counted closed again.
        """
        with self._lock:
            self._held = held
            for record in records:
                series = (record.model, record.segment)
                current = self._latest.get(series)
                if current is None or current.start <= record.start:
                    self._latest[series] = record
                if record.key in self._partial:
                    if record.complete:
                        del self._partial[record.key]
                else:
                    self._windows_closed[record.model] += 1
                    if not record.complete:
                        self._partial[record.key] = None
                        if len(self._partial) > _PARTIAL_KEYS_KEPT:
                            del self._partial[next(iter(self._partial))]
            self._open_windows, self._watermark = open_windows, watermark
            self._expire()

    def set_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        with self._lock:
            self._lag = dict(lag)

    def count_profiles(
        self,
        *,
        published: int | None = None,
        merged: int | None = None,
        duplicate: int | None = None,
        late: int | None = None,
    ) -> None:
        """Add partial-profile counts of the scaled layout (see ``ProfileCounts``).

        A collector names ``published``; an evaluator ``merged``, ``duplicate`` and ``late``
        (naming any of them, 0 included, exports all four evaluator families). Counts are
        increments, never negative.
        """
        given = {"published": published, "merged": merged, "duplicate": duplicate, "late": late}
        negative = {name: n for name, n in given.items() if n is not None and n < 0}
        if negative:
            raise ValueError(f"profile counts only grow, got {negative}")
        with self._lock:
            if published is not None:
                self._published = (self._published or 0) + published
            if merged is not None or duplicate is not None or late is not None:
                self._evaluator = True
                self._merged += merged or 0
                self._duplicate += duplicate or 0
                self._late += late or 0

    def set_profiles_pending(self, n: int) -> None:
        """Partial profiles an evaluator holds, waiting for their seal or for a gap before them."""
        with self._lock:
            self._evaluator = True
            self._pending = n

    def set_partitions_owned(self, n: int) -> None:
        """Partitions this member holds now (after each assignment or revocation)."""
        with self._lock:
            self._partitions_owned = n

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
                profiles=self._profiles(),
                partitions_owned=self._partitions_owned,
            )

    def _profiles(self) -> ProfileCounts | None:
        if self._published is None and not self._evaluator:
            return None
        if not self._evaluator:
            return ProfileCounts(published=self._published)
        return ProfileCounts(
            published=self._published,
            merged=self._merged,
            duplicate=self._duplicate,
            late=self._late,
            pending=self._pending,
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
