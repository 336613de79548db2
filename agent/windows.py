"""Tumbling windows over Kafka partitions with exactly-once accounting.

State is one profile per (partition, model, segment, window start): sketches cannot subtract,
so keeping partitions apart is what lets a revoked partition be dropped cleanly. A window's
final profile is the merge of its per-partition profiles. Windows are aligned on the Unix epoch
(``7d`` windows start on Thursdays).

Watermarks. A partition's watermark is the largest event time it has shown. The global
watermark is the smallest watermark of the assigned partitions that are not caught up (a
partition at its high watermark does not hold time back); when all are caught up it is the
largest. Window ``[s, e)`` closes once the global watermark reaches ``e + lateness``; windows
close in time order, so ``closed_through`` (the newest closed end) says that every window
ending at or before it is closed. An event is *late* (counted, never added) when its window
``[s, e)`` has ``e + lateness`` at or below its own partition's watermark before it, or when
its window is already closed. The first rule depends only on the partition's record order, and
it covers the second (the global watermark never passes a partition's own, except a caught-up
one's), so the same records give the same windows however they are chunked into polls and
whenever windows are closed between them. A partition whose watermark runs more than ``max_windows_ahead`` windows past the
global one is to be paused, which bounds the number of open windows.

Commits. A partition's committable offset is the smallest offset of its events held in open
windows, or its position when it holds none; it is committed with ``closed_through``
(``agent.checkpoint``). The caller persists every window ``close_ready()`` returns *before*
committing ``commit_offsets()``.

Why one replica killed with SIGKILL at any instant neither loses nor double-counts an event
(event time). Take the last successful commit ``(o, T)`` of a partition. Every event of it at
an offset below ``o`` was, when committed, in no open window, so it was in a window already
closed, hence persisted (persist before commit), or it was late. On restart the consumer
resumes at ``o`` and every event from ``o`` on is re-read and meets exactly one rule:

* its window ends at or before ``T``: that window was closed before the commit, so the event
  is in a persisted window or was late; skipped.
* its window key is in the ledger (``persisted``: ``agent.ledger``'s keys, plus every window
  this process closes): that window was persisted, perhaps after the last commit and
  just before the kill; skipped.
* otherwise its window was never persisted, so the event is in no output yet; added. The kill
  lost only open state, and every event of it sits at an offset at or above ``o`` (it was in
  an open window at the commit, or was read after it), so all of it is rebuilt.

Skipped re-reads are counted apart from late events. Without ``T`` (a broker that drops commit
metadata, or no commit yet) the ledger alone gives the same guarantee; ``T`` keeps it when the
ledger is lost. Two corner cases stay counted once in the output but are counted differently:
an event never read before the kill whose window had already closed is "skipped" instead of
"late", and an event that was late before the kill, in a window that no event of its (model,
segment) ever reached, may be added to a fresh window after it. The exporter must write a window
atomically (a torn last line is not a persisted window).

Rebalances. A revoked partition's open state is kept aside for ``revoked_hold_s`` (a
*ghost*): it holds the watermark back at its oldest open window, and no window it has a part in
closes meanwhile (nor any later one, so windows still close in time order). If the partition
comes back within the hold from a committed offset no further than this store's own (an eager
rebalance, a member that joined for a moment), its state is restored as it was: records it
re-reads below the offset it had counted through were all accounted for, in a restored or a
persisted window, or as late, skipped or refused, so they are counted as read again and not
routed, and every decision is what it would have been without the revocation. Otherwise
(the hold ran out, or someone else committed further) the state is dropped and the next owner
re-reads it from the committed offset, so no window persisted here holds events of a partition
after it moved on. A partition that comes back after that starts afresh: a re-read event whose
window is closed here is a skipped re-read if it was handled here (below the partition's
committable offset when its state was dropped), and late otherwise.

Processing time (``time_mode="processing"``) windows events by the injected clock at arrival.
There are no late events, but a re-read event lands in the current window whatever window it
was in before, so events read between persisting a window and the commit that follows are
counted again after a kill there: commit right after persisting.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import MappingProxyType
from typing import Generic, Literal

import numpy as np
import numpy.typing as npt

from agent.checkpoint import Checkpoint
from agent.window_caps import Caps, OpenKeys
from agent.window_types import AddResult, B, Batch, ClosedWindow, P, Profile, WindowKey
from exporters.records import SegmentKey

__all__ = [
    "AddResult",
    "Batch",
    "ClosedWindow",
    "Partition",
    "Profile",
    "WindowKey",
    "WindowStore",
]

Partition = tuple[str, int]
"""(topic, partition); ``kafka.TopicPartition`` is one."""


@dataclass
class _Slot(Generic[P]):
    profile: P
    min_offset: int


@dataclass
class _PartitionState(Generic[P]):
    skip_through: int | None
    watermark: float | None = None
    position: int | None = None
    caught_up: bool = False
    slots: dict[WindowKey, _Slot[P]] = field(default_factory=dict)
    counted_before: int = 0  # restored from a ghost: records below were accounted for


@dataclass
class _Ghost(Generic[P]):
    """A revoked partition's state, kept until ``until`` in case the partition comes back."""

    state: _PartitionState[P]
    offset: int  # the checkpoint offset this store would have committed for it
    mark: float | None  # the watermark it holds meanwhile (None: it holds none)
    until: float


