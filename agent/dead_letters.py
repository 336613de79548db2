"""Rejected records to a dead-letter topic: rate-limited, counted, flushed before commits.

Each rejected record becomes one letter: its raw bytes as the value (a tombstone, which has
none, becomes an empty value) and three headers, ``embmon-reason`` (one of
``REJECT_REASONS``), ``embmon-detail`` (what was wrong, never the content) and
``embmon-source`` (``topic/partition/offset`` of the record it came from).

What the counts mean. Every letter offered to :meth:`DeadLetters.send` is in exactly one of
four states, so the counts always add up to the letters offered:

- ``sent``: acknowledged by the broker (``acks=all`` with kafka-python's defaults);
- ``dropped_rate``: over the rate, counted and never sent. A token bucket of ``rate_per_s``
  tokens a second holding at most ``max(1, rate_per_s)`` (one second's worth, full at the
  start) admits letters, so over any interval of ``t`` seconds at most
  ``rate_per_s * t + max(1, rate_per_s)`` letters are sent, and no letter is dropped while
  the bucket holds a token;
- ``dropped_undeliverable``: the producer gave up on it (its retries ran out after
  ``delivery_timeout_ms``, or the record cannot be produced at all: too large, the topic
  refused, no metadata within ``max_block_ms``);
- ``pending``: handed to the producer, not yet acknowledged nor failed.

What a commit waits for. The agent commits offsets only once what they cover is accounted
for: :meth:`DeadLetters.flush` is its ``before_commit`` and is True only when nothing is
pending. A letter dropped for the rate or found undeliverable *is* accounted for: its counter
says so (and undeliverable ones are logged with their source), so neither blocks a commit;
otherwise one letter the topic can never take (too large for it, writes refused) would stop
every commit of the agent for good. A letter still in flight is not: the commit is skipped,
and if the agent dies before the letter is acknowledged, its record is read again after the
restart and its letter sent again. Delivery is therefore at least once: a record read twice
(after a crash, a restart or a rebalance) is sent twice, with the same ``embmon-source``.

>>> from kafka.future import Future
>>> class Broker:  # a stand-in producer that acknowledges every record at once
...     def __init__(self):
...         self.records = []
...     def send(self, topic, *, value, headers):
...         self.records.append((topic, value, dict(headers)))
...         return Future().success(None)
...     def close(self, timeout=None):
...         pass
>>> broker, now = Broker(), [0.0]
>>> letters = DeadLetters(lambda: broker, "rejected", rate_per_s=2, clock=lambda: now[0])
>>> bad = [Reject("invalid_json", "not JSON", 3, offset, value=b"{oops") for offset in range(5)]
>>> letters.send(("events", 3), bad)
>>> letters.flush(1.0), letters.counts()
(True, DeadLetterCounts(sent=2, dropped_rate=3, dropped_undeliverable=0, pending=0))
>>> broker.records[1]  # doctest: +NORMALIZE_WHITESPACE
('rejected', b'{oops', {'embmon-reason': b'invalid_json', 'embmon-detail': b'not JSON',
                        'embmon-source': b'events/3/1'})
>>> now[0] = 1.0  # a second later, two more tokens
>>> letters.send(("events", 3), bad)
>>> letters.counts().sent, letters.counts().dropped_rate
(4, 6)
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from kafka.errors import KafkaError, KafkaTimeoutError

from exporters.snapshot import DeadLetterCounts

from .decode import Reject
from .source import Partition

__all__ = ["DeadLetters", "Delivery", "Producer", "TokenBucket"]

log = logging.getLogger("embmon")


class Delivery(Protocol):
    """What ``Producer.send`` returns (kafka-python's ``FutureRecordMetadata`` fits)."""

    def add_callback(self, f: Callable[..., object], *args: object) -> object: ...
    def add_errback(self, f: Callable[..., object], *args: object) -> object: ...


class Producer(Protocol):
    """The part of kafka-python's ``KafkaProducer`` the dead letters use."""

    def send(self, topic: str, *, value: bytes, headers: list[tuple[str, bytes]]) -> Delivery: ...
    def close(self, timeout: float | None = None) -> None: ...


class TokenBucket:
    """Admits ``rate`` events a second on average and bursts of at most ``capacity``.

    The bucket starts full. Over any interval of ``t`` seconds it admits at most
    ``rate * t + capacity`` events.

    >>> now = [0.0]
    >>> bucket = TokenBucket(rate=1.0, capacity=2.0, clock=lambda: now[0])
    >>> [bucket.take() for _ in range(3)]
    [True, True, False]
    >>> now[0] = 1.5
    >>> [bucket.take() for _ in range(2)]
    [True, False]
    """

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._stamp = clock()

    def take(self) -> bool:
        """Spend a token if there is one."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class DeadLetters:
    """Sends rejected records to ``topic`` through a producer made on the first letter.

    ``producer_factory`` is called only when there is a first letter to send (an agent that
    never rejects a record never connects a producer); if it fails, the letters of that call
    are undeliverable and the next call tries again. ``clock`` (seconds) drives the rate limit.
    ``send`` runs on the agent's loop; deliveries are counted on the producer's thread; the
    counts are read from the metrics endpoint's: one lock guards them.
    """

    def __init__(
        self,
        producer_factory: Callable[[], Producer],
        topic: str,
        rate_per_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_per_s > 0:
            raise ValueError(
                f"dead_letter_rate must be above 0 (got {rate_per_s}); "
                "to send no dead letters, leave dead_letter_topic unset"
            )
        self.topic = topic
        self._factory = producer_factory
        self._bucket = TokenBucket(rate_per_s, max(1.0, rate_per_s), clock)
        self._rate = rate_per_s
        self._producer: Producer | None = None
        self._done = threading.Condition()
        self._sent = self._dropped_rate = self._undeliverable = self._pending = 0

    def send(self, partition: Partition, rejects: Sequence[Reject]) -> None:
        """Send a letter per reject of ``partition`` (``(topic, partition)``), as the rate allows.

        Never raises for a Kafka error: a letter that cannot be handed to the producer is
        counted undeliverable. When the producer cannot even take one (no metadata, a full
        buffer, no producer: each waits up to ``max_block_ms``), the rest of the call is
        undeliverable too, so one call blocks the loop once at most.
        """
        for i, reject in enumerate(rejects):
            if not self._bucket.take():
                self._drop_for_rate()
                continue
            source = f"{partition[0]}/{reject.partition}/{reject.offset}"
            try:
                self._produce(reject, source)
            except KafkaTimeoutError as exc:
                self._failed(source, reject.reason, exc, count=len(rejects) - i)
                return
            except KafkaError as exc:
                self._failed(source, reject.reason, exc)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every letter in flight; True when none is left.

        The producer sends at once (kafka-python's default ``linger_ms=0``), so this only
        waits: it is the agent's ``before_commit``, and a False skips that commit.
        """
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` seconds for letters in flight, then close the producer.

        Letters still in flight then are not counted as sent; the agent did not commit their
        records, so whoever resumes the group reads them again.
        """
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if not self.flush(timeout):
            log.warning(
                "closing with %d dead letter(s) not acknowledged; their records were not "
                "committed and will be read again",
                self.counts().pending,
            )
        # kafka-python's close raises KafkaTimeoutError from its own flush while records are
        # in flight (its network thread is a daemon: the process still exits).
        with contextlib.suppress(KafkaTimeoutError):
            producer.close(timeout=0.0)

    def counts(self) -> DeadLetterCounts:
        with self._done:
            return DeadLetterCounts(
                sent=self._sent,
                dropped_rate=self._dropped_rate,
                dropped_undeliverable=self._undeliverable,
                pending=self._pending,
            )

    def _produce(self, reject: Reject, source: str) -> None:
        if self._producer is None:
            try:
                self._producer = self._factory()
            except KafkaError as exc:  # no broker in time: the next letters would wait as long
                raise KafkaTimeoutError(f"no dead-letter producer: {exc}") from exc
        headers = [
            ("embmon-reason", reject.reason.encode()),
            ("embmon-detail", reject.detail.encode()),
            ("embmon-source", source.encode()),
        ]
        delivery = self._producer.send(self.topic, value=reject.value or b"", headers=headers)
        with self._done:
            self._pending += 1
        # Outside the lock: a delivery already done runs its callback right here, and none
        # runs before it is added, so the letter is pending before it can be counted done.
        delivery.add_callback(self._delivered)
        delivery.add_errback(self._undelivered, source, reject.reason)

    def _delivered(self, _metadata: object) -> None:
        with self._done:
            self._pending -= 1
            self._sent += 1
            self._done.notify_all()

    def _undelivered(self, source: str, reason: str, exc: BaseException) -> None:
        with self._done:
            self._pending -= 1
            self._undeliverable += 1
            self._done.notify_all()
        _warn_undeliverable(source, reason, exc)

    def _failed(self, source: str, reason: str, exc: BaseException, count: int = 1) -> None:
        with self._done:
            self._undeliverable += count
        _warn_undeliverable(source, reason, exc, count)

    def _drop_for_rate(self) -> None:
        with self._done:
            self._dropped_rate += 1
            first = self._dropped_rate == 1
        if first:
            log.warning(
                "more than %g dead letters a second: the rest are counted in "
                'embmon_dead_letters_dropped_total{reason="rate"}, not sent',
                self._rate,
            )


def _warn_undeliverable(source: str, reason: str, exc: BaseException, count: int = 1) -> None:
    more = f", and the {count - 1} after it" if count > 1 else ""
    log.warning("dead letter of %s (%s) undeliverable%s: %s", source, reason, more, exc)
