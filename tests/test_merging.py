"""Shard: the chunks of several input partitions, as collectors publish them (copies, orphans,
tails, interleavings), applied once each and closed by the single process's watermark rules;
commits a restarted shard can go on from; partial windows after a grace.

The records fed to a shard are built the way ``agent.collector`` builds them, from chunks a
real :class:`~agent.chunks.ChunkStore` cut (stand-in profiles from ``tests.test_chunks``: a
window's profile is the ids of its events). The expected windows come from the per-partition
late rule alone (``tests.test_chunks.reference``): with every partition lagging, that is all
the single process's rules say.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.checkpoint import Checkpoint
from agent.chunks import Chunk
from agent.collector import Publisher
from agent.merging import Applied, Shard
from agent.partials import Piece, Seal, Span, decode
from agent.window_types import WindowKey
from exporters.records import SegmentKey
from tests.test_chunks import (
    LATENESS,
    SIZES,
    Ids,
    Record,
    groups_of,
    new_store,
    partition_records,
    poll_cuts,
    polls,
    reference,
    rejects_of,
)

TOPIC = "events"
MODELS = ("a", "b", "c")
HERE = frozenset({"a", "b"})  # the models of the profiles partition under test ("c" is elsewhere)
NONE = SegmentKey()
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))

Message = Piece | Seal


def _order(key: WindowKey) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    return key.start, key.model, key.segment.pairs


def publish(
    chunk: Chunk[Ids], attempt: str, partitions: int, *, final: bool = False
) -> list[Message]:
    """What ``Publisher._send`` puts on this profiles partition for ``chunk``."""
    span = Span(TOPIC, chunk.partition[1], chunk.start, chunk.end)
    pieces: list[Message] = [
        Piece(span, attempt, key, profile.count, profile.to_bytes())
        for key, profile in sorted(chunk.pieces.items(), key=lambda kv: _order(kv[0]))
        if key.model in HERE
    ]
    seal = Seal(
        span,
        attempt,
        chunk.watermark,
        len(pieces),
        partitions,
        tail=chunk.tail,
        caught_up=chunk.caught_up,
        final=final and chunk.tail,
        rejected=dict(chunk.rejected),
    )
    # Round-trip through the bytes, as the evaluator reads them.
    return [decode(m.to_bytes()) for m in [*pieces, seal]]


@dataclass
class Pub:
    """One publication: a chunk's (or a tail's) records on this shard."""

    kind: str  # "chunk", "tail", "orphan"
    start: int
    end: int
    records: list[Message]


@dataclass
class Collected:
    pubs: list[Pub]
    final: Pub
    starts: list[int]  # of the chunks sealed, then of the open one


def collect(
    records: Sequence[Record],
    *,
    size: int,
    lateness: float,
    partition: int,
    partitions: int,
    start: int | None,
    cuts: Sequence[int],
    caught_up: Sequence[bool],
    attempt: str,
) -> Collected:
    """A collector that owns ``partition`` from ``start`` (None: its first record; else a
    committed chunk start, read from the record before it): its publications in order."""
    source = (TOPIC, partition)
    store = new_store(size, lateness)
    store.assign(source, None if start is None else Checkpoint(start))
    mine = list(records) if start is None else [r for r in records if r.offset >= start - 1]
    position = mine[0].offset if mine else (start or 0)
    pubs: list[Pub] = []
    starts: list[int] = []
    for number, poll in enumerate(polls(mine, [min(c, len(mine)) for c in cuts])):
        below = store.context_below(source)
        store.add_context(source, [r.time for r in poll if r.offset < below and r.time is not None])
        rest = [r for r in poll if r.offset >= below]
        store.add(source, groups_of(rest), rejects=rejects_of(rest))
        position = poll[-1].offset + 1 if poll else position
        flag = caught_up[number] if number < len(caught_up) else False
        store.advance(source, position, caught_up=flag)
        for chunk in store.sealed():
            pubs.append(Pub("chunk", chunk.start, chunk.end, publish(chunk, attempt, partitions)))
            starts.append(chunk.start)
            store.published(chunk)
        tail = store.tail(source)
        if flag and tail is not None:
            pubs.append(Pub("tail", tail.start, tail.end, publish(tail, attempt, partitions)))
    tail = store.tail(source)
    assert tail is not None
    starts.append(tail.start)
    final = Pub("tail", tail.start, tail.end, publish(tail, attempt, partitions, final=True))
    return Collected(pubs, final, starts)


def merge(streams: Sequence[Sequence[Message]], rng: random.Random) -> list[Message]:
    """A random interleaving that keeps each stream's order."""
    queues = [list(s)[::-1] for s in streams if s]
    out: list[Message] = []
    while queues:
        weights = [len(q) for q in queues]
        queue = rng.choices(queues, weights)[0]
        out.append(queue.pop())
        if not queue:
            queues.remove(queue)
    return out


