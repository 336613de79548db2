"""An evaluator's view of one profiles partition: chunks applied once, windows merged, closed.

Each profiles partition is a *shard*: the pieces of the models it holds (``agent.partials``) and
a seal of every chunk of every input partition. A shard keeps, per input partition, the chain
of chunks applied so far (where the next must start, the watermark there, and the tail standing
in for the open chunk), and per window the merge of its pieces.

Applying. Pieces wait until the seal of their chunk and attempt arrives. A seal that starts
where its partition's chain ends is applied: a chunk's pieces are merged into their windows
(the tail they supersede is taken out), a tail's pieces stand in for the partition's open chunk
until the next tail or the chunk. A seal starting before the chain's end is a copy already
applied (a collector published again after a crash): dropped with its pieces. One starting past
it waits for the chunk in between (for ``gap_timeout_s`` at most, then the chain restarts there,
with a warning). A shard that starts (from its committed offset) takes each partition's first
seal as the chain's start: every window whose pieces came before that offset is persisted. That
first seal may be a late copy of a chunk applied before the offset, followed by a gap (the
chunks after it were applied before the offset too): until a chain has put a piece into a
window still open, a gap restarts it instead of waiting.

Closing, by the single process's watermark rules over the input partitions: the watermark is the
smallest of the partitions that are not caught up (the largest when all are), a partition's own
being the one its latest seal carries. A partition is caught up while its latest seal says so and
is at most ``caught_up_for_s`` old (collectors send an idle partition's tail again every 10 s): a
collector that died idle must not let windows close without what it would read next; a window
closes, *complete*, once it passes the window's end plus lateness, with the tails of caught-up
partitions in it. Pieces of a window already closed complete are late: counted, not added (a tail's
when its chunk comes, a final tail's, which no chunk follows, at once). A window some partition has
passed but that is not complete ``grace_s`` later is emitted *partial*, and again (at most once a
grace) while it grows, until it is complete.

Commits: below every record a window still open (or emitted partial) holds, every piece
waiting for its seal, and every seal waiting for a gap.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce

from sketches.profile import WindowProfile

from .partials import Piece, Seal
from .source import Partition
from .window_types import ClosedWindow, WindowKey

__all__ = ["Applied", "Shard"]

log = logging.getLogger("embmon")


@dataclass
class Applied:
    """What records did to a shard: counts for the exporters."""

    merged: int = 0
    duplicate: int = 0
    late: Counter[str] = field(default_factory=Counter)  # events, per model
    events: Counter[str] = field(default_factory=Counter)  # per model
    rejected: Counter[str] = field(default_factory=Counter)  # per reason

    def add(self, other: Applied) -> None:
        self.merged += other.merged
        self.duplicate += other.duplicate
        self.late.update(other.late)
        self.events.update(other.events)
        self.rejected.update(other.rejected)


@dataclass
class _Chain:
    next: int  # where the next chunk starts
    watermark: float | None
    caught_up: bool
    final: bool
    tail: Seal | None = None
    tail_rejected: Counter[str] = field(default_factory=Counter)
    rebase: bool = True  # no piece of an open window yet: its start may be a stale copy
    unseen: list[tuple[int, int]] = field(default_factory=list)  # offsets never applied here
    heard_at: float = float("-inf")  # when its latest seal was applied (the shard's timer)

    @property
    def covered(self) -> int:
        """The offset up to which the partition is accounted for (tail included)."""
        return self.tail.span.end if self.tail is not None else self.next


@dataclass
class _Window:
    first_offset: int
    merged: WindowProfile | None = None
    tails: dict[Partition, WindowProfile] = field(default_factory=dict)
    overdue_since: float | None = None
    emitted: int | None = None  # events of the last partial record
    emitted_at: float = float("-inf")

    def profile(self) -> WindowProfile:
        parts = [p for p in (self.merged, *self.tails.values()) if p is not None]
        return reduce(lambda a, b: a.merge(b), parts)

    @property
    def events(self) -> int:
        return (self.merged.count if self.merged else 0) + sum(p.count for p in self.tails.values())


class Shard:
    """One profiles partition's chains and windows (see the module docstring).

    ``read(bytes)`` turns a piece's profile bytes into a profile; ``persisted`` holds the
    windows already persisted complete (``agent.ledger``); ``counts_rejects(partition)``: this
    shard is the one that counts that input partition's rejects (each is counted by one shard);
    ``resumed``: the shard reads from a committed offset (else from the partition's start).
    """

    def __init__(
        self,
        *,
        topics: Sequence[str],
        window_seconds: int,
        lateness_s: float,
        read: Callable[[bytes], WindowProfile],
        persisted: set[WindowKey],
        counts_rejects: Callable[[Partition], bool],
        grace_s: float = 60.0,
        gap_timeout_s: float = 300.0,
        caught_up_for_s: float = 30.0,
        resumed: bool = False,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topics = tuple(topics)
        self._size = window_seconds
        self._lateness = lateness_s
        self._read = read
        self._final = persisted
        self._counts_rejects = counts_rejects
        self._grace = grace_s
        self._gap_timeout = gap_timeout_s
        self._stale = caught_up_for_s
        self._resumed = resumed  # read from a committed offset: pieces before it are done
        self._timer = timer
        self._partitions: dict[str, int] = {}
        self._chains: dict[Partition, _Chain] = {}
        self._pending: dict[tuple[Partition, int, int, str], list[tuple[int, Piece]]] = {}
        self._gaps: dict[Partition, dict[int, tuple[int, Seal, float]]] = defaultdict(dict)
        self._windows: dict[WindowKey, _Window] = {}
        self._included: dict[tuple[Partition, int], dict[WindowKey, int]] = {}
        self._closed_through = -math.inf  # every window ending at or before it is closed
        self.position: int | None = None

    @property
    def open_windows(self) -> int:
        return len(self._windows)

    @property
    def pending(self) -> int:
        """Pieces waiting for their seal."""
        return sum(len(pieces) for pieces in self._pending.values())

    def add(self, offset: int, record: Piece | Seal) -> Applied:
        """Take one record read at ``offset`` of this shard."""
        if isinstance(record, Piece):
            span = record.span
            key = (span.source, span.start, span.end, record.attempt)
            self._pending.setdefault(key, []).append((offset, record))
            return Applied()
        span = record.span
        self._partitions[span.topic] = max(self._partitions.get(span.topic, 0), record.partitions)
        chain = self._chains.get(span.source)
        if chain is not None and span.start < chain.next:
            if not record.tail and _take(chain.unseen, span.start, span.end):
                return self._apply_behind(record)
            return self._drop(record)
        if chain is not None and span.start > chain.next:
            if not chain.rebase:
                self._gaps[span.source][span.start] = (offset, record, self._timer())
                return Applied()
            # The chain began at a copy, and what lies between was applied before this shard
            # started; or a chunk in between is yet to come: see _apply_behind.
            chain.unseen.append((chain.next, span.start))
            chain.next = span.start
        applied = self._apply(record)
        self._fill_gaps(span.source, applied)
        return applied

    def _drop(self, seal: Seal) -> Applied:
        """A copy of a chunk already applied (or a tail overtaken): it and its pieces go."""
        return Applied(duplicate=len(self._pending.pop(_pending_key(seal), [])))

    def _apply_behind(self, seal: Seal) -> Applied:
        """A chunk behind the chain's end that this shard never applied (before the seal its
        chain started at, or in a gap it jumped): a chunk published again after a failure, or
        a copy of one applied before the shard started, whose windows are then all persisted
        (so its pieces only count late). Its pieces go into their windows; the chain stays."""
        applied = Applied()
        pieces = self._pending.pop(_pending_key(seal), [])
        fresh = [(o, p) for o, p in pieces if not self._closed(p.key)]
        applied.duplicate = len(pieces) - len(fresh)  # what persisted windows hold already
        for offset, piece in fresh:
            self._merge_piece(offset, piece, seal, applied, counted={}, included={})
        if fresh and self._counts_rejects(seal.span.source):
            applied.rejected.update(seal.rejected)
        return applied

    def _closed(self, key: WindowKey) -> bool:
        """Emitted complete, or passed by the watermark before it had a piece here."""
        return key in self._final or (
            key not in self._windows and key.start + self._size <= self._closed_through
        )

    def _apply(self, seal: Seal) -> Applied:
        span = seal.span
        source = span.source
        pieces = self._pending.pop(_pending_key(seal), [])
        chain = self._chains.get(source)
        if (chain is not None or not self._resumed) and len(pieces) < seal.pieces:
            # Some of its pieces were not delivered: the collector publishes it again whole.
            log.warning(
                "chunk %s/%s [%d, %d) has %d piece(s) on this shard, its seal counts %d: "
                "waiting for it to be published again",
                *source,
                span.start,
                span.end,
                len(pieces),
                seal.pieces,
            )
            return Applied(duplicate=len(pieces))
        if chain is None:
            chain = self._chains[source] = _Chain(span.start, None, False, False)
            chain.unseen.append((0, span.start))
        applied = Applied()
        counted = self._untail(source)
        included = self._included.pop((source, span.start), {}) if seal.settles else {}
        for offset, piece in pieces:
            if self._merge_piece(offset, piece, seal, applied, counted, included):
                chain.rebase = False
        if self._counts_rejects(source):
            rejected = Counter(seal.rejected)
            rejected.subtract(chain.tail_rejected)
            applied.rejected.update(+rejected)
            chain.tail_rejected = Counter(seal.rejected) if seal.tail else Counter()
        chain.watermark, chain.caught_up, chain.final = seal.watermark, seal.caught_up, seal.final
        chain.heard_at = self._timer()
        if seal.tail:
            chain.tail = seal
        else:
            chain.next, chain.tail = span.end, None
        for orphan in [k for k in self._pending if k[0] == source and k[1] < chain.next]:
            applied.duplicate += len(self._pending.pop(orphan))  # of an attempt that died
        return applied

    def _merge_piece(
        self,
        offset: int,
        piece: Piece,
        seal: Seal,
        applied: Applied,
        counted: Mapping[WindowKey, int],
        included: Mapping[WindowKey, int],
    ) -> bool:
        """Put ``piece`` into its window; False if the window is closed (its events are late:
        the window was emitted complete, or the watermark passed it before it had a piece)."""
        key = piece.key
        if self._closed(key):
            # Closed already: a provisional tail's events wait for their chunk to be counted.
            if seal.settles:
                applied.late[key.model] += max(piece.events - included.get(key, 0), 0)
            return False
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(offset)
        window.first_offset = min(window.first_offset, offset)
        profile = self._read(piece.profile)
        if seal.tail:
            window.tails[seal.span.source] = profile
        else:
            window.merged = profile if window.merged is None else window.merged.merge(profile)
        applied.merged += 1
        applied.events[key.model] += piece.events - counted.get(key, 0)
        return True

    def _untail(self, source: Partition) -> dict[WindowKey, int]:
        """Take ``source``'s tail out of the windows (a new tail or its chunk replaces it);
        returns the events each window had from it."""
        counted = {}
        for key, window in self._windows.items():
            tail = window.tails.pop(source, None)
            if tail is not None:
                counted[key] = tail.count
        return counted

    def _fill_gaps(self, source: Partition, applied: Applied) -> None:
        """Apply the seals that waited for the chain of ``source`` to reach them."""
        waiting = self._gaps.get(source)
        chain = self._chains.get(source)
        if chain is None:  # its first seal waits to be published again whole
            return
        while waiting and chain.next in waiting:
            _, seal, _ = waiting.pop(chain.next)
            applied.add(self._apply(seal))
        if waiting is not None:
            for start in [s for s in waiting if s < chain.next]:
                _, seal, _ = waiting.pop(start)
                applied.add(self._drop(seal))

    def watermark(self) -> float | None:
        """The input partitions' watermark by the single process's rules (None: not known)."""
        lagging: list[float | None] = []
        caught_up: list[float] = []
        now = self._timer()
        for topic in self._topics:
            if topic not in self._partitions:
                return None
            for index in range(self._partitions[topic]):
                chain = self._chains.get((topic, index))
                if chain is None:
                    return None
                if not (chain.final or (chain.caught_up and now - chain.heard_at <= self._stale)):
                    lagging.append(chain.watermark)
                elif chain.watermark is not None:
                    caught_up.append(chain.watermark)
        if lagging:
            return None if None in lagging else min(m for m in lagging if m is not None)
        return max(caught_up, default=None)

    def due(
        self, *, everything: bool = False
    ) -> tuple[list[ClosedWindow[WindowProfile]], list[ClosedWindow[WindowProfile]], Applied]:
        """Windows to emit now: (complete, partial), oldest first; complete ones leave the
        shard. ``everything``: all windows, complete (the end of a bounded run)."""
        applied = Applied()
        now = self._timer()
        self._restart_stuck_chains(now, applied)
        mark = self.watermark()
        through = -math.inf if mark is None else mark - self._lateness
        self._closed_through = max(self._closed_through, through)
        ahead = max(
            (c.watermark for c in self._chains.values() if c.watermark is not None), default=None
        )
        complete, partial = [], []
        for key in sorted(self._windows, key=_order):
            window = self._windows[key]
            end = key.start + self._size
            if everything or end <= through:
                complete.append(self._emit(key, window))
                continue
            if ahead is None or end + self._lateness > ahead:
                continue
            if window.overdue_since is None:
                window.overdue_since = now
            if now - window.overdue_since < self._grace:
                continue
            if window.emitted == window.events or now - window.emitted_at < self._grace:
                continue
            window.emitted, window.emitted_at = window.events, now
            partial.append(ClosedWindow(key, end, window.profile()))
        return complete, partial, applied

    def _emit(self, key: WindowKey, window: _Window) -> ClosedWindow[WindowProfile]:
        """Close ``key`` complete: it leaves the shard, and the tails in it are remembered (their
        chunks' further events for it are late)."""
        del self._windows[key]
        self._final.add(key)
        for source, tail in window.tails.items():
            chain = self._chains[source]
            self._included.setdefault((source, chain.next), {})[key] = tail.count
        return ClosedWindow(key, key.start + self._size, window.profile())

    def _restart_stuck_chains(self, now: float, applied: Applied) -> None:
        """A seal that waited ``gap_timeout_s`` for the chunk before it starts the chain anew."""
        for source, waiting in self._gaps.items():
            stuck = [s for s, (_, _, since) in waiting.items() if now - since >= self._gap_timeout]
            if not stuck:
                continue
            start = min(waiting)
            log.warning(
                "input partition %s/%s: no chunk from %d to %d arrived in %.0f s; going on "
                "from %d (the events in between are missing from their windows)",
                *source,
                self._chains[source].next,
                start,
                self._gap_timeout,
                start,
            )
            self._chains[source].next = start
            self._fill_gaps(source, applied)

    def covered(self, ends: Mapping[Partition, int]) -> bool:
        """Every partition in ``ends`` is accounted for up to its end (or was read to the end
        of a bounded collector's run)."""
        for source, end in ends.items():
            chain = self._chains.get(source)
            if chain is None or not (chain.final or chain.covered >= end):
                return False
        return not any(self._gaps.values())

    def commit_offset(self) -> int | None:
        """Below every record still needed (see the module docstring); None before any read."""
        if self.position is None:
            return None
        needed = [w.first_offset for w in self._windows.values()]
        needed += [offset for pieces in self._pending.values() for offset, _ in pieces]
        needed += [offset for waiting in self._gaps.values() for offset, _, _ in waiting.values()]
        return min([self.position, *needed])


def _take(intervals: list[tuple[int, int]], start: int, end: int) -> bool:
    """Remove ``[start, end)`` from the interval of ``intervals`` holding it; False if none."""
    for index, (lo, hi) in enumerate(intervals):
        if lo <= start and end <= hi:
            intervals[index : index + 1] = [(a, b) for a, b in ((lo, start), (end, hi)) if a < b]
            return True
    return False


def _pending_key(seal: Seal) -> tuple[Partition, int, int, str]:
    span = seal.span
    return span.source, span.start, span.end, seal.attempt


def _order(key: WindowKey) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    return key.start, key.model, key.segment.pairs
