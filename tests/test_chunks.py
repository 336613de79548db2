"""ChunkStore: a partition's chunks depend only on its records, not on how they are polled nor
on who reads them from which committed chunk start; the late rule; tails and commit offsets.

The stand-ins: an event's id rides in the first column of its embedding and a profile
(:class:`Ids`) keeps the ids it was given, so a chunk's pieces say exactly which events they
hold. :func:`reference` cuts a record list into chunks one record at a time, straight from the
rules of ``agent.chunks`` (and of ``agent.windows``' late rule), with none of its code.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.checkpoint import Checkpoint
from agent.chunks import Chunk, ChunkStore
from agent.collector import Collector
from agent.window_types import WindowKey
from exporters.records import SegmentKey
from sketches.batch import EventBatch

P0 = ("events", 0)
NONE = SegmentKey()
EU = SegmentKey.of({"region": "eu"})
SIZES = (10, 30, 60)
LATENESS = (0.0, 2.5, 10.0, 30.0, 60.0, 75.0)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Ids:
    """A profile that keeps the ids of its events (and can travel as bytes)."""

    ids: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ids)

    def update(self, batch: EventBatch) -> None:
        self.ids.extend(int(i) for i in batch.embeddings[:, 0])

    def merge(self, other: Ids) -> Ids:
        return Ids(self.ids + other.ids)

    def to_bytes(self) -> bytes:
        return json.dumps(self.ids).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Ids:
        return cls(json.loads(data))


@dataclass(frozen=True)
class Record:
    """One input record: an event (``time``) or a reject (``time`` None)."""

    offset: int
    time: float | None
    id: int
    model: str = "a"
    segment: SegmentKey = NONE
    reason: str = "bad_json"
    value: bytes | None = None
    timestamp: int | None = None
    partition: int = 0


def window_start(time: float, size: int) -> int:
    return math.floor(time / size) * size


def key_of(record: Record, size: int) -> WindowKey:
    assert record.time is not None
    return WindowKey(record.model, record.segment, window_start(record.time, size))


# --- the reference ------------------------------------------------------------------------


@dataclass
class RefChunk:
    start: int | None
    end: int | None = None
    watermark: float | None = None
    pieces: dict[WindowKey, list[int]] = field(default_factory=lambda: defaultdict(list))
    rejected: Counter[str] = field(default_factory=Counter)

    def summary(self) -> Summary:
        return (
            self.start,
            self.end,
            self.watermark,
            {k: sorted(v) for k, v in self.pieces.items()},
            dict(+self.rejected),
        )


Summary = tuple[int | None, int | None, float | None, dict[WindowKey, list[int]], dict[str, int]]


def closes_between(before: float, after: float, size: int, lateness: float) -> bool:
    """Some window end ``e`` has ``before < e + lateness <= after``."""
    end = (math.floor((before - lateness) / size) + 1) * size
    return end + lateness <= after


def is_late(time: float, watermark: float | None, size: int, lateness: float) -> bool:
    return watermark is not None and window_start(time, size) + size + lateness <= watermark


def reference(
    records: Sequence[Record], size: int, lateness: float
) -> tuple[list[RefChunk], RefChunk]:
    """The sealed chunks of ``records`` (read from their first, with no watermark) and the
    open chunk after them (its ``end`` None, its watermark the partition's)."""
    sealed: list[RefChunk] = []
    current = RefChunk(None)
    mark: float | None = None
    for record in records:
        if current.start is None:
            current.start = record.offset
        if record.time is None:
            current.rejected[record.reason] += 1
            continue
        if is_late(record.time, mark, size, lateness):
            current.rejected["late"] += 1
        else:
            current.pieces[key_of(record, size)].append(record.id)
        new = record.time if mark is None else max(mark, record.time)
        if mark is not None and closes_between(mark, new, size, lateness):
            current.end, current.watermark = record.offset + 1, new
            sealed.append(current)
            current = RefChunk(record.offset + 1)
        mark = new
    current.watermark = mark
    return sealed, current


def late_ids(records: Sequence[Record], size: int, lateness: float) -> set[int]:
    """Brute force: an event is late iff its window end + lateness <= the largest event time of
    the records before it."""
    late = set()
    for i, record in enumerate(records):
        if record.time is None:
            continue
        before = [r.time for r in records[:i] if r.time is not None]
        if is_late(record.time, max(before) if before else None, size, lateness):
            late.add(record.id)
    return late


# --- generators ----------------------------------------------------------------------------

_KINDS = ["step"] * 8 + ["back", "back", "jump", "reject", "same", "edge", "line"]


@st.composite
def partition_records(
    draw: st.DrawFn,
    size: int,
    lateness: float,
    partition: int = 0,
    max_size: int = 50,
    models: Sequence[str] = ("a", "b"),
) -> list[Record]:
    """Event times mostly increasing (by multiples of 2.5 s), some out of order, some far
    ahead, some exactly on a window's end plus lateness ("edge": the watermark lands on it;
    "line": an event of the newest window the watermark closed, late by a hair if the watermark
    is on the line); rejects at random offsets."""
    n = draw(st.integers(0, max_size))
    first = draw(st.sampled_from([0, 0, 0, 7]))
    top = draw(st.sampled_from([0.0, 1_000.0, 1_700_000_000.0]))
    records = []
    for i in range(n):
        offset = first + i
        ident = partition * 100_000 + offset
        kind = draw(st.sampled_from(_KINDS))
        if kind == "reject":
            reason = draw(st.sampled_from(["bad_json", "no_vector"]))
            records.append(Record(offset, None, ident, reason=reason, partition=partition))
            continue
        if kind == "step":
            time = top + draw(st.integers(0, 12)) * 2.5
        elif kind == "jump":
            time = top + draw(st.integers(13, 80)) * 2.5
        elif kind == "back":
            time = top - draw(st.integers(1, 60)) * 2.5
        elif kind == "edge":
            time = (math.floor((top - lateness) / size) + 1) * size + lateness
        elif kind == "line":
            time = math.floor((top - lateness) / size) * size - 2.5
        else:
            time = top
        top = max(top, time)
        model = draw(st.sampled_from([*models, models[0]]))
        segment = draw(st.sampled_from([NONE, NONE, EU]))
        records.append(Record(offset, time, ident, model, segment, partition=partition))
    return records


def poll_cuts(n: int) -> st.SearchStrategy[list[int]]:
    """Where polls end (sorted; repeats make empty polls)."""
    return st.lists(st.integers(0, n), max_size=10).map(sorted)


def polls(records: Sequence[Record], cuts: Sequence[int]) -> list[list[Record]]:
    bounds = [0, *cuts, len(records)]
    return [list(records[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


@dataclass(frozen=True)
class Case:
    records: list[Record]
    size: int
    lateness: float
    cuts: list[int]
    other_cuts: list[int]
    seed: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    size = draw(st.sampled_from(SIZES))
    lateness = draw(st.sampled_from(LATENESS))
    records = draw(partition_records(size, lateness))
    return Case(
        records,
        size,
        lateness,
        draw(poll_cuts(len(records))),
        draw(poll_cuts(len(records))),
        draw(st.integers(0, 2**32 - 1)),
    )


# --- feeding a store -----------------------------------------------------------------------


def batch_of(records: Sequence[Record]) -> EventBatch:
    ids = np.array([[r.id] for r in records], np.float32).reshape(-1, 1)
    return EventBatch(ids, np.array([r.time for r in records], np.float64))


def groups_of(
    records: Sequence[Record], rng: random.Random | None = None
) -> list[tuple[str, SegmentKey, EventBatch, list[int]]]:
    """The decoder's grouping: events by (model, segment), offsets ascending in each group."""
    grouped: dict[tuple[str, SegmentKey], list[Record]] = {}
    for record in records:
        if record.time is not None:
            grouped.setdefault((record.model, record.segment), []).append(record)
    groups = [(m, s, batch_of(rs), [r.offset for r in rs]) for (m, s), rs in grouped.items()]
    if rng is not None:
        rng.shuffle(groups)
    return groups


def rejects_of(records: Sequence[Record]) -> list[tuple[int, str]]:
    return [(r.offset, r.reason) for r in records if r.time is None]


def position_after(records: Sequence[Record], poll: Sequence[Record], before: int) -> int:
    return poll[-1].offset + 1 if poll else before


def summary(chunk: Chunk[Any]) -> Summary:
    return (
        chunk.start,
        chunk.end,
        chunk.watermark,
        {k: sorted(p.ids) for k, p in chunk.pieces.items()},
        dict(+chunk.rejected),
    )


def new_store(size: int, lateness: float) -> ChunkStore[Ids]:
    return ChunkStore(
        window=timedelta(seconds=size),
        factory=lambda key: Ids(),
        lateness=timedelta(seconds=lateness),
    )


@dataclass
class Fed:
    sealed: list[Summary]
    added: Counter[str]
    late: Counter[str]
    chunks: list[Chunk[Ids]]


def feed(
    store: ChunkStore[Ids],
    records: Sequence[Record],
    cuts: Sequence[int],
    rng: random.Random | None = None,
    *,
    start: int = 0,
) -> Fed:
    """Poll ``records`` into ``store`` at ``cuts``, publishing every chunk as it is sealed."""
    fed = Fed([], Counter(), Counter(), [])
    position = records[0].offset if records else start
    for poll in polls(records, cuts):
        counts = store.add(P0, groups_of(poll, rng), rejects=rejects_of(poll))
        fed.added.update(counts.added)
        fed.late.update(counts.late)
        position = position_after(records, poll, position)
        store.advance(P0, position, caught_up=False)
        for chunk in store.sealed():
            fed.sealed.append(summary(chunk))
            fed.chunks.append(chunk)
            store.published(chunk)
    return fed


# --- 1 and 3: chunks are the reference's, whatever the polls; the late rule -----------------


@SETTINGS
@given(case=cases())
def test_chunks_are_the_references_whatever_the_polls(case: Case) -> None:
    sealed, open_ = reference(case.records, case.size, case.lateness)
    expected = [c.summary() for c in sealed]
    runs = []
    for cuts, seed in ((case.cuts, None), (case.other_cuts, case.seed)):
        store = new_store(case.size, case.lateness)
        store.assign(P0, None)
        fed = feed(store, case.records, cuts, None if seed is None else random.Random(seed))
        tail = store.tail(P0)
        runs.append((fed.sealed, None if tail is None else summary(tail)))
        assert fed.sealed == expected
        if case.records:
            assert tail is not None
            assert summary(tail)[:1] + summary(tail)[2:] == (open_.start, *open_.summary()[2:])
            assert tail.end == case.records[-1].offset + 1
        # AddCounts: per model, added + late over the polls are the reference's.
        kept, late = Counter[str](), Counter[str]()
        late_set = late_ids(case.records, case.size, case.lateness)
        for record in case.records:
            if record.time is not None:
                (late if record.id in late_set else kept)[record.model] += 1
        assert +fed.added == +kept
        assert +fed.late == +late
    assert runs[0] == runs[1]  # the split into polls (and groups' order) changed nothing


@SETTINGS
@given(case=cases())
def test_an_event_is_late_iff_its_window_is_closed_at_its_partitions_watermark(
    case: Case,
) -> None:
    store = new_store(case.size, case.lateness)
    store.assign(P0, None)
    fed = feed(store, case.records, case.cuts)
    tail = store.tail(P0)
    chunks = [*fed.chunks, *([tail] if tail is not None else [])]
    held = [i for c in chunks for p in c.pieces.values() for i in p.ids]
    assert len(held) == len(set(held))  # no event in two pieces
    events = {r.id for r in case.records if r.time is not None}
    assert events - set(held) == late_ids(case.records, case.size, case.lateness)
    # Every record of a chunk is in one of its pieces or in its rejected counts, and the chunks
    # tile the partition from its first record to the position.
    for chunk in chunks:
        in_pieces = sum(p.count for p in chunk.pieces.values())
        assert in_pieces + sum(chunk.rejected.values()) == chunk.end - chunk.start
    assert [c.start for c in chunks[1:]] == [c.end for c in chunks[:-1]]
    if case.records:
        assert chunks[0].start == case.records[0].offset
        assert chunks[-1].end == case.records[-1].offset + 1
    # A chunk ends where its watermark closes a window that was open at its start, and holds no
    # piece of a window closed at its start: so once a chunk with watermark W is applied, no
    # later chunk of the partition has a piece of a window ending at or before W - lateness.
    mark: float | None = None
    for chunk in chunks:
        for key in chunk.pieces:
            assert mark is None or key.start + case.size + case.lateness > mark
        if not chunk.tail and mark is not None:
            assert chunk.watermark is not None
            assert closes_between(mark, chunk.watermark, case.size, case.lateness)
        mark = chunk.watermark


# --- 2: a new owner from any chunk start cuts the same chunks --------------------------------


class FakeDecoder:
    """Decodes :class:`Record` s as the real decoder groups them."""

    def decode(self, records: Sequence[Record]) -> SimpleNamespace:
        groups = tuple(
            SimpleNamespace(model=m, segment=s, batch=b, offsets=np.asarray(o, np.int64))
            for m, s, b, o in groups_of(records)
        )
        rejects = tuple(
            SimpleNamespace(offset=r.offset, reason=r.reason, detail="test")
            for r in records
            if r.time is None
        )
        return SimpleNamespace(groups=groups, rejects=rejects)


def new_collector(size: int, lateness: float) -> Collector:
    reference = SimpleNamespace(version="test", new_profile=Ids)
    return Collector(
        cast(Any, reference),
        cast(Any, FakeDecoder()),
        cast(Any, None),
        window=timedelta(seconds=size),
        lateness=timedelta(seconds=lateness),
    )


def resume(
    case: Case, start: int, cuts: Sequence[int], *, through_collector: bool
) -> tuple[list[Summary], Summary | None]:
    """A new owner assigned ``Checkpoint(start)``: its source hands out the record before
    ``start`` first, then the rest, polled at ``cuts``."""
    records = [r for r in case.records if r.offset >= start - 1]
    sealed: list[Summary] = []
    if through_collector:
        collector = new_collector(case.size, case.lateness)
        store = collector.store
    else:
        store = new_store(case.size, case.lateness)
    store.assign(P0, Checkpoint(start))
    assert store.context_below(P0) == start
    position = records[0].offset if records else start
    for poll in polls(records, [min(c, len(records)) for c in cuts]):
        if through_collector:
            collector.ingest(P0, cast(Any, poll))
        else:
            context = [r for r in poll if r.offset < start]
            store.add_context(P0, [r.time for r in context if r.time is not None])
            rest = [r for r in poll if r.offset >= start]
            store.add(P0, groups_of(rest), rejects=rejects_of(rest))
        position = position_after(records, poll, position)
        store.advance(P0, position, caught_up=False)
        for chunk in store.sealed():
            sealed.append(summary(chunk))
            store.published(chunk)
    tail = store.tail(P0)
    return sealed, None if tail is None else summary(tail)


@SETTINGS
@given(case=cases(), through_collector=st.booleans())
def test_a_new_owner_from_any_chunk_start_cuts_the_same_chunks(
    case: Case, through_collector: bool
) -> None:
    """The exactness claim of ``agent.chunks``: stopping at any chunk's start and resuming
    there, with the watermark read off the record before it, changes no chunk after it."""
    store = new_store(case.size, case.lateness)
    store.assign(P0, None)
    whole = feed(store, case.records, case.cuts).sealed
    whole_tail = store.tail(P0)
    starts = [s[0] for s in whole]
    if whole_tail is not None:
        starts.append(whole_tail.start)
    for start in starts:
        assert start is not None
        sealed, tail = resume(case, start, case.other_cuts, through_collector=through_collector)
        assert sealed == [s for s in whole if s[0] is not None and s[0] >= start]
        assert whole_tail is not None
        assert tail is not None
        assert tail == summary(whole_tail)


def test_resume_reads_the_watermark_off_the_context_record_and_counts_it_nowhere() -> None:
    # Window 60 s, lateness 30 s: 95 closes [0, 60) and ends the chunk at offset 2.
    records = [Record(0, 10.0, 0), Record(1, 95.0, 1), Record(2, 50.0, 2), Record(3, 100.0, 3)]
    sealed, open_ = reference(records, 60, 30.0)
    assert [(c.start, c.end, c.watermark) for c in sealed] == [(0, 2, 95.0)]
    assert open_.summary()[3:] == ({WindowKey("a", NONE, 60): [3]}, {"late": 1})
    store = new_store(60, 30.0)
    store.assign(P0, Checkpoint(2))
    store.advance(P0, 1, caught_up=False)  # seeked one back, nothing read yet
    assert store.tail(P0) is None
    assert store.commit_offsets() == {P0: Checkpoint(2)}
    store.add_context(P0, [95.0])
    counts = store.add(P0, groups_of(records[2:]), rejects=[])
    assert (dict(counts.added), dict(counts.late)) == ({"a": 1}, {"a": 1})
    store.advance(P0, 4, caught_up=True)
    tail = store.tail(P0)
    assert tail is not None and tail.tail and tail.caught_up
    assert summary(tail) == (2, 4, 100.0, {WindowKey("a", NONE, 60): [3]}, {"late": 1})
    # Without the context record the late event would have been added.
    blind = new_store(60, 30.0)
    blind.assign(P0, Checkpoint(2))
    assert dict(blind.add(P0, groups_of(records[2:]), rejects=[]).late) == {}


# --- 4: tails and commit offsets ----------------------------------------------------------


@SETTINGS
@given(case=cases(), acks=st.lists(st.booleans(), max_size=40))
def test_tails_cover_the_open_chunk_and_commits_the_oldest_unpublished_chunk(
    case: Case, acks: list[bool]
) -> None:
    store = new_store(case.size, case.lateness)
    store.assign(P0, None)
    assert store.commit_offsets() == {}
    assert store.tail(P0) is None
    acked = iter(acks)
    waiting: list[Chunk[Ids]] = []  # sealed, not acknowledged, oldest first
    position = case.records[0].offset if case.records else 0
    read = seen = 0
    ref_starts = {c.start for c in reference(case.records, case.size, case.lateness)[0]}
    for number, poll in enumerate(polls(case.records, case.cuts)):
        store.add(P0, groups_of(poll), rejects=rejects_of(poll))
        read += len(poll)
        position = position_after(case.records, poll, position)
        caught_up = number % 2 == 1
        store.advance(P0, position, caught_up=caught_up)
        sealed, open_ = reference(case.records[:read], case.size, case.lateness)
        tail = store.tail(P0)
        assert tail is not None
        assert tail.tail and tail.caught_up == caught_up
        expected_start = open_.start if open_.start is not None else position
        assert (tail.start, tail.end) == (expected_start, position)
        assert summary(tail)[2:] == open_.summary()[2:]
        # The collector publishes what is sealed; only some publications are acknowledged.
        fresh = [c for c in store.sealed() if all(c is not w for w in waiting)]
        assert [summary(c) for c in fresh] == [c.summary() for c in sealed[seen:]]
        seen = len(sealed)
        waiting += fresh
        for chunk in list(waiting):
            if next(acked, True):
                store.published(chunk)
                waiting.remove(chunk)
        assert [c.start for c in store.sealed()] == [c.start for c in waiting]
        oldest = waiting[0].start if waiting else tail.start
        assert store.commit_offsets() == {P0: Checkpoint(oldest)}
        assert oldest in ref_starts | {expected_start}  # a commit is always a chunk start
    assert store.open_windows == len(store.tail(P0).pieces) + sum(  # type: ignore[union-attr]
        len(c.pieces) for c in waiting
    )


class FakePublisher:
    """Acknowledges every chunk except, once, the first one it is given."""

    def __init__(self) -> None:
        self.attempt = "test"
        self.refused = False
        self.published: list[Chunk[Ids]] = []

    def publish(self, chunks: Sequence[Chunk[Ids]], *, final: bool) -> list[Chunk[Ids]]:
        if not self.refused and chunks and not chunks[0].tail:
            self.refused = True
            chunks = chunks[1:]
        self.published += chunks
        return list(chunks)


def test_collector_commits_below_a_refused_chunk_and_publishes_it_again() -> None:
    now = [0.0]
    publisher = FakePublisher()
    collector = Collector(
        cast(Any, SimpleNamespace(version="test", new_profile=Ids)),
        cast(Any, FakeDecoder()),
        cast(Any, publisher),
        window=timedelta(seconds=60),
        timer=lambda: now[0],
    )
    collector.store.assign(P0, None)
    times = [5.0, 70.0, 130.0, 131.0]
    collector.ingest(P0, cast(Any, [Record(i, t, i) for i, t in enumerate(times)]))
    collector.store.advance(P0, 4, caught_up=True)
    acked = collector.close()
    # [0, 2) was refused, [2, 3) and the tail [3, 4) went out: the commit stays at 0.
    assert [(c.start, c.end, c.tail) for c in acked] == [(2, 3, False), (3, 4, True)]
    assert collector.store.commit_offsets() == {P0: Checkpoint(0)}
    assert not collector.done
    now[0] += 1.0  # the tail is unchanged and its heartbeat not due
    acked = collector.close()
    assert [(c.start, c.end, c.tail) for c in acked] == [(0, 2, False)]
    assert collector.store.commit_offsets() == {P0: Checkpoint(3)}
    assert collector.close(everything=True)[0].tail
    assert collector.done


def test_store_refuses_what_it_cannot_chunk() -> None:
    with pytest.raises(ValueError, match="whole number of seconds"):
        ChunkStore(window=timedelta(milliseconds=1500), factory=lambda key: Ids())
    with pytest.raises(ValueError, match="must not be negative"):
        new_store(60, -1.0)
    store = new_store(60, 0.0)
    with pytest.raises(ValueError, match="not assigned"):
        store.add(P0, [], rejects=[])
    store.assign(P0, None)
    with pytest.raises(ValueError, match="already assigned"):
        store.assign(P0, Checkpoint(3))
    store.revoke([P0])
    assert store.partitions == frozenset()