def flat(pubs: Sequence[Pub]) -> list[Message]:
    return [m for p in pubs for m in p.records]


@dataclass
class Scenario:
    size: int
    lateness: float
    partitions: int
    records: list[list[Record]]
    feed: list[Message]
    expected: dict[WindowKey, list[int]]  # the windows of this shard's models
    rejected: Counter[str]  # over all records of all partitions (late ones included)
    unique_pieces: int  # pieces of distinct chunks and final tails on this shard
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(len(ids) for ids in self.expected.values())


@st.composite
def scenarios(draw: st.DrawFn, *, caught_up: bool = False) -> Scenario:
    """Input partitions, each read by a collector X from its first record that dies after
    publishing some chunks, and by a collector Y from a chunk start at or before X's last
    publication (so the chunks in between are published twice, with other attempts), with an
    orphan piece or two of a collector that died half-way through a chunk; all interleaved on
    the shard at random (each collector's records in its order), each partition's final tail
    last. ``caught_up``: tails of caught-up polls too (and X stops before Y starts)."""
    size = draw(st.sampled_from(SIZES))
    lateness = draw(st.sampled_from(LATENESS))
    count = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    timelines: list[list[Message]] = []
    finals: list[list[Message]] = []
    all_records: list[list[Record]] = []
    expected: dict[WindowKey, list[int]] = {}
    rejected: Counter[str] = Counter()
    unique = 0
    notes = []
    for partition in range(count):
        records = draw(partition_records(size, lateness, partition, max_size=30, models=MODELS))
        all_records.append(records)
        flags = draw(st.lists(st.booleans(), min_size=12, max_size=12)) if caught_up else []
        common = dict(
            size=size, lateness=lateness, partition=partition, partitions=count, caught_up=flags
        )
        x = collect(records, start=None, cuts=draw(poll_cuts(len(records))), attempt="x", **common)
        chunks = [p for p in x.pubs if p.kind == "chunk"]
        resume = draw(st.integers(0, len(chunks)))  # Y starts at the start of chunk `resume`
        dies = draw(st.integers(max(resume - 1, -1), len(chunks) - 1))  # X's last chunk
        y = collect(
            records,
            start=x.starts[resume],
            cuts=draw(poll_cuts(len(records))),
            attempt="y",
            **common,
        )
        assert [p.start for p in y.pubs if p.kind == "chunk"] == x.starts[resume:-1]
        x_pubs: list[Pub] = []
        for pub in x.pubs if dies >= 0 else []:
            x_pubs.append(pub)
            if pub.kind == "chunk" and pub.start == chunks[dies].start:
                break
        split = next(
            (n for n, p in enumerate(x_pubs) if p.kind == "chunk" and p.start >= x.starts[resume]),
            len(x_pubs),
        )
        prefix, rest = x_pubs[:split], x_pubs[split:]
        orphans: list[Message] = []
        if chunks[resume:] and draw(st.booleans()):
            dead = rng.choice(chunks[resume:])
            pieces = [m for m in dead.records if isinstance(m, Piece)]
            orphans = [
                Piece(m.span, "dead", m.key, m.events, m.profile)
                for m in pieces[: rng.randint(0, len(pieces))]
            ]
            notes.append(f"orphans of [{dead.start}, {dead.end}) on {partition}")
        y_pubs = y.pubs
        if caught_up:
            # Y is assigned after X died; its tails never go back behind X's.
            seen = max((p.end for p in x_pubs if p.kind == "tail"), default=-1)
            y_pubs = [p for p in y.pubs if p.kind != "tail" or p.end >= seen]
            timeline = flat(prefix) + flat(rest) + orphans + flat(y_pubs)
        else:
            timeline = flat(prefix) + merge([flat(rest), orphans, flat(y_pubs)], rng)
        notes.append(
            f"partition {partition}: {len(chunks)} chunks, X publishes through {dies}, "
            f"Y from {resume}"
        )
        timelines.append(timeline)
        finals.append(y.final.records)
        sealed, open_ = reference(records, size, lateness)
        for chunk in [*sealed, open_]:
            rejected.update(chunk.rejected)
            for key, ids in chunk.pieces.items():
                if key.model in HERE:
                    expected.setdefault(key, []).extend(ids)
                    unique += 1
    rng.shuffle(finals)
    feed = merge(timelines, rng) + [m for f in finals for m in f]
    expected = {k: sorted(v) for k, v in sorted(expected.items(), key=lambda kv: _order(kv[0]))}
    return Scenario(
        size, lateness, count, all_records, feed, expected, +rejected, unique, seed, notes
    )


