"""WindowStore: closing order, lateness, skip rules, commit offsets, revocation, pausing, and
exactly-once accounting across simulated SIGKILLs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from agent.checkpoint import Checkpoint
from agent.durations import parse_duration
from agent.window_caps import Caps
from agent.windows import AddResult, ClosedWindow, WindowKey, WindowStore
from exporters.records import SegmentKey
from sketches.batch import EventBatch

P0 = ("events", 0)
P1 = ("events", 1)
MINUTE = timedelta(minutes=1)

NONE = SegmentKey()  # the segment of events without one


@dataclass
class IdProfile:
    """Counts events and remembers which: row ids ride in the first embedding column."""

    ids: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.ids)

    def update(self, batch: EventBatch) -> None:
        self.ids.extend(int(i) for i in batch.embeddings[:, 0])

    def merge(self, other: IdProfile) -> IdProfile:
        return IdProfile(self.ids + other.ids)


def rows(times: list[float], ids: list[int] | None = None) -> EventBatch:
    ids = list(range(len(times))) if ids is None else ids
    return EventBatch(np.array([[i] for i in ids], np.float32).reshape(-1, 1), np.array(times))


def store(**kwargs: object) -> WindowStore[IdProfile, EventBatch]:
    options: dict[str, object] = {"window": MINUTE, "factory": lambda key: IdProfile()}
    options.update(kwargs)
    return WindowStore(**options)  # type: ignore[arg-type]


def feed(
    s: WindowStore[IdProfile, EventBatch],
    partition: tuple[str, int],
    times: list[float],
    first_offset: int,
    *,
    model: str = "m",
    caught_up: bool = False,
) -> AddResult:
    offsets = list(range(first_offset, first_offset + len(times)))
    result = s.add(partition, model, NONE, rows(times, offsets), offsets)
    s.advance(partition, first_offset + len(times), caught_up=caught_up)
    return result


def summary(windows: list[ClosedWindow[IdProfile]]) -> list[tuple[str, int, list[int]]]:
    return [(w.key.model, w.key.start, sorted(w.profile.ids)) for w in windows]


def test_parse_duration() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("5m") == timedelta(minutes=5)
    assert parse_duration("1h") == timedelta(hours=1)
    assert parse_duration("1d") == timedelta(days=1)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    assert parse_duration("0") == timedelta(0)
    for bad in ("", "5", "1y", "-1s", "1 day", "m5"):
        with pytest.raises(ValueError, match="cannot read duration"):
            parse_duration(bad)


def test_window_must_be_whole_seconds() -> None:
    with pytest.raises(ValueError, match="whole number of seconds"):
        store(window=timedelta(milliseconds=1500))


def test_windows_close_in_time_order_merging_partitions() -> None:
    s = store()
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [5, 70, 130], 0)
    assert s.close_ready() == []  # P1 has shown no event time yet: no watermark
    feed(s, P1, [10, 65], 0, model="n")
    feed(s, P1, [125], 2, model="n")
    closed = s.close_ready()  # watermark = min(130, 125)
    assert summary(closed) == [("m", 0, [0]), ("n", 0, [0]), ("m", 60, [1]), ("n", 60, [1])]
    assert s.closed_through == 120
    assert [w.start_time for w in closed[:1]] == [datetime(1970, 1, 1, tzinfo=UTC)]
    assert closed[0].end_time == datetime(1970, 1, 1, 0, 1, tzinfo=UTC)
    assert closed[0].events == 1
    feed(s, P0, [131], 3, caught_up=True)
    feed(s, P1, [170, 185], 3, model="n", caught_up=True)
    # all caught up: the watermark is the largest, 185
    assert summary(s.close_ready()) == [("m", 120, [2, 3]), ("n", 120, [2, 3])]
    assert summary(s.close_all()) == [("n", 180, [4])]
    assert s.closed_through == 240
    assert s.open_windows == 0


def test_lateness_delays_closing_and_late_events_are_counted_not_added() -> None:
    s = store(lateness=timedelta(seconds=30))
    s.assign(P0, None)
    feed(s, P0, [10, 75], 0)
    assert s.close_ready() == []  # 75 < 60 + 30
    assert feed(s, P0, [50], 2) == AddResult(added=1)  # window [0, 60) still open
    feed(s, P0, [95], 3)
    assert summary(s.close_ready()) == [("m", 0, [0, 2])]
    assert feed(s, P0, [59, 61], 4) == AddResult(added=1, late=1)
    assert summary(s.close_all()) == [("m", 60, [1, 3, 5])]


def test_caught_up_partition_does_not_hold_the_watermark_back() -> None:
    s = store()
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [5], 0, caught_up=True)
    s.advance(P1, 0, caught_up=False)
    assert s.watermark() is None  # P1 has a backlog but no event time yet
    feed(s, P1, [200], 0)
    assert s.watermark() == 200
    assert summary(s.close_ready()) == [("m", 0, [0])]
    assert feed(s, P0, [100], 1) == AddResult(late=1)  # P0 did not hold time back


def test_commit_offsets_hold_back_to_open_windows() -> None:
    s = store(lateness=timedelta(minutes=2))
    s.assign(P0, Checkpoint(0, None))
    s.assign(P1, None)
    assert s.commit_offsets() == {}  # no position known yet
    feed(s, P0, [10, 130, 20, 80], 0)
    feed(s, P1, [], 0, caught_up=True)
    assert s.commit_offsets() == {P0: Checkpoint(0, None), P1: Checkpoint(0, None)}
    feed(s, P0, [125], 4)
    assert s.close_ready() == []  # 130 < 60 + 120
    feed(s, P0, [250], 5)
    assert summary(s.close_ready()) == [("m", 0, [0, 2]), ("m", 60, [3])]
    assert s.commit_offsets()[P0] == Checkpoint(1, 120)  # offset 1 (t=130) is still open
    feed(s, P0, [310], 6)
    s.close_ready()
    assert s.commit_offsets()[P0] == Checkpoint(5, 180)
    s.close_all()
    assert s.commit_offsets() == {P0: Checkpoint(7, 360), P1: Checkpoint(0, 360)}
    assert Checkpoint.parse(7, s.commit_offsets()[P0].metadata()) == Checkpoint(7, 360)


def test_restart_skips_windows_before_the_checkpoint_and_in_the_ledger() -> None:
    s = store(persisted=[WindowKey.of("m", NONE, datetime(1970, 1, 1, 0, 2, tzinfo=UTC))])
    s.assign(P0, Checkpoint(0, 60))
    result = feed(s, P0, [10, 59, 61, 125, 130, 190], 0)
    assert result == AddResult(added=2, skipped=4)  # [0, 60) by T, [120, 180) by the ledger
    assert summary(s.close_all()) == [("m", 60, [2]), ("m", 180, [5])]
    with pytest.raises(ValueError, match="timezone-aware"):
        WindowKey.of("m", NONE, datetime(1970, 1, 1))


def test_revoke_drops_state_and_reread_of_closed_windows_is_skipped_not_late() -> None:
    s = store(revoked_hold_s=0)  # P0 is gone for good: windows close without it
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [10, 70], 0)
    feed(s, P1, [20, 130], 0)
    assert summary(s.close_ready()) == [("m", 0, [0, 0])]
    s.revoke([P0])
    assert s.partitions == {P1}
    with pytest.raises(ValueError, match="not assigned"):
        feed(s, P0, [80], 2)
    feed(s, P1, [135], 2, caught_up=True)
    assert s.close_ready() == []  # [60, 120) closes without P0's dropped event
    assert s.closed_through == 120
    s.assign(P0, Checkpoint(0, None))  # back again, re-read from the committed offset
    with pytest.raises(ValueError, match="already assigned"):
        s.assign(P0, None)
    # t=10 was in the persisted [0, 60): skipped; t=70 was dropped and missed its window:
    # late; both were counted before the revocation, so they count as read again only.
    assert feed(s, P0, [10, 70, 140], 0) == AddResult(added=1, again=2)
    assert feed(s, P0, [30], 3) == AddResult(late=1)  # never read before: late
    assert summary(s.close_all()) == [("m", 120, [1, 2, 2])]


def test_a_partition_revoked_for_a_moment_finds_its_windows_open() -> None:
    now = [0.0]
    s = store(revoked_hold_s=30, timer=lambda: now[0])
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [10, 300], 0)  # P0 runs ahead
    feed(s, P1, [20, 70], 0)  # P1 holds [0, 60) and [60, 120) open
    assert summary(s.close_ready()) == [("m", 0, [0, 0])]
    s.revoke([P1])  # a member joins for a moment and takes P1
    feed(s, P0, [400], 2)
    assert s.close_ready() == []  # P1's open [60, 120) holds the watermark at 60
    s.assign(P1, Checkpoint(1, 60))
    assert feed(s, P1, [70, 80, 200], 1) == AddResult(added=2, again=1)  # none late
    now[0] = 100.0  # long gone now, and held no more: only P0 and P1's new state count
    feed(s, P1, [420], 4)
    assert summary(s.close_ready()) == [("m", 60, [1, 2]), ("m", 180, [3]), ("m", 300, [1])]
    s.revoke([P1])  # held at 420, where its open [420, 480) starts
    feed(s, P0, [500], 3)
    assert summary(s.close_ready()) == [("m", 360, [2])]
    now[0] = 131.0  # P1's hold expired: windows close without it
    assert summary(s.close_ready()) == []  # [420, 480) was P1's alone, dropped
    assert s.closed_through == 480


def test_revoked_partition_never_reaches_a_closed_window() -> None:
    s = store()
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [10, 20], 0, caught_up=True)
    feed(s, P1, [30], 0)
    s.revoke([P1])
    closed = s.close_all()
    assert summary(closed) == [("m", 0, [0, 1])]


def test_partition_far_ahead_is_paused_until_the_watermark_catches_up() -> None:
    s = store(max_windows_ahead=2)
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [0], 0)
    feed(s, P1, [0, 60, 120], 0)
    assert s.paused_partitions() == frozenset()  # 120 <= 0 + 2 windows
    feed(s, P1, [121], 3)
    assert s.paused_partitions() == {P1}
    p2 = ("events", 2)
    s.assign(p2, None)  # no event time yet: the watermark is unknown, P1 stays paused
    assert s.paused_partitions() == {P1}
    s.revoke([p2])
    feed(s, P0, [0.5], 1)
    assert s.paused_partitions() == {P1}
    feed(s, P0, [61], 2)
    assert s.paused_partitions() == frozenset()
    s.close_ready()
    assert s.open_windows == 2  # [60, 120) and [120, 180)


def test_a_paused_partition_assigned_again_reads_and_windows_close_again() -> None:
    s = store(max_windows_ahead=1, revoked_hold_s=0)  # revoked state is dropped at once
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [0], 0)
    feed(s, P1, [0, 60, 130], 0)
    assert s.paused_partitions() == {P1}
    s.revoke([P0, P1])  # a rebalance revokes everything, then assigns it back
    s.assign(P0, None)
    s.assign(P1, None)
    assert s.paused_partitions() == frozenset()  # P1 must read to show its event time again
    feed(s, P1, [0, 60, 130], 0)
    feed(s, P0, [0, 125], 0)
    assert summary(s.close_ready()) == [("m", 0, [0, 0]), ("m", 60, [1])]


def test_a_partition_back_within_the_hold_gets_its_state_and_pause_back() -> None:
    s = store(max_windows_ahead=1)
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [0], 0)
    feed(s, P1, [0, 60, 130], 0)
    assert s.paused_partitions() == {P1}
    s.revoke([P0, P1])  # an eager rebalance revokes everything, then assigns it back
    s.assign(P0, Checkpoint(0))
    s.assign(P1, Checkpoint(0))
    assert s.paused_partitions() == {P1}  # its event time is known: still far ahead
    assert feed(s, P1, [0, 60, 130], 0) == AddResult(again=3)  # all accounted for already
    assert feed(s, P0, [0, 125], 0) == AddResult(added=1, again=1)
    assert summary(s.close_ready()) == [("m", 0, [0, 0]), ("m", 60, [1])]


def test_a_checkpoint_past_the_stores_own_means_someone_else_moved_on() -> None:
    s = store()
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [10], 0)
    feed(s, P1, [20, 30], 0)
    s.revoke([P1])
    s.assign(P1, Checkpoint(2, 60))  # another member read P1 on and persisted [0, 60)
    assert s.open_windows == 1  # P0's part only: P1's was dropped
    assert feed(s, P1, [40, 70], 2) == AddResult(added=1, late=0, skipped=1)
    feed(s, P0, [80], 1, caught_up=True)
    assert summary(s.close_ready()) == [("m", 0, [0])]


def test_a_revoked_partitions_due_window_waits_for_it_in_time_order() -> None:
    s = store()
    s.assign(P0, None)
    s.assign(P1, None)
    feed(s, P0, [10, 70, 130], 0, caught_up=True)
    feed(s, P1, [15, 75], 0, caught_up=True)
    assert summary(s.close_ready(limit=1)) == [("m", 0, [0, 0])]  # [60, 120) due, left
    s.revoke([P1])
    assert s.close_ready() == []  # P1 has a part in [60, 120): it waits, in order
    assert s.commit_offsets()[P0] == Checkpoint(1, 60)
    s.assign(P1, Checkpoint(1, 60))
    assert feed(s, P1, [75], 1, caught_up=True) == AddResult(again=1)
    assert summary(s.close_ready()) == [("m", 60, [1, 1])]


def test_processing_time_windows_by_the_clock() -> None:
    now = [1000.0]
    s = store(time_mode="processing", clock=lambda: now[0])
    s.assign(P0, None)
    assert feed(s, P0, [5, 6], 0) == AddResult(added=2)  # event times ignored
    assert s.close_ready() == []
    now[0] = 1021.0
    feed(s, P0, [7], 2)
    assert summary(s.close_ready()) == [("m", 960, [0, 1])]
    assert s.paused_partitions() == frozenset()
    assert summary(s.close_all()) == [("m", 1020, [2])]


# --- exactly once across SIGKILLs -------------------------------------------------------


class Killed(Exception):
    """The simulated SIGKILL."""


Logs = dict[tuple[str, int], list[tuple[int, float, str]]]  # (id, event time, model)


@dataclass
class World:
    """What survives a SIGKILL: the persisted windows and the committed offsets."""

    logs: Logs
    keep_metadata: bool
    persisted: list[ClosedWindow[IdProfile]] = field(default_factory=list)
    committed: dict[tuple[str, int], tuple[int, str | None]] = field(default_factory=dict)
    late: int = 0


def run_until_killed(world: World, fuse: int, rng: random.Random) -> bool:
    """One agent life: True when it consumed everything, False when SIGKILLed after ``fuse`` steps."""

    def step() -> None:
        nonlocal fuse
        fuse -= 1
        if fuse < 0:
            raise Killed

    s = store(lateness=timedelta(seconds=20), persisted=[w.key for w in world.persisted])
    positions = {}
    for tp in world.logs:
        s.assign(tp, Checkpoint.from_committed(world.committed.get(tp)))
        positions[tp] = world.committed.get(tp, (0, None))[0]

    def persist_and_commit(closed: list[ClosedWindow[IdProfile]]) -> None:
        for window in closed:
            world.persisted.append(window)
            step()
        for tp, c in s.commit_offsets().items():  # a kill may land between partitions
            world.committed[tp] = (c.offset, c.metadata() if world.keep_metadata else None)
            step()

    try:
        paused: frozenset[tuple[str, int]] = frozenset()
        while True:
            for tp, log in world.logs.items():
                if tp in paused:
                    continue
                chunk = log[positions[tp] : positions[tp] + rng.randint(1, 7)]
                groups = []
                for model in ("a", "b"):  # one poll's rows, grouped by model as decode does
                    picked = [(positions[tp] + i, e) for i, e in enumerate(chunk) if e[2] == model]
                    if picked:
                        batch = rows([e[1] for _, e in picked], [e[0] for _, e in picked])
                        groups.append((model, NONE, batch, [o for o, _ in picked]))
                world.late += sum(r.late for r in s.add_groups(tp, groups))
                positions[tp] += len(chunk)
            for tp, log in world.logs.items():
                s.advance(tp, positions[tp], caught_up=positions[tp] == len(log))
            step()
            persist_and_commit(s.close_ready())
            paused = s.paused_partitions()
            if all(positions[tp] == len(log) for tp, log in world.logs.items()):
                persist_and_commit(s.close_all())
                return True
    except Killed:
        return False


def make_logs(rng: random.Random, late_every: int) -> tuple[Logs, set[int]]:
    """Three partitions of 150 events; every ``late_every``-th falls far behind (may be late)."""
    logs: Logs = {}
    behind: set[int] = set()
    next_id = 0
    for p in range(3):
        t = p * 250 + rng.uniform(0, 100)  # later partitions start windows ahead
        log = []
        for i in range(150):
            t += rng.uniform(0, 6)
            when = t - rng.uniform(0, 15)  # disorder within the lateness
            if late_every and i % late_every == late_every - 1:
                when = t - rng.uniform(100, 300)
                behind.add(next_id)
            log.append((next_id, max(when, 0.0), rng.choice("ab")))
            next_id += 1
        logs[("events", p)] = log
    return logs, behind


def survive(world: World, rng: random.Random) -> list[int]:
    """Kill and restart the agent until it consumed everything; the ids in persisted windows."""
    lives = 1
    while not run_until_killed(world, rng.randint(0, 80), rng):
        lives += 1
        assert lives < 1000, "no progress across restarts"
    keys = [w.key for w in world.persisted]
    assert len(keys) == len(set(keys)), "a window was persisted twice"
    counted = [i for w in world.persisted for i in w.profile.ids]
    assert len(counted) == len(set(counted)), "an event was counted twice"
    return counted


@pytest.mark.parametrize("keep_metadata", [True, False], ids=["metadata", "no-metadata"])
@pytest.mark.parametrize("seed", range(12))
def test_sigkill_at_any_step_neither_loses_nor_double_counts(
    seed: int, keep_metadata: bool
) -> None:
    rng = random.Random(seed)
    logs, _ = make_logs(rng, late_every=0)
    world = World(logs, keep_metadata)
    assert sorted(survive(world, rng)) == list(range(450)), "an event was lost"
    assert world.late == 0


@pytest.mark.parametrize("keep_metadata", [True, False], ids=["metadata", "no-metadata"])
@pytest.mark.parametrize("seed", range(6))
def test_sigkill_with_late_events_loses_only_late_ones(seed: int, keep_metadata: bool) -> None:
    rng = random.Random(1000 + seed)
    logs, behind = make_logs(rng, late_every=10)
    world = World(logs, keep_metadata)
    counted = set(survive(world, rng))
    assert set(range(450)) - behind <= counted, "an event that was not late was lost"
    missing = behind - counted
    assert missing, "the scenario should produce late events"
    assert world.late > 0


def test_caps_fold_models_and_segments_and_refuse_windows_in_the_window_state() -> None:
    s = store(caps=Caps(max_models=2, max_segments=2, max_windows=5))
    s.assign(P0, None)
    for i, model in enumerate(["a", "b", "c", "d"]):
        result = s.add(P0, model, NONE, rows([10.0], [i]), [i])
        assert result == (AddResult(added=1) if i < 2 else AddResult(added=1, folded=1))
    eu, us = SegmentKey.of({"region": "eu"}), SegmentKey.of({"region": "us"})
    assert s.add(P0, "a", eu, rows([20.0], [4]), [4]) == AddResult(added=1)
    assert s.add(P0, "a", us, rows([30.0], [5]), [5]) == AddResult(added=1, folded=1)
    assert s.open_windows == 5  # a, b, other; a/region=eu, a/region=other
    assert s.add(P0, "a", NONE, rows([70.0], [6]), [6]) == AddResult(refused=1)  # a 6th window
    s.advance(P0, 7, caught_up=True)
    closed = {(w.key.model, w.key.segment.label): sorted(w.profile.ids) for w in s.close_all()}
    assert closed == {
        ("a", ""): [0],
        ("b", ""): [1],
        ("other", ""): [2, 3],
        ("a", "region=eu"): [4],
        ("a", "region=other"): [5],
    }
    assert s.open_windows == 0  # closing frees the caps
    assert s.add(P0, "c", NONE, rows([130.0], [7]), [7]) == AddResult(added=1)


def test_closing_in_chunks_commits_only_what_is_persisted() -> None:
    s = store()
    s.assign(P0, None)
    feed(s, P0, [10, 70, 130, 190], 0, caught_up=True)
    first = s.close_ready(limit=2)
    assert summary(first) == [("m", 0, [0]), ("m", 60, [1])]
    assert s.closed_through == 180  # [120, 180) is due, not yet out: not committed past
    assert s.commit_offsets()[P0] == Checkpoint(2, 120)
    assert feed(s, P0, [150], 4) == AddResult(late=1)  # due windows take no new events
    assert summary(s.close_ready(limit=2)) == [("m", 120, [2])]
    assert s.commit_offsets()[P0] == Checkpoint(3, 180)


def test_a_window_that_failed_to_persist_is_held_and_holds_its_commit() -> None:
    s = store()
    s.assign(P0, None)
    feed(s, P0, [10, 70, 130], 0, caught_up=True)
    failed, _ = s.close_ready()
    s.hold([failed])
    assert s.held == 1
    assert s.commit_offsets()[P0] == Checkpoint(0, 0)  # [0, 60) is not persisted yet
    assert summary(s.take_held()) == [("m", 0, [0])]
    assert s.commit_offsets()[P0] == Checkpoint(2, 120)
