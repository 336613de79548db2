"""A collector's windows: each input partition cut into chunks that anyone would cut the same.

``--role collector`` does not close windows: it cannot, it sees only some partitions. It keeps,
per assigned partition, the *open chunk*: the profiles of every window that the partition's
events since the chunk's start fall in. The chunk ends right after the record that moves the
partition's watermark (its largest event time so far) past a window's end plus ``lateness``;
that is when a window stops taking events of this partition, so the chunk is sealed and
published (``agent.collector``), and the next one starts. An event is late, counted and not
added, when its window ``[s, e)`` has ``e + lateness`` at or below the partition's watermark
before it: the single process's rule, which depends only on the partition's own record order.

Why this is exact across crashes and partition moves, whatever the lateness. Everything a
chunk holds is a function of the partition's records from the chunk's start and of the
watermark there. The committed offset is always a chunk's start, and the watermark there is
the event time of the record just before it (that record moved the watermark and ended the
previous chunk), so a new owner seeks one record back, reads the watermark off it (a
*context* record, neither counted nor routed) and carries on: it cuts the same chunks, with
the same events, as the old owner did or would have. A chunk published twice (published, then
a crash or a refused commit before its offset was committed) covers the same offsets twice,
and the evaluator keeps one copy. No state lives anywhere but in the records, the committed
offsets and the profiles topic.

Without a committed offset a partition starts from its first record, with no watermark (no
cut and no late event until its first event). A committed offset that is not a chunk start
(a group used by ``--role all`` before) gives a watermark that may be too low: some events
just after it that were late are then added. Processing time cannot be replayed: the scaled
layout needs event time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic

import numpy as np
import numpy.typing as npt

from exporters.records import SegmentKey

from .checkpoint import Checkpoint
from .source import Partition
from .window_types import B, P, WindowKey

__all__ = ["Chunk", "ChunkStore"]


@dataclass
class Chunk(Generic[P]):
    """Offsets ``[start, end)`` of one partition and the window profiles of their events.

    ``watermark`` is the partition's at ``end``; ``rejected`` counts the records of the chunk
    in no profile, by reason (``late`` included). A ``tail`` is an open chunk as it stands.
    """

    partition: Partition
    start: int
    end: int
    watermark: float | None
    pieces: dict[WindowKey, P]
    rejected: Counter[str]
    tail: bool = False
    caught_up: bool = False


@dataclass
class _Open(Generic[P]):
    start: int | None
    context_below: int  # records below this offset only tell the watermark
    watermark: float | None = None
    position: int | None = None
    caught_up: bool = False
    pieces: dict[WindowKey, P] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    sealed: list[Chunk[P]] = field(default_factory=list)  # cut, not yet published


class ChunkStore(Generic[P]):
    """Open chunks of the assigned partitions, the chunks they were cut into, and commits.

    Per poll: ``revoke``/``assign``, ``add`` for each partition's decoded rows (and the offsets
    of its rejects), ``advance`` with the position; then publish ``sealed()`` (and ``tail``)
    and call ``published`` for each chunk acknowledged; commit ``commit_offsets()``.

    >>> from datetime import timedelta
    >>> from sketches.batch import EventBatch
    >>> store = ChunkStore(window=timedelta(seconds=60), factory=lambda key: _Count())
    >>> store.assign(("t", 0), None)
    >>> def rows(*times):
    ...     return [("m", SegmentKey.of({}), _Times(times), list(range(len(times))))]
    >>> counts = store.add(("t", 0), rows(10.0, 20.0, 65.0, 30.0), rejects=[])
    >>> counts.added["m"], counts.late["m"]
    (3, 1)
    >>> [(c.start, c.end, c.watermark) for c in store.sealed()]
    [(0, 3, 65.0)]
    """

    def __init__(
        self,
        *,
        window: timedelta,
        factory: Callable[[WindowKey], P],
        lateness: timedelta = timedelta(0),
    ) -> None:
        size = window.total_seconds()
        if size < 1 or size != int(size):
            raise ValueError(f"window must be a whole number of seconds >= 1s, got {window}")
        self._size = int(size)
        self._lateness = lateness.total_seconds()
        if self._lateness < 0:
            raise ValueError(f"lateness must not be negative, got {lateness}")
        self._factory = factory
        self._open: dict[Partition, _Open[P]] = {}

    @property
    def partitions(self) -> frozenset[Partition]:
        return frozenset(self._open)

    @property
    def open_windows(self) -> int:
        """Window profiles held, open or sealed and waiting to be published."""
        return sum(
            len(s.pieces) + sum(len(c.pieces) for c in s.sealed) for s in self._open.values()
        )

    def assign(self, partition: Partition, checkpoint: Checkpoint | None) -> None:
        """Take ``partition`` on from its committed ``checkpoint`` (None: from its first record).

        The source must hand out the record just before the checkpoint first (the context).
        """
        if partition in self._open:
            raise ValueError(f"partition {partition} is already assigned; revoke it first")
        start = None if checkpoint is None else checkpoint.offset
        self._open[partition] = _Open[P](start, context_below=start or 0)

    def revoke(self, partitions: Iterable[Partition]) -> None:
        """Forget ``partitions``: their next owner cuts the same chunks from the commit."""
        for partition in partitions:
            self._open.pop(partition, None)

    def context_below(self, partition: Partition) -> int:
        """Records of ``partition`` below this offset are context: see :meth:`add_context`."""
        return self._state(partition).context_below

    def add_context(self, partition: Partition, times: npt.ArrayLike) -> None:
        """The event times of context records: they set the watermark, nothing else."""
        state = self._state(partition)
        values = np.asarray(times, dtype=np.float64)
        if values.size:
            top = float(values.max())
            state.watermark = top if state.watermark is None else max(state.watermark, top)

    def add(
        self,
        partition: Partition,
        groups: Sequence[tuple[str, SegmentKey, B, npt.ArrayLike]],
        *,
        rejects: Sequence[tuple[int, str]],
    ) -> AddCounts:
        """Route one poll's rows of ``partition`` (grouped by model and segment, with their
        offsets) and its rejects (offset, reason) into chunks, cutting where the watermark
        crosses a window's end plus lateness."""
        state = self._state(partition)
        offsets = [np.asarray(offs, dtype=np.int64) for *_, offs in groups]
        times = [np.asarray(batch.timestamps, dtype=np.float64) for _, _, batch, _ in groups]
        flat_offsets = np.concatenate([*offsets, np.empty(0, np.int64)])
        lows = [int(o.min()) for o in offsets if o.size] + [offset for offset, _ in rejects]
        if state.start is None and lows:
            state.start = min(lows)
        order = np.argsort(flat_offsets, kind="stable")
        flat_times = np.concatenate([*times, np.empty(0)])[order]
        marks = np.empty(flat_times.size + 1)
        marks[0] = -np.inf if state.watermark is None else state.watermark
        marks[1:] = flat_times
        np.maximum.accumulate(marks, out=marks)
        before, after = marks[:-1], marks[1:]
        cut = np.isfinite(before) & (self._through(after) > self._through(before))
        chunk_of = np.empty(flat_times.size, dtype=np.int64)
        chunk_of[order] = np.cumsum(cut) - cut
        ends = flat_offsets[order][cut] + 1
        cut_marks = after[cut]
        late_sorted = np.isfinite(before) & (
            np.floor(flat_times / self._size) * self._size + self._size + self._lateness <= before
        )
        late = np.empty(flat_times.size, dtype=bool)
        late[order] = late_sorted
        counts = AddCounts()
        bounds = np.cumsum([0, *(o.size for o in offsets)])
        for chunk in range(ends.size + 1):
            self._fill(state, groups, chunk_of, late, bounds, chunk, counts)
            for offset, reason in rejects:
                if int(np.searchsorted(ends, offset, side="right")) == chunk:
                    state.rejected[reason] += 1
            if chunk < ends.size:
                self._seal(partition, state, int(ends[chunk]), float(cut_marks[chunk]))
        if flat_times.size:
            state.watermark = float(after[-1])
        return counts

    def _fill(
        self,
        state: _Open[P],
        groups: Sequence[tuple[str, SegmentKey, B, npt.ArrayLike]],
        chunk_of: npt.NDArray[np.int64],
        late: npt.NDArray[np.bool_],
        bounds: npt.NDArray[np.int64],
        chunk: int,
        counts: AddCounts,
    ) -> None:
        """Add the rows of ``chunk`` (of this poll) to the open chunk's profiles."""
        for index, (model, segment, batch, _) in enumerate(groups):
            lo, hi = int(bounds[index]), int(bounds[index + 1])
            mine = chunk_of[lo:hi] == chunk
            is_late = late[lo:hi] & mine
            if is_late.any():
                state.rejected["late"] += int(is_late.sum())
                counts.late[model] += int(is_late.sum())
            keep = mine & ~late[lo:hi]
            if not keep.any():
                continue
            times = np.asarray(batch.timestamps, dtype=np.float64)
            starts = (np.floor(times / self._size) * self._size).astype(np.int64)
            for start in np.unique(starts[keep]).tolist():
                rows = np.flatnonzero(keep & (starts == start))
                key = WindowKey(model, segment, int(start))
                piece = state.pieces.get(key)
                if piece is None:
                    piece = state.pieces[key] = self._factory(key)
                piece.update(batch if rows.size == len(batch) else batch.take(rows))
                counts.added[model] += int(rows.size)

    def _seal(self, partition: Partition, state: _Open[P], end: int, watermark: float) -> None:
        assert state.start is not None  # set by the rows that made the cut
        state.sealed.append(
            Chunk(partition, state.start, end, watermark, state.pieces, state.rejected)
        )
        state.start, state.pieces, state.rejected = end, {}, Counter()

    def _through(self, marks: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Per watermark, the index of the newest window it closes (-inf: none)."""
        with np.errstate(invalid="ignore"):
            return np.floor((marks - self._size - self._lateness) / self._size)

    def advance(self, partition: Partition, position: int, *, caught_up: bool) -> None:
        """The consumer's position after this poll's records were added."""
        state = self._state(partition)
        state.position, state.caught_up = position, caught_up
        if state.start is None:
            state.start = position

    def sealed(self) -> list[Chunk[P]]:
        """Chunks cut and not yet published, oldest first per partition."""
        return [chunk for state in self._open.values() for chunk in state.sealed]

    def tail(self, partition: Partition) -> Chunk[P] | None:
        """The open chunk of ``partition`` as it stands (None before its start is read)."""
        state = self._open.get(partition)
        if state is None or state.start is None or state.position is None:
            return None
        if state.position < state.start:  # the context record is not read yet
            return None
        return Chunk(
            partition,
            state.start,
            state.position,
            state.watermark,
            dict(state.pieces),
            Counter(state.rejected),
            tail=True,
            caught_up=state.caught_up,
        )

    def published(self, chunk: Chunk[P]) -> None:
        """``chunk`` (from ``sealed``) is acknowledged: its offsets may be committed past."""
        state = self._open.get(chunk.partition)
        if state is not None:
            state.sealed = [c for c in state.sealed if c is not chunk]

    def commit_offsets(self) -> dict[Partition, Checkpoint]:
        """Per partition, the start of its oldest chunk not yet published."""
        checkpoints = {}
        for partition, state in self._open.items():
            start = state.sealed[0].start if state.sealed else state.start
            if start is not None and state.position is not None:
                checkpoints[partition] = Checkpoint(start)
        return checkpoints

    def paused_partitions(self) -> frozenset[Partition]:
        """None: a collector cuts a partition that runs ahead into chunks as it goes."""
        return frozenset()

    def _state(self, partition: Partition) -> _Open[P]:
        try:
            return self._open[partition]
        except KeyError:
            raise ValueError(f"partition {partition} is not assigned; assign() it first") from None


@dataclass
class AddCounts:
    """Rows of one ``add`` added to profiles, and found late, per model."""

    added: Counter[str] = field(default_factory=Counter)
    late: Counter[str] = field(default_factory=Counter)


class _Count:
    """A stand-in profile for the doctest: counts rows."""

    def __init__(self) -> None:
        self.count = 0

    def update(self, batch: Any) -> None:
        self.count += len(batch)


class _Times:
    """A stand-in batch for the doctest: event times only."""

    def __init__(self, times: Sequence[float]) -> None:
        self.timestamps = np.asarray(times, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.timestamps.size)

    def take(self, rows: npt.NDArray[np.intp]) -> _Times:
        return _Times(self.timestamps[rows].tolist())
