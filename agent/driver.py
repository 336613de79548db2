"""The one loop that runs a pipeline over a source: ``embmon run`` and ``embmon replay`` alike.

Each turn: poll; apply revocations, then assignments; decode each partition's records and
route them into windows; note positions (and lag); close due windows, evaluate and persist
them; only then commit the checkpoints the window store says are safe; pause the partitions
that run too far ahead in event time. A bounded source (a file, ``--until-end``) ends the loop
once it is finished, with every window closed and committed. Closing is done in time-bounded
chunks (``Pipeline.close``); while some are left the driver polls without waiting, so the
consumer stays in its group however many windows close at once. ``stop`` ends it after the
current turn; open windows are not emitted partially, their events are re-read by whoever
resumes the group.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from .accounting import Accounting
from .checkpoint import Checkpoint
from .decode import DecodedBatch, Reject
from .source import Partition, Poll, RawRecord, Source

__all__ = ["Driver", "Stage", "Store"]


class Store(Protocol):
    """The state a stage keeps per partition: ``agent.windows.WindowStore`` for the single
    process, ``agent.chunks.ChunkStore`` for a collector, ``agent.evaluator.Shards``."""

    @property
    def open_windows(self) -> int: ...

    def assign(self, partition: Partition, checkpoint: Checkpoint | None) -> None: ...

    def revoke(self, partitions: Iterable[Partition]) -> None: ...

    def advance(self, partition: Partition, position: int, *, caught_up: bool) -> None: ...

    def commit_offsets(self) -> Mapping[Partition, Checkpoint]: ...

    def paused_partitions(self) -> frozenset[Partition]: ...


class Stage(Protocol):
    """What the driver runs: ``agent.pipeline.Pipeline`` (``--role all`` and replays),
    ``agent.collector.Collector`` or ``agent.evaluator.Evaluator``."""

    @property
    def store(self) -> Store: ...

    @property
    def accounting(self) -> Accounting: ...

    @property
    def behind(self) -> bool: ...

    @property
    def done(self) -> bool: ...

    def ingest(self, partition: Partition, records: Sequence[RawRecord]) -> DecodedBatch: ...

    def close(self, everything: bool = False) -> Sequence[object]: ...


log = logging.getLogger("embmon")


class Driver:
    """Moves records from ``source`` through ``pipeline`` until stopped or finished.

    ``on_rejects(partition, rejects)`` sees every rejected record (dead letters);
    ``before_commit()`` runs before each commit, which is skipped when it returns False (dead
    letters not yet delivered: their records are read again); ``on_turn()`` runs once per
    turn (liveness, progress); ``finished()`` says when a bounded run is over (default: when
    the source is).
    """

    def __init__(
        self,
        pipeline: Stage,
        source: Source,
        *,
        stop: threading.Event | None = None,
        commit_every_s: float = 5.0,
        poll_timeout_ms: int = 500,
        on_rejects: Callable[[Partition, tuple[Reject, ...]], None] | None = None,
        before_commit: Callable[[], bool] | None = None,
        on_turn: Callable[[], None] | None = None,
        finished: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        self.source = source
        self.stop = stop or threading.Event()
        self._commit_every = commit_every_s
        self._poll_timeout = poll_timeout_ms
        self._on_rejects = on_rejects
        self._before_commit = before_commit
        self._on_turn = on_turn
        self._finished = finished or source.finished
        self._clock = clock
        self._last_commit = float("-inf")
        self._draining = False

    def run(self) -> None:
        """Turn until ``stop`` is set or the source is finished (then close everything)."""
        while not self.stop.is_set():
            self.turn()
            if self._finished():
                self._draining = True
                if self.pipeline.done:
                    self._commit(force=True)
                    return
        self._commit(force=True)

    def turn(self) -> None:
        if self._on_turn is not None:
            self._on_turn()
        store = self.pipeline.store
        busy = self.pipeline.behind or (self._draining and store.open_windows > 0)
        poll = self.source.poll(0 if busy else self._poll_timeout)
        self._apply_assignment(poll)
        self._ingest(poll.records)
        progress = self.source.progress()
        for partition, state in progress.items():
            store.advance(partition, state.position, caught_up=state.caught_up)
        self.pipeline.accounting.set_lag(
            {tp: p.lag for tp, p in progress.items() if p.lag is not None}
        )
        closed = self.pipeline.close(everything=self._draining)
        self._commit(force=bool(closed))
        self.source.set_paused(store.paused_partitions())

    def _apply_assignment(self, poll: Poll) -> None:
        store = self.pipeline.store
        if poll.revoked:
            log.info("partitions revoked: %s", sorted(poll.revoked))
            store.revoke(poll.revoked)
        for partition, checkpoint in poll.assigned.items():
            log.info("partition assigned: %s (resuming from %s)", partition, checkpoint)
            store.assign(partition, checkpoint)

    def _ingest(self, records: list[RawRecord]) -> None:
        by_partition: dict[Partition, list[RawRecord]] = defaultdict(list)
        for record in records:
            by_partition[(record.topic, record.partition)].append(record)
        for partition, batch in by_partition.items():
            decoded = self.pipeline.ingest(partition, batch)
            if decoded.rejects and self._on_rejects is not None:
                self._on_rejects(partition, decoded.rejects)

    def _commit(self, *, force: bool) -> None:
        now = self._clock()
        if not force and now - self._last_commit < self._commit_every:
            return
        if self._before_commit is not None and not self._before_commit():
            return
        if self.source.commit(self.pipeline.store.commit_offsets()):
            self._last_commit = now