class WindowStore(Generic[P, B]):
    """Open windows of the assigned partitions, their closing, and their checkpoints.

    ``factory(key)`` makes the empty profile of a window; ``persisted`` is the ledger of
    windows persisted by earlier runs (``agent.ledger``). Call, per poll: ``revoke``/``assign`` for assignment
    changes, ``add`` for decoded rows, ``advance`` for each partition's position, then
    ``close_ready`` (persist what it returns), ``commit_offsets`` (commit them) and
    ``paused_partitions`` (pause exactly those).
    """

    def __init__(
        self,
        *,
        window: timedelta,
        factory: Callable[[WindowKey], P],
        lateness: timedelta = timedelta(0),
        persisted: Iterable[WindowKey] = (),
        time_mode: Literal["event", "processing"] = "event",
        clock: Callable[[], float] = time.time,
        max_windows_ahead: int = 3,
        caps: Caps | None = None,
        revoked_hold_s: float = 30.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        size = window.total_seconds()
        if size < 1 or size != int(size):
            raise ValueError(f"window must be a whole number of seconds >= 1s, got {window}")
        if lateness < timedelta(0):
            raise ValueError(f"lateness must not be negative, got {lateness}")
        if max_windows_ahead < 1:
            raise ValueError(f"max_windows_ahead must be >= 1, got {max_windows_ahead}")
        if time_mode not in ("event", "processing"):
            raise ValueError(f"time_mode must be 'event' or 'processing', got {time_mode!r}")
        self._size = int(size)
        self._lateness = lateness.total_seconds()
        self._factory = factory
        self._ledger: set[WindowKey] = set(persisted)
        self._processing = time_mode == "processing"
        self._clock = clock
        self._max_ahead = max_windows_ahead
        self._partitions: dict[Partition, _PartitionState[P]] = {}
        self._read_through: dict[Partition, int] = {}
        self._counted_through: dict[Partition, int] = {}
        self._closed_through: int | None = None
        self._paused: frozenset[Partition] = frozenset()
        self._backlog = False  # the last close left due windows open (its limit)
        self._keys = OpenKeys(caps or Caps())
        self._held: dict[WindowKey, ClosedWindow[P]] = {}
        self._ghosts: dict[Partition, _Ghost[P]] = {}
        self._hold_s = revoked_hold_s
        self._timer = timer

    @property
    def closed_through(self) -> int | None:
        """End (epoch seconds) of the newest closed window; every earlier one is closed."""
        return self._closed_through

    @property
    def partitions(self) -> frozenset[Partition]:
        return frozenset(self._partitions)

    @property
    def open_windows(self) -> int:
        """Open (model, segment, window) triples, over all partitions."""
        return len(self._keys)

    def assign(self, partition: Partition, checkpoint: Checkpoint | None) -> None:
        """Take ``partition`` on, resuming from its committed ``checkpoint`` (None: none).

        A partition revoked within ``revoked_hold_s`` gets its state back, unless the
        checkpoint is past the offset this store would have committed (someone else moved on).
        """
        if partition in self._partitions:
            raise ValueError(f"partition {partition} is already assigned; revoke it first")
        ghost = self._ghosts.pop(partition, None)
        if ghost is not None and (checkpoint is None or checkpoint.offset <= ghost.offset):
            state = ghost.state
            state.counted_before = self._counted_through.get(partition, 0)
            state.position, state.caught_up = None, False
            self._partitions[partition] = state
            self._backlog = True  # its due windows, held back meanwhile, may close now
            return
        if ghost is not None:
            self._drop(partition, ghost.state)
        self._partitions[partition] = _PartitionState(
            skip_through=None if checkpoint is None else checkpoint.closed_through
        )

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """Set the open state of ``partitions`` aside for ``revoked_hold_s``, then drop it.

        Meanwhile the partition holds the watermark back, at the oldest window it had open,
        and no window it has a part in closes: a partition that comes back soon (a member that
        joined for a moment, an eager rebalance) finds its state as it left it. Once dropped,
        the next owner re-reads it from the committed offset.
        """
        for partition in partitions:
            state = self._partitions.pop(partition, None)
            if state is None:
                continue
            if self._hold_s <= 0 or not (state.slots or state.watermark is not None):
                self._drop(partition, state)
                continue
            self._ghosts[partition] = _Ghost(
                state,
                offset=self._checkpoint_offset(partition, state),
                mark=self._ghost_mark(state),
                until=self._timer() + self._hold_s,
            )

    def _drop(self, partition: Partition, state: _PartitionState[P]) -> None:
        """Forget a revoked partition's open windows; their events are re-read by its owner."""
        # Events from the oldest dropped one on were not handled here after all.
        dropped = [slot.min_offset for slot in state.slots.values()]
        self._read_through[partition] = min([self._read_through.get(partition, 0), *dropped])
        for key in state.slots:
            self._keys.closed(key)
        self._backlog = True  # windows it held back may close now

    def _expire_ghosts(self, *, everything: bool = False) -> None:
        now = self._timer()
        for partition, ghost in list(self._ghosts.items()):
            if everything or ghost.until <= now:
                del self._ghosts[partition]
                self._drop(partition, ghost.state)

    def _ghost_mark(self, state: _PartitionState[P]) -> float | None:
        """The watermark a revoked partition keeps holding: none once caught up, else at most
        the oldest open window's start plus lateness (so that window does not close)."""
        if self._processing or state.caught_up or state.watermark is None:
            return None
        starts = [key.start for key in state.slots]
        return min([state.watermark, *(s + self._lateness for s in starts)])

    def add(
        self,
        partition: Partition,
        model: str,
        segment: SegmentKey,
        batch: B,
        offsets: npt.ArrayLike,
    ) -> AddResult:
        """Route the rows of ``batch`` (read from ``partition`` at ``offsets``) to windows."""
        return self.add_groups(partition, [(model, segment, batch, offsets)])[0]

    def add_groups(
        self, partition: Partition, groups: Sequence[tuple[str, SegmentKey, B, npt.ArrayLike]]
    ) -> list[AddResult]:
        """Route one poll's rows of ``partition``, grouped by (model, segment), to windows.

        Lateness is decided over all groups together, in offset order: the partition's own
        watermark before a row is the largest event time at a smaller offset.
        """
        state = self._state(partition)
        offsets = [np.asarray(offs, dtype=np.int64) for *_, offs in groups]
        for (*_, batch, _), offs in zip(groups, offsets, strict=True):
            if offs.shape != (len(batch),):
                n = offs.shape[0] if offs.ndim else 0
                raise ValueError(f"got {n} offsets for {len(batch)} rows")
        if state.counted_before and any((offs < state.counted_before).any() for offs in offsets):
            return self._add_past_restored(partition, state, groups, offsets)
        times = [self._times(batch) for _, _, batch, _ in groups]
        before = self._watermarks_before(state, offsets, times)
        read_before = self._read_through.get(partition, 0)
        counted = self._counted_through.get(partition, 0)
        results = [
            self._route(state, model, segment, batch, offs, when, mark, read_before, counted)
            for (model, segment, batch, _), offs, when, mark in zip(
                groups, offsets, times, before, strict=True
            )
        ]
        tops = [int(offs.max()) + 1 for offs in offsets if offs.size]
        self._read_through[partition] = max([read_before, *tops])
        self._counted_through[partition] = max([counted, *tops])
        return results

    def _add_past_restored(
        self,
        partition: Partition,
        state: _PartitionState[P],
        groups: Sequence[tuple[str, SegmentKey, B, npt.ArrayLike]],
        offsets: list[npt.NDArray[np.int64]],
    ) -> list[AddResult]:
        """Rows re-read below ``counted_before`` are counted as read again, not routed: the
        restored state already accounts for them. The rest are added as usual."""
        kept: list[tuple[str, SegmentKey, B, npt.ArrayLike]] = []
        again: list[int] = []
        for (model, segment, batch, _), offs in zip(groups, offsets, strict=True):
            fresh = np.flatnonzero(offs >= state.counted_before)
            again.append(len(batch) - fresh.size)
            kept.append((model, segment, batch.take(fresh), offs[fresh]))
        results = self.add_groups(partition, kept)
        return [replace(r, again=r.again + n) for r, n in zip(results, again, strict=True)]

    def _times(self, batch: B) -> npt.NDArray[np.float64]:
        if self._processing:
            return np.full(len(batch), self._clock(), dtype=np.float64)
        times = np.asarray(batch.timestamps, dtype=np.float64)
        if not np.isfinite(times).all():
            raise ValueError("event timestamps must be finite; reject such events first")
        return times

    def _watermarks_before(
        self,
        state: _PartitionState[P],
        offsets: list[npt.NDArray[np.int64]],
        times: list[npt.NDArray[np.float64]],
    ) -> list[npt.NDArray[np.float64]]:
        """Per row, the partition's watermark before it in record order (-inf: none yet)."""
        if self._processing or not offsets:
            return [np.full(t.shape, -np.inf) for t in times]
        flat_offsets, flat_times = np.concatenate(offsets), np.concatenate(times)
        if flat_times.size == 0:
            return [np.full(t.shape, -np.inf) for t in times]
        order = np.argsort(flat_offsets, kind="stable")
        ordered = np.empty(flat_times.size, dtype=np.float64)
        ordered[0] = -np.inf if state.watermark is None else state.watermark
        ordered[1:] = flat_times[order][:-1]
        np.maximum.accumulate(ordered, out=ordered)
        flat = np.empty_like(ordered)
        flat[order] = ordered
        top = float(flat_times.max())
        state.watermark = top if state.watermark is None else max(state.watermark, top)
        return np.split(flat, np.cumsum([t.size for t in times])[:-1])

    def _route(
        self,
        state: _PartitionState[P],
        model: str,
        segment: SegmentKey,
        batch: B,
        offs: npt.NDArray[np.int64],
        times: npt.NDArray[np.float64],
        before: npt.NDArray[np.float64],
        read_before: int,
        counted: int,
    ) -> AddResult:
        n = len(batch)
        if n == 0:
            return AddResult()
        model, segment, folded = self._keys.admit(model, segment)
        starts = np.floor(times / self._size).astype(np.int64) * self._size
        ends = starts + self._size
        late = ends + self._lateness <= before
        skipped = np.zeros(n, dtype=bool)
        if state.skip_through is not None:
            skipped |= ends <= state.skip_through
        if self._closed_through is not None:
            closed = ends <= self._closed_through
            skipped |= closed & (offs < read_before)
            late |= closed
        late &= ~skipped
        keep = ~(skipped | late)
        refused = np.zeros(n, dtype=bool)
        for start in np.unique(starts[keep]).tolist():
            key = WindowKey(model, segment, int(start))
            rows = np.flatnonzero(keep & (starts == start))
            if key in self._ledger:
                skipped[rows] = True
                continue
            slot = state.slots.get(key)
            low = int(offs[rows].min())
            if slot is None:
                if key not in self._keys and not self._keys.has_room():
                    refused[rows] = True
                    continue
                slot = state.slots[key] = _Slot(self._factory(key), low)
                self._keys.opened(key)
            else:
                slot.min_offset = min(slot.min_offset, low)
            slot.profile.update(batch if rows.size == n else batch.take(rows))
        fresh = offs >= counted
        added = keep & ~skipped & ~refused & fresh
        return AddResult(
            added=int(added.sum()),
            late=int((late & fresh).sum()),
            skipped=int((skipped & fresh).sum()),
            refused=int((refused & fresh).sum()),
            folded=int(added.sum()) if folded else 0,
            again=int((~fresh).sum()),
        )

    def advance(self, partition: Partition, position: int, *, caught_up: bool) -> None:
        """Record the consumer's position after this poll's records were added.

        ``caught_up``: the partition has no backlog (position at its high watermark, or at its
        stop offset under ``--until-end``), so it no longer holds the global watermark back.
        """
        state = self._state(partition)
        state.position = position
        state.caught_up = caught_up
        self._read_through[partition] = max(self._read_through.get(partition, 0), position)

    def watermark(self) -> float | None:
        """The global watermark (epoch seconds); None until every lagging partition has data.

        Partitions revoked within ``revoked_hold_s`` count as lagging, at their held mark.
        """
        if self._processing:
            return self._clock()
        self._expire_ghosts()
        lagging = [s.watermark for s in self._partitions.values() if not s.caught_up]
        lagging += [g.mark for g in self._ghosts.values() if g.mark is not None]
        if lagging:
            return None if None in lagging else min(w for w in lagging if w is not None)
        marks = [s.watermark for s in self._partitions.values() if s.watermark is not None]
        return max(marks) if marks else None

    def close_ready(self, limit: int | None = None) -> list[ClosedWindow[P]]:
        """Close, in time order, windows the global watermark has passed by ``lateness``.

        At most ``limit`` windows (oldest first) are closed per call, so a caller can keep
        polling between chunks; the rest stay open, hold their offsets, and come out of the
        next calls.
        """
        mark = self.watermark()
        advanced = False
        if mark is not None:
            through = math.floor((mark - self._lateness) / self._size) * self._size
            if self._closed_through is None or through > self._closed_through:
                self._closed_through, advanced = through, True
        # Windows become due only when closed_through advances (events for earlier ones are
        # late), so without an advance or a backlog there is nothing to look for.
        if self._closed_through is None or not (advanced or self._backlog):
            return []
        through = self._closed_through
        return self._close(lambda key: key.start + self._size <= through, limit)

    def close_all(self, limit: int | None = None) -> list[ClosedWindow[P]]:
        """Close every open window (end of ``--until-end`` or of a replay), in time order.

        Revoked partitions are not waited for: their state is dropped."""
        self._expire_ghosts(everything=True)
        closed = self._close(lambda key: True, limit)
        if closed:
            newest = max(window.end for window in closed)
            if self._closed_through is None or newest > self._closed_through:
                self._closed_through = newest
        return closed

    def hold(self, windows: Iterable[ClosedWindow[P]]) -> None:
        """Keep closed windows that could not be persisted: their offsets are not committed
        past, and ``take_held`` hands them out again for another try."""
        for window in windows:
            self._held[window.key] = window

    def take_held(self) -> list[ClosedWindow[P]]:
        """The windows given to ``hold``, oldest first; the caller persists or holds them."""
        held = sorted(
            self._held.values(), key=lambda w: (w.key.start, w.key.model, w.key.segment.pairs)
        )
        self._held = {}
        return held

    @property
    def held(self) -> int:
        """Closed windows waiting to be persisted again."""
        return len(self._held)

    def commit_offsets(self) -> dict[Partition, Checkpoint]:
        """Per partition with a known position, the checkpoint it is safe to commit now.

        The offset is below every event of an open or held window; the checkpoint's
        ``closed_through`` stops short of the oldest window that is due or held but not yet
        persisted (it says every window ending at or before it is persisted).
        """
        persisted = self._closed_through
        if persisted is not None:
            waiting = [w.key.start for w in self._held.values()]
            waiting += [
                key.start
                for state in self._all_states()
                for key in state.slots
                if key.start + self._size <= persisted
            ]
            persisted = min([persisted, *waiting])
        checkpoints: dict[Partition, Checkpoint] = {}
        for partition, state in self._partitions.items():
            if state.position is None:
                continue
            offset = self._checkpoint_offset(partition, state)
            known = [t for t in (persisted, state.skip_through) if t is not None]
            checkpoints[partition] = Checkpoint(offset, max(known) if known else None)
        return checkpoints

    def _checkpoint_offset(self, partition: Partition, state: _PartitionState[P]) -> int:
        """Below every event of ``partition`` in an open or held window, else its position."""
        lows = [s.min_offset for s in state.slots.values()]
        lows += [
            w.min_offsets[partition] for w in self._held.values() if partition in w.min_offsets
        ]
        if state.position is not None:
            lows.append(state.position)
        return min(lows, default=0)

    def _all_states(self) -> list[_PartitionState[P]]:
        """Assigned partitions' states and revoked ones' set aside."""
        return [*self._partitions.values(), *(g.state for g in self._ghosts.values())]

    def paused_partitions(self) -> frozenset[Partition]:
        """Partitions more than ``max_windows_ahead`` windows ahead of the global watermark.

        While the global watermark is unknown (a lagging partition has shown no event time
        yet) the previous answer stands, but for partitions that have shown no event time
        themselves: such a one (say, assigned again after a rebalance) must read to show it,
        or the watermark stays unknown for ever.
        """
        if self._processing:
            return frozenset()
        mark = self.watermark()
        if mark is not None:
            limit = mark + self._max_ahead * self._size
            self._paused = frozenset(
                partition
                for partition, state in self._partitions.items()
                if state.watermark is not None and state.watermark > limit
            )
        return frozenset(
            p
            for p in self._paused & self._partitions.keys()
            if self._partitions[p].watermark is not None
        )

    def _state(self, partition: Partition) -> _PartitionState[P]:
        try:
            return self._partitions[partition]
        except KeyError:
            raise ValueError(f"partition {partition} is not assigned; assign() it first") from None

    def _close(
        self, ready: Callable[[WindowKey], bool], limit: int | None
    ) -> list[ClosedWindow[P]]:
        due = sorted(
            {key for state in self._partitions.values() for key in state.slots if ready(key)},
            key=lambda k: (k.start, k.model, k.segment.pairs),
        )
        # A revoked partition's windows wait for it to come back or be dropped, and so do all
        # later ones: windows close in time order.
        waiting = [key.start for g in self._ghosts.values() for key in g.state.slots]
        if waiting:
            due = [key for key in due if key.start < min(waiting)]
        self._backlog = limit is not None and len(due) > limit
        due = due[:limit]
        closed = []
        for key in due:
            profiles, lows = [], {}
            for partition in sorted(self._partitions):
                slot = self._partitions[partition].slots.pop(key, None)
                if slot is not None:
                    profiles.append(slot.profile)
                    lows[partition] = slot.min_offset
                    self._keys.closed(key)
            merged = functools.reduce(_merge, profiles)
            closed.append(ClosedWindow(key, key.start + self._size, merged, MappingProxyType(lows)))
        self._ledger.update(due)
        return closed


def _merge(left: P, right: P) -> P:
    return left.merge(right)
