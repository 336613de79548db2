"""``KafkaSource`` when a kafka-python call raises a retriable error, over a scripted consumer.

A regression test beside ``test_kafka_source_outage.py``, which shows the main claim on a real
broker for ``committed()``. The other two calls can raise ``KafkaConnectionError`` through the
same coordinator lookup, but their moment cannot be forced on a real broker from outside
kafka-python: ``KafkaConsumer.poll()`` (its coordinator lookup), and ``position()`` of a
partition whose position is not resolved yet (between a join and the committed-offset fetch
inside ``poll()``). So this fake consumer raises them on cue; it implements only what
``KafkaSource`` calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaConnectionError
from kafka.structs import MemberState

from agent import kafka_compat
from agent.checkpoint import Checkpoint
from agent.kafka_source import KafkaSettings, KafkaSource

TOPIC = "t"
TP = TopicPartition(TOPIC, 0)


class _Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    value: bytes


class _FakeConsumer:
    """Records at offsets ``[position, end)`` of one partition, assigned on the first poll;
    ``fail`` names the calls that raise ``KafkaConnectionError`` next (once each)."""

    def __init__(self, committed: int, end: int) -> None:
        self._fetcher = SimpleNamespace(
            _completed_fetches=[],
            _next_partition_records=None,
            _paused_completed_fetches={},
            _paused_partition_records={},
        )
        self._coordinator = SimpleNamespace(reset_generation=lambda: None)
        self.committed_offset, self.end = committed, end
        self.assigned: set[TopicPartition] = set()
        self.pos: dict[TopicPartition, int] = {}
        self.fail: set[str] = set()
        self.listener: Any = None

    def _maybe_fail(self, call: str) -> None:
        if call in self.fail:
            self.fail.discard(call)
            raise KafkaConnectionError("111 ECONNREFUSED")

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[_Record]]:
        self._maybe_fail("poll")
        if not self.assigned:
            self.assigned = {TP}
            self.pos[TP] = self.committed_offset
            self.listener.on_partitions_assigned({TP})
        start = self.pos[TP]
        self.pos[TP] = self.end
        records = [_Record(TOPIC, 0, o, 0, b"x") for o in range(start, self.end)]
        return {TP: records} if records else {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def committed(
        self, tp: TopicPartition, metadata: bool = False, timeout_ms: int | None = None
    ) -> OffsetAndMetadata:
        self._maybe_fail("committed")
        return OffsetAndMetadata(self.committed_offset, None, -1)

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        self._maybe_fail("position")
        return self.pos[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos[tp] = offset

    def highwater(self, tp: TopicPartition) -> int:
        return self.end

    def group_metadata(self) -> SimpleNamespace:
        return SimpleNamespace(state=MemberState.STABLE)

    def paused(self) -> set[TopicPartition]:
        return set()

    def pause(self, *tps: TopicPartition) -> None:
        """Nothing to pause: the script decides what each poll returns."""

    def resume(self, *tps: TopicPartition) -> None:
        """Nothing to resume (see ``pause``)."""

    def close(self, autocommit: bool) -> None:
        """Nothing to close: the script holds no connection."""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _FakeConsumer:
    consumer = _FakeConsumer(committed=5, end=8)
    monkeypatch.setattr(kafka_compat, "new_consumer", lambda config: consumer)
    return consumer


def _offsets(records: Iterable[Any]) -> list[int]:
    return [r.offset for r in records]


def test_a_partition_whose_commit_cannot_be_read_is_handed_over_next_poll(
    fake: _FakeConsumer,
) -> None:
    fake.fail = {"committed"}
    with KafkaSource(KafkaSettings("fake:9092", [TOPIC], "g")) as source:
        first = source.poll(100)
        assert (first.assigned, first.records, source.assignment()) == ({}, [], frozenset())
        assert source.progress() == {} and not source.ready()
        assert fake.pos[TP] == 5  # its records were put back
        second = source.poll(100)
        assert dict(second.assigned) == {TP: Checkpoint(5)}
        assert _offsets(second.records) == [5, 6, 7]


def test_a_poll_that_meets_a_connection_error_returns_nothing(fake: _FakeConsumer) -> None:
    with KafkaSource(KafkaSettings("fake:9092", [TOPIC], "g")) as source:
        assert _offsets(source.poll(100).records) == [5, 6, 7]
        fake.end, fake.fail = 9, {"poll"}
        failed = source.poll(100)
        assert (failed.records, failed.revoked, dict(failed.assigned)) == ([], frozenset(), {})
        assert _offsets(source.poll(100).records) == [8]


def test_a_position_that_cannot_be_read_leaves_the_partition_out_of_progress(
    fake: _FakeConsumer,
) -> None:
    with KafkaSource(KafkaSettings("fake:9092", [TOPIC], "g")) as source:
        source.poll(100)
        fake.fail = {"position"}
        assert source.progress() == {}
        assert source.progress()[TP].position == 8