# --- running a shard ---------------------------------------------------------------------


def new_shard(
    sc: Scenario,
    *,
    persisted: set[WindowKey] | None = None,
    timer: Callable[[], float] = lambda: 0.0,
    grace_s: float = 60.0,
) -> Shard:
    """A shard reading from the start, or (``persisted`` given) resumed from a commit."""
    return Shard(
        topics=[TOPIC],
        window_seconds=sc.size,
        lateness_s=sc.lateness,
        read=cast(Any, Ids.from_bytes),
        persisted=set() if persisted is None else set(persisted),
        counts_rejects=lambda source: True,
        grace_s=grace_s,
        gap_timeout_s=1e12,
        resumed=persisted is not None,
        timer=timer,
    )


@dataclass
class Emitted:
    key: WindowKey
    end: int
    ids: list[int]
    at: int  # the index of the record after which it came out (len(feed): the final flush)
    call: int


@dataclass
class Run:
    complete: list[Emitted] = field(default_factory=list)
    partial: list[Emitted] = field(default_factory=list)
    applied: Applied = field(default_factory=Applied)
    commits: list[int | None] = field(default_factory=list)  # after each record
    calls: int = 0

    def keys(self) -> list[WindowKey]:
        return [e.key for e in self.complete]

    def take(self, shard: Shard, at: int, *, everything: bool = False) -> tuple[list, list]:
        complete, partial, applied = shard.due(everything=everything)
        self.applied.add(applied)
        self.calls += 1
        for window in complete:
            ids = sorted(cast(Ids, window.profile).ids)
            self.complete.append(Emitted(window.key, window.end, ids, at, self.calls))
        for window in partial:
            ids = sorted(cast(Ids, window.profile).ids)
            self.partial.append(Emitted(window.key, window.end, ids, at, self.calls))
        return complete, partial


def run(
    shard: Shard,
    feed: Sequence[Message],
    *,
    first: int = 0,
    check: Callable[[int, Shard, list[Any]], None] | None = None,
    tick: Callable[[int], None] | None = None,
    flush: bool = True,
) -> Run:
    """Feed ``feed[first:]`` (the record at index i read at offset i), closing what is due
    after each record, and everything at the end."""
    out = Run()
    for offset in range(first, len(feed)):
        if tick is not None:
            tick(offset)
        out.applied.add(shard.add(offset, feed[offset]))
        shard.position = offset + 1
        complete, _ = out.take(shard, offset)
        if check is not None:
            check(offset, shard, complete)
        out.commits.append(shard.commit_offset())
    if flush:
        out.take(shard, len(feed), everything=True)
    return out


