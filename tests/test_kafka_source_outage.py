"""``KafkaSource`` through a broker outage that begins at the worst moment: right after the
group handed this member its partitions, while ``poll()`` reads their committed offsets.

The broker is a real Tansu over TCP with durable storage (``tests.durable_broker``), SIGKILLed
and started again on the same port. kafka-python is not mocked: one method of the live
consumer is wrapped so that the broker dies just before its first call and comes back once
that call has returned or raised. A real outage can begin at any instant; this pins it to the
instant that once made ``embmon run`` exit 1 (``test_agent_outage.py`` met it about once in six
runs). ``KafkaConsumer.committed()`` waits with no time limit by default and raises
``KafkaConnectionError`` from ``ensure_coordinator_ready_async`` (kafka/coordinator/base.py,
the metadata refresh it waits for fails) when the broker does not answer.

The source must not raise, must hand each partition over (``Poll.assigned``) with the group's
committed offset before any of its records, and every record after that offset must come
exactly once.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

from agent.checkpoint import Checkpoint
from agent.kafka_source import KafkaSettings, KafkaSource
from tests.broker import new_topic, produce
from tests.durable_broker import DurableBroker, down_during_first_call

pytestmark = pytest.mark.kafka

RECORDS = 12  # per partition
COMMITTED = {0: 4, 1: 7}  # the group's offsets before the member joins


def _commit_for_group(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for ``group`` from outside it (a consumer that assigns, no join)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in offsets]
        consumer.assign(tps)
        consumer.commit({tp: OffsetAndMetadata(offsets[tp.partition], "", -1) for tp in tps})
    finally:
        consumer.close(autocommit=False)


def test_an_outage_while_reading_a_fresh_assignments_commits_costs_nothing(
    tmp_path: Path,
) -> None:
    with DurableBroker(tmp_path) as broker:
        bootstrap = broker.bootstrap_servers
        topic = new_topic(bootstrap, len(COMMITTED), prefix="fresh-outage")
        produce(bootstrap, topic, [(p, b"x", None) for p in COMMITTED for _ in range(RECORDS)])
        group = f"g-{uuid.uuid4().hex[:8]}"
        _commit_for_group(bootstrap, group, topic, COMMITTED)

        with KafkaSource(KafkaSettings(bootstrap, [topic], group)) as source:
            consumer = source._consumer
            consumer.committed, outage = down_during_first_call(broker, consumer.committed)
            handed: dict[TopicPartition, Checkpoint | None] = {}
            read: list[tuple[int, int]] = []
            want = sorted((p, o) for p, first in COMMITTED.items() for o in range(first, RECORDS))
            deadline = time.monotonic() + 90
            while len(read) < len(want) and time.monotonic() < deadline:
                poll = source.poll(200)  # must not raise
                handed.update(poll.assigned)
                for record in poll.records:
                    assert (record.topic, record.partition) in handed, "records before handover"
                    read.append((record.partition, record.offset))
            source.progress()

    assert outage.calls >= 2 and outage.first not in (None, "returned"), vars(outage)
    assert handed == {TopicPartition(topic, p): Checkpoint(o) for p, o in COMMITTED.items()}
    assert sorted(read) == want  # nothing lost, nothing twice
