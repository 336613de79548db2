"""The one protocol every source of records speaks: Kafka for ``embmon run``, files for replay.

The driver (``agent.driver``) knows nothing else of a source, so windows close by the same
rules whatever the records came from and however they were chunked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, Protocol

from .checkpoint import Checkpoint

__all__ = ["Partition", "PartitionProgress", "Poll", "RawRecord", "Source"]

Partition = tuple[str, int]
"""(topic, partition); ``kafka.TopicPartition`` is one."""


class RawRecord(NamedTuple):
    """One record as read, with the field names of kafka-python's ``ConsumerRecord``.

    ``timestamp`` is the record's own time in milliseconds (negative: none); ``value`` is None
    for a tombstone.
    """

    value: bytes | None
    timestamp: int
    partition: int = 0
    offset: int = 0
    topic: str = ""


@dataclass(frozen=True)
class Poll:
    """What one ``poll`` brought: apply ``revoked``, then ``assigned``, then ``records``.

    ``assigned`` maps each newly owned partition to its committed checkpoint (None: never
    committed); the records of those partitions start at that offset.
    """

    records: list[RawRecord]
    revoked: frozenset[Partition] = frozenset()
    assigned: Mapping[Partition, Checkpoint | None] = field(
        default_factory=lambda: MappingProxyType({})
    )


@dataclass(frozen=True)
class PartitionProgress:
    """A partition's read position against its end (``highwater``: None until first known).

    ``caught_up``: no backlog, so the partition no longer holds the global watermark back.
    """

    position: int
    highwater: int | None
    caught_up: bool

    @property
    def lag(self) -> int | None:
        return None if self.highwater is None else max(self.highwater - self.position, 0)


class Source(Protocol):
    """A partitioned, replayable stream of records with committable positions."""

    def poll(self, timeout_ms: int) -> Poll:
        """The next records, and the assignment changes met on the way."""
        ...

    def progress(self) -> Mapping[Partition, PartitionProgress]:
        """Position and caught-up state of every partition held, after the last poll."""
        ...

    def commit(self, checkpoints: Mapping[Partition, Checkpoint]) -> bool:
        """Make ``checkpoints`` the resume points; False if refused (try again later)."""
        ...

    def set_paused(self, partitions: Iterable[Partition]) -> None:
        """Hold back exactly ``partitions`` (they run too far ahead in event time)."""
        ...

    def finished(self) -> bool:
        """True once a bounded source (a file, ``--until-end``) has handed out everything."""
        ...