class Oracle:
    """The single process's watermark over the input partitions from the seals read so far:
    a partition's is its final tail's once read, else the watermark at the end of the longest
    run of its chunks (any attempt) from its first; it lags unless final."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.spans: dict[int, dict[int, tuple[int, float | None]]] = {
            p: {} for p in range(sc.partitions)
        }
        self.final: dict[int, float | None] = {}
        self.first = {p: (r[0].offset if r else 0) for p, r in enumerate(sc.records)}

    def read(self, message: Message) -> None:
        if isinstance(message, Seal):
            part = message.span.partition
            if message.final:
                self.final[part] = message.watermark
            elif not message.tail:
                self.spans[part][message.span.start] = (message.span.end, message.watermark)

    def mark(self) -> float | None:
        lagging: list[float | None] = []
        done: list[float] = []
        for part in range(self.sc.partitions):
            if part in self.final:
                mark = self.final[part]
                if mark is not None:
                    done.append(mark)
                continue
            spans, at = self.spans[part], self.first[part]
            if at not in spans:
                return None  # no chain yet (its first seal is its first chunk's)
            mark = None
            while at in spans:
                at, mark = spans[at]
            lagging.append(mark)
        if lagging:
            return None if None in lagging else min(m for m in lagging if m is not None)
        return max(done, default=None)


def summary(emitted: Sequence[Emitted]) -> dict[WindowKey, list[int]]:
    return {e.key: e.ids for e in emitted}


# --- 5: every window once, complete, in time order, when the watermark passes it -------------


@SETTINGS
@given(sc=scenarios())
def test_each_window_comes_out_once_complete_in_time_order_when_due(sc: Scenario) -> None:
    oracle = Oracle(sc)
    emitted: set[WindowKey] = set()

    def check(offset: int, shard: Shard, complete: list[Any]) -> None:
        oracle.read(sc.feed[offset])
        mark = oracle.mark()
        assert shard.watermark() == mark
        for window in complete:
            assert mark is not None and window.end + sc.lateness <= mark, window.key
            emitted.add(window.key)
        if mark is not None:
            due = {k for k in sc.expected if k.start + sc.size + sc.lateness <= mark}
            assert due <= emitted, f"due but not emitted: {sorted(due - emitted, key=_order)}"

    shard = new_shard(sc)
    out = run(shard, sc.feed, check=check)
    keys = out.keys()
    assert len(keys) == len(set(keys)), "a window emitted complete twice"
    assert summary(out.complete) == sc.expected
    ends = [e.end for e in out.complete]
    assert ends == sorted(ends), "windows out of time order"
    assert [(e.key.start, e.key.model) for e in out.complete if e.call == out.calls] == sorted(
        (e.key.start, e.key.model) for e in out.complete if e.call == out.calls
    )
    assert out.partial == []  # no time passes: no grace runs out
    # Counts: each chunk once; the copies and orphans are duplicates; nothing is late here.
    fed = sum(isinstance(m, Piece) for m in sc.feed)
    assert out.applied.merged == sc.unique_pieces
    assert out.applied.duplicate == fed - sc.unique_pieces
    events: Counter[str] = Counter()
    for key, ids in sc.expected.items():
        events[key.model] += len(ids)
    assert +out.applied.events == events
    assert +out.applied.late == Counter()
    assert +out.applied.rejected == sc.rejected
    assert shard.pending == 0 and shard.open_windows == 0
    commits = [c for c in out.commits if c is not None]
    assert commits == sorted(commits), "the commit offset went back"
    assert shard.covered({(TOPIC, p): len(r) for p, r in enumerate(sc.records)})


@SETTINGS
@given(sc=scenarios(), data=st.data())
def test_a_shard_restarted_from_its_commit_emits_the_same_remaining_windows(
    sc: Scenario, data: st.DataObject
) -> None:
    """Kill the shard after any record; it had committed what ``commit_offset`` said some records
    before, and persisted every window it emitted complete. A new shard reading from the commit,
    with those windows in its ledger, emits exactly the rest."""
    whole = run(new_shard(sc), sc.feed)
    if not sc.feed:
        return
    crash = data.draw(st.integers(0, len(sc.feed) - 1), label="crash after record")
    committed_at = data.draw(st.integers(-1, crash), label="committed after record")
    commit = 0 if committed_at < 0 else whole.commits[committed_at]
    assert commit is not None
    before = [e for e in whole.complete if e.at <= crash]
    persisted = {e.key for e in before}
    again = run(new_shard(sc, persisted=persisted), sc.feed, first=commit)
    assert not persisted & set(again.keys()), "a persisted window emitted again"
    assert len(again.keys()) == len(set(again.keys()))
    assert {**summary(before), **summary(again.complete)} == sc.expected
    assert summary(again.complete) == summary(e for e in whole.complete if e.at > crash)


# --- the same with caught-up partitions: timing decides, but nothing is lost or doubled -----


@SETTINGS
@given(sc=scenarios(caught_up=True), steps=st.lists(st.integers(0, 8), max_size=400))
def test_with_caught_up_tails_every_event_is_in_one_window_or_counted_late(
    sc: Scenario, steps: list[int]
) -> None:
    """With tails of caught-up partitions a window may close without events a partition reads
    later (the single process's rule too): those are late. Every event of the shard's models is
    in exactly one window emitted complete or counted late; every window is emitted complete
    once, and partial ones only with events of their own."""
    now = [0.0]
    ticks = iter(steps)

    def tick(offset: int) -> None:
        now[0] += next(ticks, 1)

    shard = new_shard(sc, timer=lambda: now[0], grace_s=20.0)
    out = run(shard, sc.feed, tick=tick)
    keys = out.keys()
    assert len(keys) == len(set(keys)), "a window emitted complete twice"
    held: list[int] = []
    for emitted in out.complete:
        assert set(emitted.ids) <= set(sc.expected.get(emitted.key, [])), emitted.key
        held += emitted.ids
    assert len(held) == len(set(held)), "an event in two windows"
    assert len(held) + sum(out.applied.late.values()) == sc.events
    assert sum(out.applied.events.values()) == len(held)
    assert +out.applied.rejected == sc.rejected
    for call in range(1, out.calls + 1):
        batch = [_order(e.key) for e in out.complete if e.call == call]
        assert batch == sorted(batch), "one due() out of time order"
    closed_at = {e.key: e.call for e in out.complete}
    for emitted in out.partial:
        assert set(emitted.ids) <= set(sc.expected.get(emitted.key, []))
        assert emitted.call < closed_at[emitted.key], "partial after complete"
    assert shard.pending == 0 and shard.open_windows == 0


# --- focused cases -------------------------------------------------------------------------

A0 = WindowKey("a", NONE, 0)
A60 = WindowKey("a", NONE, 60)
B0 = WindowKey("b", NONE, 0)


def piece(partition: int, start: int, end: int, key: WindowKey, ids: list[int], attempt: str = "x"):
    return Piece(Span(TOPIC, partition, start, end), attempt, key, len(ids), Ids(ids).to_bytes())


def seal(
    partition: int,
    start: int,
    end: int,
    watermark: float | None,
    pieces: int,
    *,
    attempt: str = "x",
    partitions: int = 2,
    tail: bool = False,
    caught_up: bool = False,
    final: bool = False,
    rejected: dict[str, int] | None = None,
) -> Seal:
    return Seal(
        Span(TOPIC, partition, start, end),
        attempt,
        watermark,
        pieces,
        partitions,
        tail=tail,
        caught_up=caught_up,
        final=final,
        rejected=rejected or {},
    )


def plain_shard(
    timer: Callable[[], float] = lambda: 0.0, *, grace_s: float = 60.0, **kwargs: Any
) -> Shard:
    return Shard(
        topics=[TOPIC],
        window_seconds=60,
        lateness_s=0.0,
        read=cast(Any, Ids.from_bytes),
        persisted=kwargs.pop("persisted", set()),
        counts_rejects=lambda source: True,
        grace_s=grace_s,
        timer=timer,
        **kwargs,
    )


def feed_all(shard: Shard, messages: Sequence[Message], first: int = 0) -> Applied:
    applied = Applied()
    for offset, message in enumerate(messages, start=first):
        applied.add(shard.add(offset, message))
        shard.position = offset + 1
    return applied


def ids_of(windows: Sequence[Any]) -> dict[WindowKey, list[int]]:
    return {w.key: sorted(w.profile.ids) for w in windows}


def test_partial_after_grace_again_only_when_grown_complete_when_the_laggard_arrives() -> None:
    """6. P0 has passed [0, 60) and [60, 120), P1 lags at 30: after ``grace_s`` the windows come
    out partial, not before; again only once one grew and a grace passed since it last came out;
    complete once P1's chunk moves the watermark past them."""
    now = [0.0]
    shard = plain_shard(lambda: now[0], grace_s=10.0)
    feed_all(
        shard,
        [
            piece(0, 0, 3, A0, [1, 2]),
            piece(0, 0, 3, A60, [3]),
            seal(0, 0, 3, 130.0, 2),
            # A stand-in for a lagging partition (a real chunk ends where its watermark crosses
            # a window end; the shard does not check).
            piece(1, 0, 1, A0, [100]),
            seal(1, 0, 1, 30.0, 1),
        ],
    )
    assert shard.watermark() == 30.0
    assert shard.due()[:2] == ([], [])  # overdue from now on
    now[0] = 9.9
    assert shard.due()[:2] == ([], [])
    now[0] = 10.0
    complete, partial, _ = shard.due()
    assert complete == []
    assert [w.key for w in partial] == [A0, A60]  # oldest first
    assert ids_of(partial) == {A0: [1, 2, 100], A60: [3]}
    assert all(not w.min_offsets for w in partial)
    now[0] = 25.0
    assert shard.due()[:2] == ([], [])  # nothing grew
    feed_all(shard, [piece(1, 1, 2, A0, [101]), seal(1, 1, 2, 45.0, 1)], first=5)
    now[0] = 26.0
    complete, partial, _ = shard.due()
    assert complete == [] and ids_of(partial) == {A0: [1, 2, 100, 101]}
    feed_all(shard, [piece(1, 2, 3, A0, [102]), seal(1, 2, 3, 50.0, 1)], first=7)
    now[0] = 35.9
    assert shard.due()[:2] == ([], [])  # grew, but not a grace since the last partial
    now[0] = 36.0
    complete, partial, _ = shard.due()
    assert complete == [] and ids_of(partial) == {A0: [1, 2, 100, 101, 102]}
    assert shard.commit_offset() == 0  # a window emitted partial still holds its records
    feed_all(shard, [piece(1, 3, 4, A60, [103]), seal(1, 3, 4, 200.0, 1)], first=9)
    complete, partial, _ = shard.due()
    assert partial == []
    assert ids_of(complete) == {A0: [1, 2, 100, 101, 102], A60: [3, 103]}
    assert shard.open_windows == 0 and shard.commit_offset() == 11


def test_a_tail_stands_in_for_its_chunk_and_the_chunk_replaces_it() -> None:
    shard = plain_shard()
    applied = feed_all(
        shard,
        [
            piece(0, 0, 2, A0, [1, 2]),
            seal(0, 0, 2, 100.0, 1, rejected={"late": 1}),
            seal(1, 0, 0, None, 0, tail=True, caught_up=True),
            piece(0, 2, 3, A60, [3], attempt="x"),
            seal(0, 2, 3, 100.0, 1, tail=True, caught_up=True, rejected={"bad_json": 1}),
            piece(0, 2, 4, A60, [3, 4]),
            seal(0, 2, 4, 110.0, 1, tail=True, caught_up=True, rejected={"bad_json": 1}),
        ],
    )
    assert (applied.merged, applied.duplicate) == (3, 0)
    assert dict(applied.events) == {"a": 4}  # the second tail adds only its new event
    assert dict(applied.rejected) == {"late": 1, "bad_json": 1}
    complete, _, _ = shard.due()
    assert ids_of(complete) == {A0: [1, 2]}  # all caught up: the watermark is the largest
    applied = feed_all(
        shard,
        [piece(0, 2, 5, A60, [3, 4, 5]), seal(0, 2, 5, 190.0, 1, rejected={"bad_json": 2})],
        first=7,
    )
    assert dict(applied.events) == {"a": 1} and dict(applied.rejected) == {"bad_json": 1}
    assert shard.watermark() == 190.0  # P0 lags at its chunk's end, P1 is caught up
    complete, _, _ = shard.due()
    assert ids_of(complete) == {A60: [3, 4, 5]}


def test_events_a_chunk_adds_to_a_window_closed_with_its_tail_are_late() -> None:
    """The single process's rule: a caught-up partition does not hold time back, so its events
    read after a window closed are late, counted once."""
    shard = plain_shard()
    feed_all(
        shard,
        [
            piece(0, 0, 2, A0, [1]),
            seal(0, 0, 2, 10.0, 1, tail=True, caught_up=True),
            seal(1, 0, 3, 200.0, 0, tail=True, caught_up=True),
        ],
    )
    complete, _, _ = shard.due()
    assert ids_of(complete) == {A0: [1]}
    applied = feed_all(
        shard,
        [
            piece(0, 0, 3, A0, [1, 2]),
            seal(0, 0, 3, 20.0, 1, tail=True, caught_up=True),  # a closed window's: ignored
            piece(0, 0, 5, A0, [1, 2, 3]),
            seal(0, 0, 5, 70.0, 1),
        ],
        first=3,
    )
    assert dict(applied.late) == {"a": 2} and +applied.events == Counter()
    assert shard.open_windows == 0 and shard.pending == 0


def test_events_a_final_tail_adds_to_a_closed_window_are_late() -> None:
    """A bounded run (``--until-end``) ends each partition with a final tail, which no chunk
    follows: its events for a window closed already are late at once, not left waiting."""
    shard = plain_shard()
    feed_all(
        shard,
        [
            piece(0, 0, 1, A0, [1]),
            seal(0, 0, 1, 0.0, 1, tail=True, caught_up=True),
            seal(1, 0, 4, 1000.0, 0, tail=True, caught_up=True, final=True),
        ],
    )
    complete, _, _ = shard.due()
    assert ids_of(complete) == {A0: [1]}
    applied = feed_all(
        shard,
        [piece(0, 0, 5, A0, [1, 2, 3, 4, 5]), seal(0, 0, 5, 0.0, 1, tail=True, final=True)],
        first=3,
    )
    assert dict(applied.late) == {"a": 4} and +applied.events == Counter()
    assert shard.open_windows == 0 and shard.pending == 0


def test_a_gap_waits_for_the_chunk_before_it_and_holds_the_commit() -> None:
    """A chunk that comes before the one it follows (the collector's publication of the first
    failed, was retried, and came after) waits; its pieces and seal hold the commit."""
    shard = plain_shard()
    messages = [
        piece(0, 0, 2, A0, [1]),
        seal(0, 0, 2, 70.0, 1),
        seal(1, 0, 9, 500.0, 0),
        piece(0, 3, 5, A60, [4]),
        seal(0, 3, 5, 130.0, 1),  # [2, 3) is missing
    ]
    feed_all(shard, messages)
    assert shard.watermark() == 70.0
    assert ids_of(shard.due()[0]) == {A0: [1]}
    assert shard.commit_offset() == 3  # the waiting piece
    assert not shard.covered({(TOPIC, 0): 5, (TOPIC, 1): 9})
    feed_all(shard, [piece(0, 2, 3, A60, [3]), seal(0, 2, 3, 100.0, 1)], first=5)
    assert shard.watermark() == 130.0
    assert ids_of(shard.due()[0]) == {A60: [3, 4]}
    assert shard.commit_offset() == 7
    assert shard.covered({(TOPIC, 0): 5, (TOPIC, 1): 9})


# --- bugs found (see the reasons) -----------------------------------------------------------


def test_a_gap_is_waited_for_before_the_partition_has_a_piece_here() -> None:
    """P0's first chunk has no piece on this shard (its events are of models elsewhere); its
    second chunk's publication failed and was retried after the third's."""
    shard = plain_shard()
    messages = [
        seal(0, 0, 2, 70.0, 0),  # only model "c" events: no piece here
        seal(1, 0, 9, 500.0, 0),
        piece(0, 3, 5, A60, [4]),
        seal(0, 3, 5, 130.0, 1),  # [2, 3) was refused once, is published again below
        piece(0, 2, 3, A60, [3]),
        seal(0, 2, 3, 100.0, 1),
    ]
    applied = feed_all(shard, messages)
    complete, _, _ = shard.due()
    assert applied.duplicate == 0
    assert ids_of(complete) == {A60: [3, 4]}


def test_a_window_the_watermark_has_passed_takes_no_new_events() -> None:
    shard = plain_shard()
    feed_all(
        shard,
        [
            piece(0, 0, 3, A0, [1]),
            piece(0, 0, 3, A60, [2]),
            seal(0, 0, 3, 130.0, 2),
            seal(0, 3, 3, 130.0, 0, tail=True, caught_up=True),
            piece(1, 0, 1, A0, [100]),
            seal(1, 0, 1, 10.0, 1, tail=True, caught_up=True),
        ],
    )
    complete, _, _ = shard.due()  # all caught up: the largest watermark, 130
    assert ids_of(complete) == {A0: [1, 100], A60: [2]}
    # P1 (caught up, its own watermark 30) reads an event of [0, 60) of model b: in the single
    # process, window [0, 60) is closed (closed_through = 120), so the event is late.
    applied = feed_all(
        shard,
        [
            piece(1, 0, 2, A0, [100]),
            piece(1, 0, 2, B0, [101]),
            seal(1, 0, 2, 30.0, 2, tail=True, caught_up=True),
        ],
        first=6,
    )
    complete, _, more = shard.due()
    applied.add(more)
    assert [w.key for w in complete] == []  # not b/0 (end 60) after a/60 (end 120)
    # (its event is late once P1's chunk comes; the tail alone is not counted)


class FakeFuture:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def succeeded(self) -> bool:
        return self.ok


class FakeProducer:
    """One profiles partition; ``fail(number, value)`` says which sends fail (by their
    number over the producer's life)."""

    def __init__(self, fail: Callable[[int, bytes], bool]) -> None:
        self.fail = fail
        self.sent = 0
        self.log: list[bytes] = []

    def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int = 0):
        failed = self.fail(self.sent, value)
        self.sent += 1
        if not failed:
            self.log.append(value)
        return FakeFuture(not failed)

    def flush(self, timeout: float | None = None) -> None:
        """Nothing to wait for: every send above is settled when it returns."""


