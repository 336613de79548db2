"""``--role collector``: decode, cut each partition into chunks, publish them, then commit.

The driver (``agent.driver``) runs this like the single process's pipeline: it feeds polls in,
calls :meth:`Collector.close` each turn and commits ``store.commit_offsets()`` after it. Closing
here means publishing: every chunk ``agent.chunks`` has cut, and the open chunk of each
caught-up partition as a *tail* (at most every ``tail_every_s``, and again every
``heartbeat_s`` while nothing changes, so a restarted evaluator soon learns of idle
partitions). A chunk counts as published once the profiles topic acknowledged all its records;
only then may its offsets be committed. What fails is published again on the next turn: the
evaluator drops the copies it already has.

Event counts are not exported here: a collector that re-reads a chunk after a crash counts it
again, so the evaluator, which keeps one copy of each chunk, is where ``embmon_events_total``
is exact.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import timedelta

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

from sketches.profile import WindowProfile
from sketches.reference import Reference

from .accounting import Accounting
from .chunks import Chunk, ChunkStore
from .decode import DecodedBatch, Decoder, RecordLike
from .partials import Piece, Seal, Span, shard_of
from .source import Partition

__all__ = ["Collector", "Publisher"]

log = logging.getLogger("embmon")
_LOGGED = 5


class Publisher:
    """Writes chunks to the profiles topic: pieces to their model's partition, then a seal on
    every partition; ``publish`` returns the chunks the topic acknowledged in full.

    The producer must keep each partition's records in order (one request in flight): a seal
    must never overtake the pieces it counts.
    """

    def __init__(
        self, producer: Callable[[], KafkaProducer], topic: str, *, timeout_s: float = 10.0
    ) -> None:
        self._new_producer = producer
        self._producer: KafkaProducer | None = None
        self.topic = topic
        self.attempt = uuid.uuid4().hex[:12]
        """Tags this process's records; each publication of a chunk adds a number to it, and
        pieces apply only with the seal of their own publication."""
        self._sent = 0
        self._timeout = timeout_s
        self._sizes: dict[str, int] = {}

    @property
    def producer(self) -> KafkaProducer:
        """Made on first use: a collector starts (and serves its endpoint) with Kafka down."""
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    def publish(
        self, chunks: Sequence[Chunk[WindowProfile]], *, final: bool
    ) -> list[Chunk[WindowProfile]]:
        try:
            shards = self._partitions(self.topic)
        except KafkaError as exc:
            log.warning("cannot publish to %s, trying again: %s", self.topic, exc)
            return []
        sent: list[tuple[Chunk[WindowProfile], list[object]]] = []
        for chunk in chunks:
            try:
                sent.append((chunk, self._send(chunk, shards, final=final)))
            except KafkaError as exc:
                log.warning(
                    "could not publish a chunk of %s, trying again: %s", chunk.partition, exc
                )
        try:
            self.producer.flush(timeout=self._timeout)
        except KafkaError as exc:
            log.warning(
                "profiles topic %s did not acknowledge in %.0f s: %s",
                self.topic,
                self._timeout,
                exc,
            )
        return [chunk for chunk, futures in sent if all(f.succeeded() for f in futures)]  # type: ignore[attr-defined]

    def _send(self, chunk: Chunk[WindowProfile], shards: int, *, final: bool) -> list[object]:
        topic, partition = chunk.partition
        span = Span(topic, partition, chunk.start, chunk.end)
        self._sent += 1
        attempt = f"{self.attempt}-{self._sent}"  # a chunk sent again is a new publication
        per_shard: Counter[int] = Counter()
        futures = []
        for key, profile in sorted(
            chunk.pieces.items(), key=lambda kv: (kv[0].start, kv[0].model, kv[0].segment.pairs)
        ):
            shard = shard_of(key.model, shards)
            piece = Piece(span, attempt, key, profile.count, profile.to_bytes())
            futures.append(
                self.producer.send(
                    self.topic, piece.to_bytes(), key=key.model.encode(), partition=shard
                )
            )
            per_shard[shard] += 1
        for shard in range(shards):
            seal = Seal(
                span,
                attempt,
                chunk.watermark,
                per_shard[shard],
                self._partitions(topic),
                tail=chunk.tail,
                caught_up=chunk.caught_up,
                final=final and chunk.tail,  # the evaluator may stop once it has read it
                rejected=dict(chunk.rejected),
            )
            futures.append(self.producer.send(self.topic, seal.to_bytes(), partition=shard))
        return futures

    def _partitions(self, topic: str) -> int:
        if topic not in self._sizes:
            found = self.producer.partitions_for(topic)
            if not found:
                raise KafkaError(f"topic {topic} has no partitions (does it exist?)")
            self._sizes[topic] = len(found)
        return self._sizes[topic]

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=self._timeout)


class Collector:
    """Polls in, chunks out to the profiles topic; the driver's pipeline for ``--role collector``."""

    def __init__(
        self,
        reference: Reference,
        decoder: Decoder,
        publisher: Publisher,
        *,
        window: timedelta,
        lateness: timedelta = timedelta(0),
        accounting: Accounting | None = None,
        tail_every_s: float = 2.0,
        heartbeat_s: float = 10.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.decoder = decoder
        self.publisher = publisher
        self.accounting = accounting or Accounting()
        self.accounting.window_seconds = window.total_seconds()
        self.accounting.lateness_seconds = lateness.total_seconds()
        self.accounting.reference_version = reference.version
        self.accounting.count_profiles(published=0)  # series from zero
        self.accounting.set_partitions_owned(0)
        self.store: ChunkStore[WindowProfile] = ChunkStore(
            window=window, factory=lambda key: reference.new_profile(), lateness=lateness
        )
        self.behind = False
        self._tail_every = tail_every_s
        self._heartbeat = heartbeat_s
        self._timer = timer
        self._tails: dict[Partition, tuple[tuple[int, int, bool], float]] = {}
        self._final = False
        self._logged: Counter[str] = Counter()

    def ingest(self, partition: Partition, records: Sequence[RecordLike]) -> DecodedBatch:
        """Decode one partition's records into its chunks; context records set the watermark."""
        below = self.store.context_below(partition)
        if any(r.offset < below for r in records):
            context = self.decoder.decode([r for r in records if r.offset < below])
            times = [g.batch.timestamps for g in context.groups]
            self.store.add_context(partition, np.concatenate([*times, np.empty(0)]))
            records = [r for r in records if r.offset >= below]
        decoded = self.decoder.decode(records)
        for reject in decoded.rejects:
            if self._logged[reject.reason] < _LOGGED:
                self._logged[reject.reason] += 1
                log.warning(
                    "rejected record %s/%s offset %s (%s): %s",
                    *partition,
                    reject.offset,
                    reject.reason,
                    reject.detail,
                )
        self.store.add(
            partition,
            [(g.model, g.segment, g.batch, g.offsets) for g in decoded.groups],
            rejects=[(r.offset, r.reason) for r in decoded.rejects],
        )
        self.accounting.count(open_windows=self.store.open_windows)
        return decoded

    def close(self, everything: bool = False) -> list[Chunk[WindowProfile]]:
        """Publish the chunks cut (and the tails due; all tails, final, with ``everything``)."""
        chunks = self.store.sealed()
        now = self._timer()
        tails = [
            tail
            for partition in sorted(self.store.partitions)
            if (tail := self.store.tail(partition)) is not None
            and (everything or (tail.caught_up and self._tail_due(tail, now)))
        ]
        self.accounting.set_partitions_owned(len(self.store.partitions))
        if not chunks and not tails:
            self._final = everything
            return []
        acked = self.publisher.publish([*chunks, *tails], final=everything)
        for chunk in acked:
            if chunk.tail:
                self._tails[chunk.partition] = ((chunk.start, chunk.end, chunk.caught_up), now)
            else:
                self.store.published(chunk)
        self._final = everything and len(acked) == len(chunks) + len(tails)
        pieces = sum(len(c.pieces) for c in acked)
        self.accounting.count_profiles(published=pieces)
        self.accounting.count(open_windows=self.store.open_windows)
        by_partition: defaultdict[Partition, int] = defaultdict(int)
        for chunk in acked:
            by_partition[chunk.partition] += 1
        log.debug("published %d chunk(s), %d piece(s): %s", len(acked), pieces, dict(by_partition))
        return acked

    def _tail_due(self, tail: Chunk[WindowProfile], now: float) -> bool:
        sent = self._tails.get(tail.partition)
        if sent is None:
            return True
        what, when = sent
        changed = what != (tail.start, tail.end, tail.caught_up)
        return now - when >= (self._tail_every if changed else self._heartbeat)

    @property
    def done(self) -> bool:
        """Every chunk is published and, at the end of a bounded run, the final tails too."""
        return self._final and not self.store.sealed()
