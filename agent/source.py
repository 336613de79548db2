"""The one protocol every source of records speaks: Kafka for ``embmon run``, files for replay.

The driver (``agent.driver``) knows nothing else of a source, so windows close by the same
rules whatever the records came from and however they were chunked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, Protocol

from .checkpoint import Checkpoint

__all__ = ["ChunkSource", "Partition", "PartitionProgress", "Poll", "RawRecord", "Source"]

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


class ChunkSource:
    """One partition handed out a chunk of records per poll: a file, or events in memory.

    Assigned on the first poll, never committed before, caught up only once exhausted (until
    then its own event time is the watermark). Every record must carry :attr:`partition`.

    >>> source = ChunkSource([[RawRecord(b"{}", 0, 0, 0, "t")], [RawRecord(b"{}", 0, 0, 1, "t")]],
    ...                      partition=("t", 0))
    >>> first = source.poll(0)
    >>> dict(first.assigned), [r.offset for r in first.records], source.finished()
    ({('t', 0): None}, [0], False)
    >>> _, last = source.poll(0), source.poll(0)
    >>> last.records, source.finished(), source.progress()[("t", 0)].position
    ([], True, 2)
    """

    def __init__(self, chunks: Iterable[list[RawRecord]], partition: Partition) -> None:
        self.partition = partition
        self.committed: Checkpoint | None = None
        self._chunks: Iterator[list[RawRecord]] = iter(chunks)
        self._assigned = False
        self._done = False
        self._position = 0

    @property
    def position(self) -> int:
        """The offset after the last record handed out."""
        return self._position

    def poll(self, timeout_ms: int) -> Poll:
        assigned: dict[Partition, Checkpoint | None] = {}
        if not self._assigned:
            self._assigned = True
            assigned[self.partition] = None
        chunk = [] if self._done else next(self._chunks, [])
        if chunk:
            self._position = chunk[-1].offset + 1
        else:
            self._done = True
        return Poll(chunk, assigned=assigned)

    def progress(self) -> dict[Partition, PartitionProgress]:
        return {self.partition: PartitionProgress(self._position, None, self._done)}

    def commit(self, checkpoints: Mapping[Partition, Checkpoint]) -> bool:
        self.committed = checkpoints.get(self.partition, self.committed)
        return True

    def set_paused(self, partitions: Iterable[Partition]) -> None:
        """A single partition is never ahead of the others, so nothing is ever paused."""

    def finished(self) -> bool:
        return self._done