def three_chunks() -> list[Chunk[Ids]]:
    """[0, 3) with a/0 (ids 1, 2) and a/60 (3); [3, 4) with a/120 (4); [4, 5) with a/180 (5)."""
    store = new_store(60, 0.0)
    source = (TOPIC, 0)
    store.assign(source, None)
    times = [10.0, 20.0, 70.0, 130.0, 190.0]
    records = [Record(i, t, i + 1) for i, t in enumerate(times)]
    store.add(source, groups_of(records), rejects=[])
    store.advance(source, 5, caught_up=False)
    chunks = store.sealed()
    assert [(c.start, c.end) for c in chunks] == [(0, 3), (3, 4), (4, 5)]
    return chunks


WINDOWS = {
    A0: [1, 2],
    A60: [3],
    WindowKey("a", NONE, 120): [4],
    WindowKey("a", NONE, 180): [5],
}


def evaluate(log: Sequence[bytes]) -> tuple[dict[WindowKey, list[int]], Applied]:
    """What a shard that reads the profiles partition from its start emits, all in the end."""
    shard = Shard(
        topics=[TOPIC],
        window_seconds=60,
        lateness_s=0.0,
        read=cast(Any, Ids.from_bytes),
        persisted=set(),
        counts_rejects=lambda source: True,
    )
    applied = feed_all(shard, [decode(v) for v in log])
    complete, _, more = shard.due(everything=True)
    applied.add(more)
    return ids_of(complete), applied


