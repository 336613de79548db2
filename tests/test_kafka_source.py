"""KafkaSource against a real broker (Tansu unless KAFKA_BOOTSTRAP_SERVERS is set): group join,
commits with metadata, lag, end offsets, pause/resume, rebalances."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaTimeoutError

from agent import kafka_compat
from agent.checkpoint import Checkpoint
from agent.kafka_source import KafkaSettings, KafkaSource, _changes
from agent.source import Poll, RawRecord
from demo.broker import BrokerStartError, EmbeddedBroker, create_topic
from tests.broker import new_topic, produce

pytestmark = pytest.mark.kafka

JOIN_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def on_tansu(kafka_bootstrap: str) -> bool:
    """Whether the broker is Tansu (its default cluster id), whose quirks some tests pin."""
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        return bool(admin.describe_cluster()["cluster_id"] == "tansu_cluster")
    finally:
        admin.close()


def settings(bootstrap: str, topic: str, group: str | None = None, **kw: object) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        topics=[topic],
        group_id=group or f"g-{uuid.uuid4().hex[:8]}",
        **kw,  # type: ignore[arg-type]
    )


def poll_until(
    source: KafkaSource, done: Callable[[list[Poll]], bool], timeout_s: float = JOIN_TIMEOUT_S
) -> list[Poll]:
    """Poll until ``done(polls so far)``; fails after ``timeout_s`` instead of hanging."""
    polls: list[Poll] = []
    deadline = time.monotonic() + timeout_s
    while not done(polls):
        assert time.monotonic() < deadline, f"condition not met in {timeout_s} s: {polls}"
        polls.append(source.poll(timeout_ms=200))
    return polls


def records(polls: list[Poll]) -> list[RawRecord]:
    return [r for p in polls for r in p.records]


def test_changes_keep_only_partitions_whose_position_survived() -> None:
    a, b, c = (TopicPartition("t", i) for i in range(3))

    def changes(
        before: set[TopicPartition], *events: tuple[str, set[TopicPartition]]
    ) -> tuple[set[TopicPartition], set[TopicPartition]]:
        final = frozenset(events[-1][1])
        revoked, fresh = _changes(frozenset(before), [(k, frozenset(p)) for k, p in events], final)
        return set(revoked), set(fresh)

    # initial join
    assert changes(set(), ("revoked", set()), ("assigned", {a, b})) == (set(), {a, b})
    # eager rebalance: all revoked first, a given back with its position kept
    assert changes({a, b}, ("revoked", {a, b}), ("assigned", {a, c})) == ({b}, {c})
    # eviction: lost partitions restart from the committed offset even if given back
    assert changes({a, b}, ("lost", {a, b}), ("assigned", {a, b})) == ({a, b}, {a, b})
    # two generations in one poll: a left, then came back with fresh state
    events = [("revoked", {a}), ("assigned", set()), ("revoked", set()), ("assigned", {a})]
    assert changes({a}, *events) == ({a}, {a})


def test_group_join_records_and_commit_metadata_round_trip(
    kafka_bootstrap: str, on_tansu: bool
) -> None:
    topic = new_topic(kafka_bootstrap, 2)
    produce(kafka_bootstrap, topic, [(i % 2, b"v%d" % i, 1_000 + i) for i in range(10)])
    cfg = settings(kafka_bootstrap, topic)
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    started = time.monotonic()
    with KafkaSource(cfg) as source:
        polls = poll_until(source, lambda ps: len(records(ps)) == 10)
        joined_s = time.monotonic() - started
        assert joined_s < 10, f"group join took {joined_s:.1f} s"
        assert source.assignment() == {p0, p1}
        assigned = {tp: c for p in polls for tp, c in p.assigned.items()}
        assert assigned == {p0: None, p1: None}  # never committed
        got = sorted(records(polls), key=lambda r: (r.partition, r.offset))
        assert got[0] == RawRecord(b"v0", 1_000, 0, 0, topic)
        assert [(r.partition, r.offset) for r in got] == [(p, o) for p in (0, 1) for o in range(5)]
        meta = Checkpoint(3, 1_700_000_000).metadata()
        assert source.commit({p0: Checkpoint(3, 1_700_000_000), p1: Checkpoint(5)})
        offset, stored = source.committed(p0) or (None, None)
        assert offset == 3
        assert stored == (None if on_tansu else meta)  # Tansu 0.6 does not keep metadata
        assert Checkpoint.from_committed(source.committed(p0)) == Checkpoint(
            3, None if on_tansu else 1_700_000_000
        )
    with KafkaSource(cfg) as again:  # a restart resumes from the commit
        polls = poll_until(again, lambda ps: len(records(ps)) == 2)
        assert {tp: c and c.offset for p in polls for tp, c in p.assigned.items()} == {p0: 3, p1: 5}
        assert [(r.partition, r.offset) for r in records(polls)] == [(0, 3), (0, 4)]


def test_progress_gives_lag_from_the_high_watermark(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, 1)
    tp = TopicPartition(topic, 0)
    produce(kafka_bootstrap, topic, [(0, b"x", None)] * 3)
    with KafkaSource(settings(kafka_bootstrap, topic, max_poll_records=2), idle_ms=0) as source:
        poll_until(source, lambda ps: len(records(ps)) == 3)
        progress = source.progress()[tp]
        assert (progress.position, progress.highwater, progress.lag) == (3, 3, 0)
        assert progress.caught_up
        produce(kafka_bootstrap, topic, [(0, b"y", None)] * 5)
        polls = poll_until(source, lambda ps: len(records(ps)) > 0)
        progress = source.progress()[tp]
        assert progress.highwater == 8
        assert progress.lag == 8 - progress.position == 8 - 3 - len(records(polls))
        assert not progress.caught_up


def test_a_partition_is_caught_up_only_after_idling_at_its_end(kafka_bootstrap: str) -> None:
    """Its high watermark may be stale (buffered records, a fetch in flight) until then."""
    topic = new_topic(kafka_bootstrap, 1)
    tp = TopicPartition(topic, 0)
    produce(kafka_bootstrap, topic, [(0, b"x", None)] * 3)
    with KafkaSource(settings(kafka_bootstrap, topic), idle_ms=60_000) as source:
        poll_until(source, lambda ps: len(records(ps)) == 3)
        progress = source.progress()[tp]
        assert progress.lag == 0
        assert not progress.caught_up


def test_end_offsets_are_exact_with_multi_record_batches(
    kafka_bootstrap: str, on_tansu: bool
) -> None:
    topic = new_topic(kafka_bootstrap, 2)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    produce(kafka_bootstrap, topic, [(0, b"a", None)] * 7 + [(1, b"b", None)] * 4)
    produce(kafka_bootstrap, topic, [(1, b"c", None)], batch=False)
    if on_tansu:  # the reason end_offsets() also fetches: ListOffsets falls short on Tansu
        raw = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
        try:
            listed = raw.end_offsets(tps)
        finally:
            raw.close()
        assert listed[tps[0]] < 7
    with KafkaSource(settings(kafka_bootstrap, topic)) as source:
        assert source.end_offsets() == {tps[0]: 7, tps[1]: 5}
        assert source.end_offsets([tps[1]]) == {tps[1]: 5}


def test_until_end_stops_at_the_end_offsets_seen_at_start(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, 2)
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    produce(kafka_bootstrap, topic, [(i % 2, b"old", None) for i in range(7)])
    with KafkaSource(settings(kafka_bootstrap, topic), until_end=True) as source:
        assert source.stop_offsets == {tps[0]: 4, tps[1]: 3}
        produce(kafka_bootstrap, topic, [(i % 2, b"new", None) for i in range(6)])
        polls = poll_until(source, lambda ps: source.finished())
        got = records(polls)
        assert sorted((r.partition, r.offset) for r in got) == [
            (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)
        ]  # fmt: skip
        assert {r.value for r in got} == {b"old"}
        progress = source.progress()
        assert {tp: p.position for tp, p in progress.items()} == {tps[0]: 4, tps[1]: 3}
        assert all(p.caught_up for p in progress.values())
        assert source.paused() == set(tps)
        source.set_paused([])  # finished partitions stay paused
        assert source.paused() == set(tps)
        assert not records([source.poll(timeout_ms=300)])


def test_pause_and_resume_for_backpressure(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, 2)
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    with KafkaSource(settings(kafka_bootstrap, topic)) as source:
        poll_until(source, lambda ps: bool(source.assignment()))
        source.set_paused([p0])
        assert source.paused() == {p0}
        produce(kafka_bootstrap, topic, [(0, b"a", None)] * 3 + [(1, b"b", None)] * 3)
        polls = poll_until(source, lambda ps: len(records(ps)) == 3)
        assert {r.partition for r in records(polls)} == {1}
        assert not source.progress()[p0].caught_up  # paused: its high watermark is stale
        source.resume(p0)
        polls = poll_until(source, lambda ps: len(records(ps)) == 3)
        assert {r.partition for r in records(polls)} == {0}
        source.pause(p1)
        source.set_paused([])
        assert source.paused() == set()


def test_rebalance_changes_reach_the_main_loop(kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, 2)
    produce(kafka_bootstrap, topic, [(i % 2, b"%d" % i, None) for i in range(20)])
    cfg = settings(kafka_bootstrap, topic, max_poll_records=2)
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    second_polls: list[Poll] = []
    stop = threading.Event()

    def run_second() -> None:
        with KafkaSource(cfg) as second:
            while not stop.is_set():
                second_polls.append(second.poll(timeout_ms=200))

    with KafkaSource(cfg) as first:
        seen = poll_until(first, lambda ps: len(records(ps)) >= 4)
        assert first.commit({p0: Checkpoint(1), p1: Checkpoint(1)})
        thread = threading.Thread(target=run_second)
        thread.start()
        try:
            seen += poll_until(first, lambda ps: any(p.revoked for p in ps))
            seen += poll_until(first, lambda ps: len(first.assignment()) == 1)
            (kept,) = first.assignment()
            (given,) = {p0, p1} - {kept}
            assert [p.revoked for p in seen if p.revoked] == [{given}]
            joined = next(i for i, p in enumerate(seen) if p.assigned)
            assert all(kept not in p.assigned for p in seen[joined + 1 :])  # kept its position
            offsets = [r.offset for r in records(seen) if r.partition == kept.partition]
            assert offsets == list(range(len(offsets)))  # so nothing was read twice
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            while not any(p.assigned for p in second_polls):
                assert time.monotonic() < deadline, "the second member got no partition"
                first.poll(timeout_ms=200)
            handed = {tp: c and c.offset for p in second_polls for tp, c in p.assigned.items()}
            assert handed == {given: 1}  # the new owner starts from the commit
        finally:
            stop.set()
            thread.join()
        # the second member left: the partition comes back, from its committed offset
        polls = poll_until(first, lambda ps: any(p.assigned for p in ps))
        back = {tp: c and c.offset for p in polls for tp, c in p.assigned.items()}
        assert back == {given: 1}
        assert first.assignment() == {p0, p1}


def test_blocking_commit_in_a_rebalance_listener_raises(kafka_bootstrap: str) -> None:
    """Why KafkaSource only records rebalance events: the listener runs on the IO thread."""
    topic = new_topic(kafka_bootstrap, 1)
    errors: list[BaseException] = []

    class Committing(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: object) -> None:
            """Nothing held yet on the first join: the commit is tried on assignment."""

        def on_partitions_assigned(self, assigned: object) -> None:
            try:
                consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(0, "", -1)})
            except RuntimeError as exc:
                errors.append(exc)

    consumer = KafkaConsumer(**settings(kafka_bootstrap, topic).consumer_config())
    try:
        consumer.subscribe([topic], listener=Committing())
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while not consumer.assignment():
            assert time.monotonic() < deadline
            consumer.poll(timeout_ms=200)
    finally:
        consumer.close(autocommit=False)
    assert len(errors) == 1 and "IO thread" in str(errors[0])


def test_embedded_broker_starts_serves_and_stops(tmp_path: Path) -> None:
    log = tmp_path / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        create_topic(broker.bootstrap_servers, "demo", 3)
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
        try:
            assert consumer.partitions_for_topic("demo") == {0, 1, 2}
        finally:
            consumer.close()
        host, port = broker.bootstrap_servers.split(":")
    assert "listening on: tcp://127.0.0.1:" in log.read_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = broker.bootstrap_servers


def test_embedded_broker_start_failure_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = EmbeddedBroker(port=taken.getsockname()[1], log_path=tmp_path / "tansu.log")
        with pytest.raises(BrokerStartError, match="Address in use"):
            broker.start()


def _kafka_io_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("kafka-io-")}


def test_a_source_that_cannot_connect_leaves_no_io_thread_behind() -> None:
    """kafka-python's constructor raises with its IO thread still running; retrying would
    leak one thread (and selector) per attempt."""
    before = _kafka_io_threads()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        cfg = settings(f"127.0.0.1:{closed.getsockname()[1]}", "t", bootstrap_timeout_ms=500)
        for _ in range(2):
            with pytest.raises(KafkaTimeoutError):
                KafkaSource(cfg)
    assert _kafka_io_threads() - before == set()


def test_closing_in_the_middle_of_a_join_does_not_wedge_the_group(kafka_bootstrap: str) -> None:
    """kafka-python's close sends LeaveGroup whenever it holds a member id; sent by the member
    Tansu 0.6 elected leader before the join completed, it leaves a group no one can join."""
    topic = new_topic(kafka_bootstrap, 2)
    cfg = settings(kafka_bootstrap, topic)
    with KafkaSource(cfg) as first:
        first.poll(timeout_ms=300)  # the join has begun; it takes about 3 s
        assert not first.stable() and not first.assignment()
    with KafkaSource(cfg) as second:
        poll_until(second, lambda ps: len(second.assignment()) == 2)
        assert second.ready()


def test_no_partition_is_caught_up_while_the_group_rebalances(kafka_bootstrap: str) -> None:
    """Nothing is fetched during a rebalance, so a high watermark goes stale meanwhile; the
    idle clock starts again once the group is stable."""
    topic = new_topic(kafka_bootstrap, 2)
    produce(kafka_bootstrap, topic, [(p, b"x", None) for p in (0, 1)])
    cfg = settings(kafka_bootstrap, topic)
    with KafkaSource(cfg, idle_ms=300) as source:

        def caught_up() -> bool:
            source.poll(timeout_ms=100)
            progress = source.progress()
            return len(progress) == 2 and all(p.caught_up for p in progress.values())

        poll_until(source, lambda ps: caught_up())
        visiting = threading.Event()
        visitor_held: list[set[TopicPartition]] = []

        def visit() -> None:  # polls on its own, as a member of another process would
            visitor = KafkaConsumer(**{**cfg.consumer_config(), "client_id": "zzz-visitor"})
            try:
                visitor.subscribe([topic])
                while visiting.is_set():
                    visitor.poll(timeout_ms=200)
                    visitor_held.append(set(visitor.assignment()))
            finally:
                visitor.close(autocommit=False)

        visiting.set()
        thread = threading.Thread(target=visit)
        thread.start()
        try:
            seen: list[dict[TopicPartition, bool]] = []

            def rebalanced(polls: list[Poll]) -> bool:
                if not source.stable():
                    seen.append({tp: p.caught_up for tp, p in source.progress().items()})
                return bool(visitor_held and visitor_held[-1]) and source.stable()

            poll_until(source, rebalanced, 45.0)
            assert any(seen) and not any(any(s.values()) for s in seen), seen
            assert len(source.assignment()) == 1
            assert not any(p.caught_up for p in source.progress().values())
            poll_until(source, lambda ps: all(p.caught_up for p in source.progress().values()))
        finally:
            visiting.clear()
            thread.join()


def test_the_join_watchdog_rejoins_and_the_group_still_forms(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A member that does not complete its join within ``join_timeout_s`` starts over with a
    new consumer, without a LeaveGroup; here the join waits for a member that died mid-join
    (its session expires after 6 s), and the rejoins do not keep the group from forming."""
    topic = new_topic(kafka_bootstrap, 2)
    cfg = settings(kafka_bootstrap, topic)
    dead = KafkaConsumer(**cfg.consumer_config())
    dead.subscribe([topic])
    dead.poll(timeout_ms=300)
    kafka_compat.forget_membership(dead)  # gone without a word, like a SIGKILL
    dead.close(autocommit=False)
    with (
        caplog.at_level(logging.WARNING, "agent.kafka_source"),
        KafkaSource(cfg, join_timeout_s=5.0) as source,
    ):
        # A member abandoned by a rejoin may be in the first generation formed (it holds a
        # partition until its session expires); then the group forms again without it.
        poll_until(source, lambda ps: source.ready() and len(source.assignment()) == 2, 45.0)
    rejoins = [r.getMessage() for r in caplog.records if "joining again" in r.getMessage()]
    assert rejoins and all(f"group {cfg.group_id} not joined" in m for m in rejoins), rejoins
