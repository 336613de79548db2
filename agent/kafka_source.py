"""Raw records from a Kafka consumer group, with manual commits that carry metadata.

Facts of kafka-python 3.x this module is built on (checked against a real Tansu broker in
``tests/test_kafka_source.py``):

* ``enable_auto_commit`` defaults to True; it is forced off, offsets are committed only by
  ``commit()`` as ``OffsetAndMetadata(offset, metadata, -1)``.
* Rebalance-listener callbacks run on the client's IO thread while ``poll()`` blocks the
  caller; a blocking call from them raises RuntimeError. The listener here only records what
  happened, and ``poll()`` hands the changes to the caller with the records.
* The default assignors are eager: every rebalance first revokes everything, but a partition
  assigned again keeps its position. Such a partition was never owned by anyone else, so it
  is reported neither revoked nor assigned. A partition lost by eviction restarts from its
  committed offset: reported revoked, and assigned again if it came back.
* Tansu 0.6 answers ListOffsets(latest) with the base offset of the last record batch plus
  one, short of the end when that batch holds several records; a fetch response's high
  watermark is right. ``end_offsets`` takes the larger of both.
* Tansu 0.6 keeps committed offsets but not their metadata (OffsetFetch answers null), and
  accepts a commit for a partition the member does not own: only commit held partitions.
* Consumer groups join in about 3 s with the default timeouts below (about 23 s with
  kafka-python's own).
* While the broker is down, ``commit()`` blocks up to ``request_timeout_ms`` (30 s) and then
  raises ``KafkaTimeoutError``, or raises ``KafkaConnectionError`` when a metadata refresh
  fails on the way (both retriable). So do ``committed()`` (with no timeout it waits for ever
  on the other errors), ``position()`` of a partition with no position yet (it fetches the
  committed offset) and, rarely, ``poll()`` itself: they go through the same coordinator
  lookup (``ensure_coordinator_ready_async``), which lets the error of the metadata refresh it
  waits for escape. Here each is bounded and retried on the next poll. ``poll()`` returns
  nothing meanwhile. Reconnect attempts
  back off exponentially up to ``reconnect_backoff_max_ms`` (kafka-python: 30 s), which would
  delay resuming by as much after the broker is back: it defaults to 1 s here.
* ``KafkaConsumer()`` connects at once: with no broker answering it blocks for
  ``bootstrap_timeout_ms`` (kafka-python: 30 s, here 5 s) and raises ``KafkaTimeoutError``.
  :func:`connect` retries in a daemon thread, so a stop request is honoured meanwhile.
* ``consumer.group_metadata().state`` is the member's ``MemberState``: ``<stable>`` only between
  a completed join (SyncGroup answered) and the next rebalance. Fetches stop while it is not
  stable, so high watermarks go stale: no partition counts as caught up then.
* A group that lost a member without a LeaveGroup (killed, or closed mid-join here) forms again
  once the broker drops that member, after its session timeout: on Tansu 0.6 a member joining
  just after a SIGTERM mid-join is assigned within about 11 s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Literal, cast

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    CommitFailedError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    RetriableError,
)
from kafka.structs import MemberState

from sketches.errors import EmbmonError

from . import kafka_compat
from .checkpoint import Checkpoint
from .source import Partition, PartitionProgress, Poll, RawRecord
from .tls_probe import KafkaTlsError, tls_refusal

__all__ = ["KafkaSettings", "KafkaSource", "KafkaUnreachableError", "connect"]

log = logging.getLogger(__name__)

# How long poll() waits for the committed offset of a newly assigned partition (see committed).
_COMMITTED_TIMEOUT_MS = 5000

_FORBIDDEN = {
    "enable_auto_commit": "offsets are committed only after windows are persisted",
    "partition_assignment_strategy": "assignment tracking relies on the eager assignors",
    "group_id": "set KafkaSettings.group_id",
    "bootstrap_servers": "set KafkaSettings.bootstrap_servers",
    "kafka_client": "the client must be closed when the consumer cannot start",
}


@dataclass(frozen=True)
class KafkaSettings:
    """Consumer settings; ``None`` leaves kafka-python's default.

    The group timeouts default to values that let a group form in about 3 s; raise
    ``max_poll_interval_ms`` if closing windows between polls can take longer than it. A commit
    waits at most half of it (see ``KafkaSource.commit``).
    ``extra`` passes any other ``KafkaConsumer`` option through (e.g. ``ssl_check_hostname``).
    """

    bootstrap_servers: str | Sequence[str]
    topics: Sequence[str]
    group_id: str
    client_id: str = "embmon"
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 10000
    max_poll_records: int = 500
    reconnect_backoff_max_ms: int = 1000
    bootstrap_timeout_ms: int = 5000
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    fetch_max_bytes: int | None = None
    max_partition_fetch_bytes: int | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.topics or isinstance(self.topics, str):
            raise ValueError("topics must be a non-empty list of topic names")
        clash = sorted(set(self.extra) & set(_FORBIDDEN))
        if clash:
            reasons = "; ".join(f"{key}: {_FORBIDDEN[key]}" for key in clash)
            raise ValueError(f"these consumer options cannot be passed in extra: {reasons}")

    def consumer_config(self) -> dict[str, Any]:
        """Keyword arguments for a ``KafkaConsumer`` of this group (values bytes, no deserializer)."""
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_plain_username,
            "sasl_plain_password": self.sasl_plain_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "fetch_max_bytes": self.fetch_max_bytes,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
        }
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": self.group_id,
            "client_id": self.client_id,
            "enable_auto_commit": False,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "max_poll_records": self.max_poll_records,
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            "auto_offset_reset": self.auto_offset_reset,
            "security_protocol": self.security_protocol,
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        config.update(self.extra)
        return config


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    """Records rebalance events on the IO thread; ``KafkaSource.poll`` reads them after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[str, frozenset[TopicPartition]]] = []

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._push("revoked", revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._push("assigned", assigned)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self._push("lost", lost)

    def drain(self) -> list[tuple[str, frozenset[TopicPartition]]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def _push(self, kind: str, partitions: Iterable[TopicPartition]) -> None:
        with self._lock:
            self._events.append((kind, frozenset(partitions)))


def _changes(
    before: frozenset[TopicPartition],
    events: Iterable[tuple[str, frozenset[TopicPartition]]],
    final: frozenset[TopicPartition],
) -> tuple[frozenset[TopicPartition], frozenset[TopicPartition]]:
    """(revoked, newly assigned) partitions from the listener events of one poll.

    A partition counts as kept only if the consumer kept its position throughout: eager
    "revoked" is a notice (the state survives if the new assignment has it again), "lost"
    clears the state, and each "assigned" carries the whole new assignment.
    """
    kept = set(before)
    for kind, partitions in events:
        if kind == "lost":
            kept -= partitions
        elif kind == "assigned":
            kept &= partitions
    kept &= final
    return before - kept, final - kept


class KafkaSource:
    """A consumer-group member of ``settings.topics``; a context manager.

    With ``until_end=True`` the end offsets of every partition are taken at start and nothing
    at or past them is returned; ``finished()`` tells when all assigned partitions reached them.
    A partition counts as caught up (no longer holding the watermark back) once it has been at
    its high watermark for ``idle_ms`` while the group was stable.

    With ``join_timeout_s``, a member that has not been in a stable group for that long (since
    subscribing, or since its last rebalance began) leaves and joins again with a new consumer:
    the join watchdog. A stable member without partitions (more members than partitions) is
    left alone. The member a rejoin abandons sends no LeaveGroup (see ``kafka_compat``): the
    broker drops it after its session timeout, and until then it may be given partitions that
    no one reads. Keep ``join_timeout_s`` well above the session timeout plus the broker's join
    delay (Tansu 0.6: 3 s); at 3 s, on Tansu, a member rejoined 8 times before its group formed.

    With ``lookback=True`` a partition assigned with a committed offset ``o`` is read from
    ``o - 1``: a collector reads the watermark off that record (``agent.chunks``).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        until_end: bool = False,
        idle_ms: int = 1500,
        join_timeout_s: float | None = None,
        lookback: bool = False,
    ) -> None:
        self._settings = settings
        self._lookback = lookback
        self._idle_s = idle_ms / 1000
        self._join_timeout_s = join_timeout_s
        self._at_end_since: dict[TopicPartition, tuple[int, float]] = {}  # (position, since)
        self._stop: dict[TopicPartition, int] | None = None
        if until_end:
            self._stop = self.end_offsets()
        self._listener = _Listener()
        self._consumer = self._subscribed()
        self._held: frozenset[TopicPartition] = frozenset()
        self._unstable_since: float | None = time.monotonic()

    def _subscribed(self) -> KafkaConsumer:
        consumer = kafka_compat.new_consumer(self._settings.consumer_config())
        try:
            kafka_compat.check(consumer)
        except kafka_compat.KafkaCompatError:
            consumer.close(autocommit=False)
            raise
        consumer.subscribe(list(self._settings.topics), listener=self._listener)
        log.info(
            "joining group %s for %s", self._settings.group_id, ", ".join(self._settings.topics)
        )
        return consumer

    @property
    def stop_offsets(self) -> Mapping[TopicPartition, int] | None:
        """The end offsets taken at start under ``until_end``, else None."""
        return None if self._stop is None else MappingProxyType(self._stop)

    def poll(self, timeout_ms: int) -> Poll:
        """Records of the assigned partitions, and the assignment changes met on the way.

        Raises no retriable error (a broker outage): what it stopped is tried again next poll.
        A partition is handed over (``Poll.assigned``) only with its committed checkpoint,
        before any of its records.
        """
        kafka_compat.unstick_parked_records(self._consumer)
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms)
        except RetriableError as exc:  # raised before any record is taken: none is lost
            log.warning("poll failed (broker unreachable?), retrying next turn: %s", exc)
            batches = {}
        self._watch_join()
        final = frozenset(self._consumer.assignment())
        revoked, fresh = _changes(self._held, self._listener.drain(), final)
        assigned = self._checkpoints(fresh)
        # Partitions whose committed offset could not be read are not handed over yet: not
        # held, so the next poll finds them newly assigned again; their records wait till then.
        unread = fresh - assigned.keys()
        self._held = final - unread
        rewound = self._look_back(assigned) if self._lookback else set()
        records: list[RawRecord] = []
        for tp, batch in batches.items():
            if tp in unread:
                self._consumer.seek(tp, batch[0].offset)
            elif tp not in rewound:
                records.extend(self._trim(tp, batch))
        self._pause_finished()
        return Poll(records, frozenset(revoked), MappingProxyType(dict(assigned)))

    def _checkpoints(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, Checkpoint | None]:
        """The committed checkpoints of ``partitions``, up to the first one the broker does not
        answer for in time (an outage): it and the rest are left out, to be read next poll."""
        found: dict[TopicPartition, Checkpoint | None] = {}
        for tp in sorted(partitions):
            try:
                found[tp] = Checkpoint.from_committed(self.committed(tp))
            except RetriableError as exc:  # KafkaConnectionError, KafkaTimeoutError, ...
                log.warning(
                    "cannot read the committed offset of %s (broker unreachable?), "
                    "retrying next poll: %s",
                    tp,
                    exc,
                )
                break
        return found

    def _look_back(
        self, assigned: Mapping[TopicPartition, Checkpoint | None]
    ) -> set[TopicPartition]:
        """Rewind each newly assigned partition to the record before its committed offset
        (``lookback``); returns them (records this poll fetched for them are dropped, they come
        again after that one)."""
        rewound = set()
        for tp, checkpoint in assigned.items():
            if checkpoint is not None and checkpoint.offset > 0:
                self._consumer.seek(tp, checkpoint.offset - 1)
                rewound.add(tp)
        return rewound

    def stable(self) -> bool:
        """Whether this member is in a group generation it completed the join of."""
        return bool(self._consumer.group_metadata().state == MemberState.STABLE)

    def ready(self) -> bool:
        """Readiness: this member holds partitions of a stable group."""
        return bool(self._held) and self.stable()

    def _watch_join(self) -> None:
        """Rejoin with a new consumer once the group was not stable for ``join_timeout_s``."""
        now = time.monotonic()
        if self.stable():
            self._unstable_since = None
            return
        if self._unstable_since is None:
            self._unstable_since = now
        if self._join_timeout_s is None or now - self._unstable_since < self._join_timeout_s:
            return
        log.warning(
            "group %s not joined %.0f s after the join began; leaving it and joining again",
            self._settings.group_id,
            now - self._unstable_since,
        )
        self._unstable_since = now
        try:
            fresh = self._subscribed()
        except KafkaError as exc:
            log.warning("could not start a new consumer to rejoin, trying later: %s", exc)
            return
        self._close_consumer()
        self._consumer = fresh
        self._listener.on_partitions_lost(self._held)  # the new member starts from the commits

    def commit(self, checkpoints: Mapping[Partition, Checkpoint]) -> bool:
        """Commit each checkpoint's offset with its metadata; False if the group moved on or
        the broker is unreachable.

        A refused commit is harmless: commit again after the next ``poll``; partitions lost
        meanwhile come back from it as revoked, and their next owner resumes from the previous
        commit. The wait is bounded by half of ``max_poll_interval_ms``, so a commit to a broker
        that is down cannot by itself make this member miss its poll deadline.
        """
        if not checkpoints:
            return True
        payload = {
            TopicPartition(*tp): OffsetAndMetadata(c.offset, c.metadata(), -1)
            for tp, c in checkpoints.items()
        }
        try:
            self._consumer.commit(payload, timeout_ms=self._settings.max_poll_interval_ms // 2)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            log.warning("offset commit refused, the group is rebalancing: %s", exc)
            return False
        except RetriableError as exc:  # KafkaTimeoutError, KafkaConnectionError, ...
            log.warning("offset commit failed (broker unreachable?), retrying next turn: %s", exc)
            return False
        return True

    def committed(self, tp: TopicPartition) -> tuple[int, str | None] | None:
        """The group's committed ``(offset, metadata)`` of ``tp``, None if never committed.

        Waits at most ``_COMMITTED_TIMEOUT_MS``, then raises ``KafkaTimeoutError``; raises
        ``KafkaConnectionError`` sooner when the broker is down (both retriable).
        """
        found = self._consumer.committed(
            TopicPartition(*tp), metadata=True, timeout_ms=_COMMITTED_TIMEOUT_MS
        )
        if found is None or found.offset < 0:
            return None
        return int(found.offset), found.metadata

    def assignment(self) -> frozenset[TopicPartition]:
        return self._held

    def progress(self) -> dict[TopicPartition, PartitionProgress]:
        """Position, high watermark and caught-up state of every assigned partition.

        A paused partition is never caught up (its high watermark is not refreshed while paused);
        under ``until_end`` a partition at its stop offset always is. While the group is not
        stable (a rebalance: nothing is fetched, high watermarks go stale) none is caught up
        but those, and each partition's idle clock starts again once it is.
        """
        paused = self._consumer.paused()
        buffered = kafka_compat.buffered_partitions(self._consumer)
        stable = self.stable()
        now = time.monotonic()
        out: dict[TopicPartition, PartitionProgress] = {}
        for tp in self._held:
            position = self._position(tp)
            if position is None:
                continue
            highwater = self._consumer.highwater(tp)
            done = self._stop is not None and position >= self._stop.get(tp, 0)
            at_end = (
                stable
                and tp not in paused
                and tp not in buffered
                and highwater is not None
                and position >= highwater
            )
            # The clock runs while the partition sits at its end at one position: records read
            # meanwhile (say, a burst after an outage, all in one poll) restart it.
            seen = self._at_end_since.get(tp)
            if not at_end or seen is None or seen[0] != position:
                seen = (int(position), now)
            if at_end:
                self._at_end_since[tp] = seen
            else:
                self._at_end_since.pop(tp, None)
            since = seen[1]
            # A high watermark is only as fresh as the partition's last fetch response read: a
            # partition with fetched records still buffered, or a fetch in flight, may well be
            # behind its reported high watermark. Only one at its end for a while is caught up.
            caught_up = done or (at_end and now - since >= self._idle_s)
            out[tp] = PartitionProgress(int(position), highwater, caught_up)
        return out

    def _position(self, tp: TopicPartition) -> int | None:
        """The consumer's position of ``tp``, None while it has none yet; never waits.

        Without a time limit ``KafkaConsumer.position()`` fetches a missing position from the
        group coordinator for as long as that takes, and raises ``KafkaConnectionError`` when
        the broker is down; ``poll()`` resolves it anyway.
        """
        try:
            position = self._consumer.position(tp, timeout_ms=0)
        except RetriableError:
            return None
        return None if position is None else int(position)

    def finished(self) -> bool:
        """Under ``until_end``: partitions are assigned and all reached their stop offsets."""
        if self._stop is None or not self._held:
            return False
        return all((self._position(tp) or 0) >= self._stop.get(tp, 0) for tp in self._held)

    def pause(self, *partitions: TopicPartition) -> None:
        self._consumer.pause(*(TopicPartition(*tp) for tp in partitions))

    def resume(self, *partitions: TopicPartition) -> None:
        self._consumer.resume(*(TopicPartition(*tp) for tp in partitions))

    def paused(self) -> frozenset[TopicPartition]:
        return frozenset(self._consumer.paused())

    def set_paused(self, partitions: Iterable[Partition]) -> None:
        """Pause exactly ``partitions`` (of those assigned), plus those finished under ``until_end``."""
        wanted = {TopicPartition(*tp) for tp in partitions} & self._held
        wanted |= self._finished_partitions()
        current = self.paused()
        if wanted - current:
            self._consumer.pause(*(wanted - current))
        if current - wanted:
            self._consumer.resume(*(current - wanted))

    def partitions_of(self, topic: str) -> int:
        """How many partitions ``topic`` has (from the consumer's metadata)."""
        found = self._consumer.partitions_for_topic(topic)
        if not found:
            raise KafkaError(f"topic {topic} has no partitions known (does it exist?)")
        return len(found)

    def end_offsets(
        self,
        partitions: Iterable[TopicPartition] | None = None,
        *,
        topics: Sequence[str] | None = None,
        timeout_s: float = 30.0,
    ) -> dict[TopicPartition, int]:
        """The offset after the last record of each partition (default: all partitions of
        ``topics``, default this source's).

        Uses a short-lived consumer outside the group: the larger of ListOffsets' answer and
        the high watermark of a fetch from there (see the module docstring for why both).
        """
        probe = kafka_compat.new_consumer(
            {**self._settings.consumer_config(), "group_id": None, "fetch_max_wait_ms": 100}
        )
        try:
            if partitions is None:
                tps = [
                    TopicPartition(topic, p)
                    for topic in topics or self._settings.topics
                    for p in sorted(probe.partitions_for_topic(topic))
                ]
            else:
                tps = [TopicPartition(*tp) for tp in partitions]
            if not tps:
                return {}
            listed = probe.end_offsets(tps, timeout_ms=int(timeout_s * 1000))
            probe.assign(tps)
            for tp in tps:
                probe.seek(tp, listed[tp])
            deadline = time.monotonic() + timeout_s
            while any(probe.highwater(tp) is None for tp in tps):
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(f"no fetch response for {tps} within {timeout_s} s")
                probe.poll(timeout_ms=200)
            return {tp: max(int(listed[tp]), int(probe.highwater(tp))) for tp in tps}
        finally:
            probe.close(autocommit=False)

    def close(self) -> None:
        """Leave the group without committing (commits are the caller's, after persisting)."""
        self._close_consumer()

    def _close_consumer(self) -> None:
        """Close without committing; send LeaveGroup only from a stable group (why: see
        ``kafka_compat.forget_membership``)."""
        if not self.stable():
            kafka_compat.forget_membership(self._consumer)
        self._consumer.close(autocommit=False)

    def __enter__(self) -> KafkaSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _trim(self, tp: TopicPartition, batch: Sequence[Any]) -> list[RawRecord]:
        stop = None if self._stop is None else self._stop.get(tp, 0)
        kept = [
            RawRecord(r.value, r.timestamp, r.partition, r.offset, r.topic)
            for r in batch
            if stop is None or r.offset < stop
        ]
        if stop is not None and len(kept) < len(batch):
            # Rewind to the stop offset so the position (what gets committed) never passes
            # records this run did not hand out.
            self._consumer.seek(tp, stop)
        return kept

    def _finished_partitions(self) -> set[TopicPartition]:
        if self._stop is None:
            return set()
        stop = self._stop
        return {tp for tp in self._held if (self._position(tp) or 0) >= stop.get(tp, 0)}

    def _pause_finished(self) -> None:
        done = self._finished_partitions() - set(self._consumer.paused())
        if done:
            self._consumer.pause(*done)


class KafkaUnreachableError(EmbmonError):
    """No broker answered within the time given to connect."""


_FIRST_BACKOFF_S = 1.0
_MAX_BACKOFF_S = 30.0


class _Attempt:
    """One connection attempt in a daemon thread, so the caller can stop waiting at any time.

    ``KafkaSource()`` blocks while kafka-python bootstraps; a caller that gives up abandons the
    attempt, and a source it still produces is closed, never handed out.
    """

    def __init__(self, factory: Callable[[], KafkaSource]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._abandoned = False
        self.done = threading.Event()
        self.source: KafkaSource | None = None
        self.error: BaseException | None = None
        threading.Thread(target=self._run, name="embmon-connect", daemon=True).start()

    def _run(self) -> None:
        try:
            source = self._factory()
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
        else:
            with self._lock:
                if self._abandoned:
                    source.close()
                else:
                    self.source = source
        self.done.set()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self.source is not None:
                self.source.close()
                self.source = None


def connect(
    settings: KafkaSettings,
    stop: threading.Event,
    *,
    give_up_after_s: float | None = None,
    on_wait: Callable[[], None] = lambda: None,
    **options: Any,
) -> KafkaSource | None:
    """A ``KafkaSource(settings, **options)`` once a broker answers; None if ``stop`` is set first.

    Failed attempts are logged as one warning line each and retried with exponential backoff
    (1 s, doubling up to 30 s). ``on_wait()`` runs a few times a second meanwhile (liveness).
    With ``give_up_after_s`` it raises :class:`KafkaUnreachableError` after that long.
    Errors other than Kafka's (a bad option, an untested kafka-python) are raised at once.
    So is a TLS handshake the broker refuses, or whose certificate is refused
    (:class:`~agent.tls_probe.KafkaTlsError`): a setting to fix, not an outage.
    """
    deadline = float("inf") if give_up_after_s is None else time.monotonic() + give_up_after_s
    servers = settings.bootstrap_servers
    where = servers if isinstance(servers, str) else ",".join(servers)
    backoff, attempts, last = _FIRST_BACKOFF_S, 0, "none"
    while not stop.is_set() and time.monotonic() < deadline:
        attempts += 1
        attempt = _Attempt(lambda: KafkaSource(settings, **options))
        if not _wait(attempt.done, stop, deadline, on_wait):
            attempt.abandon()
            break
        if attempt.source is not None:
            return attempt.source
        if not isinstance(attempt.error, KafkaError):
            raise cast(BaseException, attempt.error)
        _raise_if_tls_refused(settings, where)
        last = f"{type(attempt.error).__name__}: {attempt.error}"
        log.warning(
            "cannot reach Kafka at %s (attempt %d): %s; retrying in %.0f s",
            where,
            attempts,
            last,
            backoff,
        )
        _wait(threading.Event(), stop, min(deadline, time.monotonic() + backoff), on_wait)
        backoff = min(backoff * 2, _MAX_BACKOFF_S)
    if stop.is_set():
        return None
    raise KafkaUnreachableError(
        f"cannot reach Kafka at {where}: gave up after {give_up_after_s:g} s and {attempts} "
        f"attempt(s), last error {last}; check bootstrap_servers and that the brokers are up, "
        "or raise join_timeout"
    )


def _raise_if_tls_refused(settings: KafkaSettings, where: str) -> None:
    """A refused TLS handshake is a setting to fix, not an outage to wait out: raise
    :class:`~agent.tls_probe.KafkaTlsError` (``embmon run`` exits 2) instead of retrying."""
    if "SSL" not in settings.security_protocol:
        return
    reason = tls_refusal(
        settings.bootstrap_servers,
        cafile=settings.ssl_cafile,
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
        check_hostname=bool(settings.extra.get("ssl_check_hostname", True)),
    )
    if reason is not None:
        raise KafkaTlsError(
            f"TLS with Kafka at {where} refused: {reason}; check ssl_cafile, ssl_certfile, "
            "ssl_keyfile and ssl_check_hostname"
        )


def _wait(
    done: threading.Event, stop: threading.Event, until: float, tick: Callable[[], None]
) -> bool:
    """Wait for ``done``; False if ``stop`` was set or ``until`` (monotonic) passed first."""
    while not done.wait(max(0.0, min(0.2, until - time.monotonic()))):
        tick()
        if stop.is_set() or time.monotonic() >= until:
            return False
    return True