def publisher(producer: FakeProducer) -> Publisher:
    return Publisher(lambda: cast(Any, producer), "profiles")


def test_a_chunk_published_again_after_a_failure_counts_once() -> None:
    """The whole publication of [3, 4) failed, [4, 5)'s went out: the shard waits for the copy
    published on the next turn."""
    chunks = three_chunks()
    producer = FakeProducer(lambda number, value: number in (3, 4))  # [3, 4)'s piece and seal
    out = publisher(producer)
    assert out.publish(cast(Any, chunks), final=False) == [chunks[0], chunks[2]]
    assert out.publish(cast(Any, chunks[1:2]), final=False) == [chunks[1]]
    windows, applied = evaluate(producer.log)
    assert windows == WINDOWS
    assert (applied.merged, applied.duplicate) == (4, 0)


def test_a_first_chunk_published_again_after_a_failure_counts() -> None:
    chunks = three_chunks()
    producer = FakeProducer(lambda number, value: number < 3)  # [0, 3)'s pieces and seal
    out = publisher(producer)
    assert out.publish(cast(Any, chunks), final=False) == chunks[1:]
    assert out.publish(cast(Any, chunks[:1]), final=False) == chunks[:1]
    windows, _ = evaluate(producer.log)
    assert windows == WINDOWS


def test_a_chunk_whose_seal_failed_is_applied_once_when_published_again() -> None:
    chunks = three_chunks()
    producer = FakeProducer(lambda number, value: number == 2)  # [0, 3)'s seal only
    out = publisher(producer)
    assert out.publish(cast(Any, chunks[:1]), final=False) == []
    assert out.publish(cast(Any, chunks), final=False) == chunks
    windows, _ = evaluate(producer.log)
    assert windows == WINDOWS


def test_a_chunk_whose_piece_failed_is_applied_whole_when_published_again() -> None:
    chunks = three_chunks()
    producer = FakeProducer(lambda number, value: number == 0)  # [0, 3)'s first piece only
    out = publisher(producer)
    assert out.publish(cast(Any, chunks[:1]), final=False) == []
    assert out.publish(cast(Any, chunks), final=False) == chunks
    windows, _ = evaluate(producer.log)
    assert windows == WINDOWS
