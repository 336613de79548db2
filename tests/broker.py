"""Test helpers around a broker: unique topic names, topics, producing records."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from kafka import KafkaProducer

from demo.broker import create_topic

__all__ = ["new_topic", "produce"]


def new_topic(bootstrap_servers: str, partitions: int, prefix: str = "t") -> str:
    """Create a topic with a name no other test uses, and return the name."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    create_topic(bootstrap_servers, name, partitions)
    return name


def produce(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[tuple[int, bytes, int | None]],
    *,
    batch: bool = True,
) -> None:
    """Send ``(partition, value, timestamp_ms)`` records and wait until all are acknowledged.

    ``batch=False`` flushes after each record, so each lands in a record batch of its own.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5 if batch else 0)
    try:
        for partition, value, timestamp_ms in records:
            producer.send(topic, value=value, partition=partition, timestamp_ms=timestamp_ms)
            if not batch:
                producer.flush()
        producer.flush()
    finally:
        producer.close()
