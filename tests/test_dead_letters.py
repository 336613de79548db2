"""Dead letters: every reject on the dead-letter topic, rate-limited, and never behind a commit.

Units (a stand-in producer, a fake clock): the token bucket, the four counts adding up, what
holds a flush and what does not, the lazy producer. Against the real broker, through
``embmon run``: a mixed stream's rejects arrive with reason, source and bytes and ``/metrics``
counts them; a burst over ``--dead-letter-rate`` is counted exactly, sent or dropped; and,
behind a proxy that holds every Produce request (a broker slow to acknowledge), the agent
commits no offset past a reject whose letter is not on the topic, even when killed with
SIGKILL, then commits everything once the letters are acknowledged.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.future import Future

from agent.dead_letters import DeadLetters
from agent.decode import Reject
from exporters.prometheus import DeadLetterCounts, EmbmonCollector, Snapshot
from tests.agent_scenarios import (
    HOUR,
    MODEL,
    AgentProcess,
    Metrics,
    digits_events,
    digits_reference,
    wait_for,
)
from tests.broker import new_topic
from tests.secure_broker import TansuProcess
from tests.test_agent_bad_input import BAD, MAX_EVENT_BYTES

DEAD_LETTER_METRICS = {
    "embmon_dead_letters_sent_total",
    "embmon_dead_letters_dropped_total",
    "embmon_dead_letters_pending",
}


# --- units: a stand-in producer -------------------------------------------------------------


class FakeProducer:
    """Keeps every record with its delivery; ``errors`` makes the next sends raise."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, dict[str, bytes]]] = []
        self.deliveries: list[Future] = []
        self.errors: list[Exception] = []
        self.closed = False

    def send(self, topic: str, *, value: bytes, headers: list[tuple[str, bytes]]) -> Future:
        if self.errors:
            raise self.errors.pop(0)
        self.records.append((topic, value, dict(headers)))
        self.deliveries.append(Future())
        return self.deliveries[-1]

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def acknowledge(self) -> None:
        for delivery in self.deliveries:
            if not delivery.is_done:
                delivery.success(None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _rejects(n: int, start: int = 0) -> list[Reject]:
    return [Reject("invalid_json", "not JSON", 0, start + i, value=b"{%d" % i) for i in range(n)]


def _letters(
    rate: float = 1000.0,
) -> tuple[DeadLetters, FakeProducer, Clock, list[FakeProducer]]:
    producer, clock, made = FakeProducer(), Clock(), []

    def factory() -> FakeProducer:
        made.append(producer)
        return producer

    return DeadLetters(factory, "dlq", rate, clock=clock), producer, clock, made


def _total(c: DeadLetterCounts) -> int:
    return c.sent + c.dropped_rate + c.dropped_undeliverable + c.pending


def test_token_bucket_sends_a_burst_then_the_rate_and_counts_every_letter() -> None:
    letters, producer, clock, _ = _letters(rate=5)
    letters.send(("events", 0), _rejects(100))  # a burst: one second's worth goes out
    producer.acknowledge()
    assert letters.counts() == DeadLetterCounts(sent=5, dropped_rate=95)
    clock.now = 0.5  # 2.5 tokens: two letters, half a token left
    letters.send(("events", 0), _rejects(10, 100))
    clock.now = 1.1  # 0.5 + 0.6 s of tokens: three more
    letters.send(("events", 0), _rejects(10, 110))
    clock.now = 100.0  # idle for long: the bucket holds one second's worth, no more
    letters.send(("events", 0), _rejects(10, 120))
    producer.acknowledge()
    assert letters.counts() == DeadLetterCounts(sent=15, dropped_rate=115)
    assert [h["embmon-source"] for _, _, h in producer.records[5:10]] == [
        b"events/0/100",
        b"events/0/101",
        b"events/0/110",
        b"events/0/111",
        b"events/0/112",
    ]


def test_a_rate_below_one_a_second_still_sends_one_letter() -> None:
    letters, producer, clock, _ = _letters(rate=0.5)
    letters.send(("events", 0), _rejects(3))
    clock.now = 2.0
    letters.send(("events", 0), _rejects(3, 3))
    producer.acknowledge()
    assert letters.counts() == DeadLetterCounts(sent=2, dropped_rate=4)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan])
def test_a_rate_that_sends_nothing_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="dead_letter_rate"):
        DeadLetters(FakeProducer, "dlq", rate)


def test_letters_in_flight_hold_the_flush_and_are_pending() -> None:
    letters, producer, _, _ = _letters()
    letters.send(("events", 0), _rejects(3))
    assert letters.counts() == DeadLetterCounts(pending=3)
    assert letters.flush(0.01) is False
    producer.deliveries[0].success(None)
    producer.deliveries[1].success(None)
    assert letters.flush(0.01) is False
    threading.Timer(0.05, producer.deliveries[2].success, (None,)).start()  # the IO thread
    assert letters.flush(10.0) is True
    assert letters.counts() == DeadLetterCounts(sent=3)


def test_an_undeliverable_letter_is_counted_and_does_not_hold_the_flush() -> None:
    letters, producer, _, _ = _letters()
    letters.send(("events", 0), _rejects(2))
    producer.deliveries[0].failure(KafkaTimeoutError("expired after delivery_timeout_ms"))
    producer.deliveries[1].success(None)
    assert letters.flush(0.0) is True
    assert letters.counts() == DeadLetterCounts(sent=1, dropped_undeliverable=1)


def test_a_record_too_large_is_undeliverable_and_the_next_ones_are_sent() -> None:
    letters, producer, _, _ = _letters()
    producer.errors = [MessageSizeTooLargeError("5000000 bytes")]
    letters.send(("events", 0), _rejects(3))
    producer.acknowledge()
    assert letters.counts() == DeadLetterCounts(sent=2, dropped_undeliverable=1)


def test_no_metadata_in_time_makes_the_rest_of_the_call_undeliverable_at_once() -> None:
    """One wait of ``max_block_ms`` per call, not one per letter."""
    letters, producer, _, _ = _letters()
    producer.errors = [KafkaTimeoutError("Failed to update metadata after 1.0 secs.")]
    letters.send(("events", 0), _rejects(50))
    assert producer.records == []
    assert letters.counts() == DeadLetterCounts(dropped_undeliverable=50)
    letters.send(("events", 0), _rejects(1, 50))  # the next call tries again
    producer.acknowledge()
    assert letters.counts() == DeadLetterCounts(sent=1, dropped_undeliverable=50)


def test_the_producer_is_made_on_the_first_letter_and_again_after_it_failed() -> None:
    producer = FakeProducer()
    attempts: list[int] = []

    def factory() -> FakeProducer:
        attempts.append(1)
        if len(attempts) == 1:
            raise KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9092")
        return producer

    letters = DeadLetters(factory, "dlq", 100.0)
    assert letters.flush(0.0) is True and attempts == []
    letters.close()
    letters.send(("events", 0), _rejects(3))
    assert len(attempts) == 1 and letters.counts() == DeadLetterCounts(dropped_undeliverable=3)
    letters.send(("events", 0), _rejects(2, 3))
    letters.send(("events", 0), _rejects(2, 5))
    producer.acknowledge()
    assert len(attempts) == 2
    assert letters.counts() == DeadLetterCounts(sent=4, dropped_undeliverable=3)
    letters.close()
    assert producer.closed


def test_a_letter_carries_the_raw_bytes_and_reason_detail_and_source_headers() -> None:
    letters, producer, _, _ = _letters()
    tombstone = Reject("invalid_json", "no value (a tombstone)", 7, 41)
    raw = Reject("wrong_dimension", "embedding: 63 values, expected 64", 7, 42, value=b"\x00{")
    letters.send(("events", 7), [tombstone, raw])
    assert producer.records == [
        (
            "dlq",
            b"",
            {
                "embmon-reason": b"invalid_json",
                "embmon-detail": b"no value (a tombstone)",
                "embmon-source": b"events/7/41",
            },
        ),
        (
            "dlq",
            b"\x00{",
            {
                "embmon-reason": b"wrong_dimension",
                "embmon-detail": b"embedding: 63 values, expected 64",
                "embmon-source": b"events/7/42",
            },
        ),
    ]


def _families(snapshot: Snapshot) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        s.name: [(dict(x.labels), x.value) for x in f.samples if x.name == s.name]
        for f in EmbmonCollector(lambda: snapshot).collect()
        for s in f.samples
    }


def test_dead_letter_metrics_are_exported_only_with_a_dead_letter_topic() -> None:
    base = Snapshot("v", "r", None, 60.0, 0.0, {}, {}, 0, {}, (), {}, 0, None)
    assert not DEAD_LETTER_METRICS & set(_families(base))
    counts = DeadLetterCounts(sent=4, dropped_rate=3, dropped_undeliverable=2, pending=1)
    families = _families(Snapshot(**{**base.__dict__, "dead_letters": counts}))
    assert families["embmon_dead_letters_sent_total"] == [({}, 4.0)]
    assert families["embmon_dead_letters_dropped_total"] == [
        ({"reason": "rate"}, 3.0),
        ({"reason": "undeliverable"}, 2.0),
    ]
    assert families["embmon_dead_letters_pending"] == [({}, 1.0)]


def test_dead_letter_metrics_are_documented() -> None:
    root = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "docs/contracts.md"):
        text = (root / doc).read_text(encoding="utf-8")
        assert {m for m in DEAD_LETTER_METRICS if f"| `{m}` |" not in text} == set(), doc


# --- against the real broker ----------------------------------------------------------------


class Letter(NamedTuple):
    reason: bytes
    source: bytes
    detail: bytes
    value: bytes


def _produce(bootstrap: str, topic: str, stream: list[tuple[int, bytes | None]]) -> list[int]:
    """Send ``(partition, value)`` records in order; returns each one's offset (a new topic)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        futures = [
            producer.send(topic, value=value, key=b"%d" % i, partition=partition)
            for i, (partition, value) in enumerate(stream)
        ]
        producer.flush()
        return [int(f.get(timeout=10).offset) for f in futures]
    finally:
        producer.close()


def _read_letters(bootstrap: str, topic: str, count: int) -> list[Letter]:
    """Every record of the one-partition ``topic``: polls until ``count`` arrived, then until a
    poll brings nothing, so extras are caught too."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        letters: list[Letter] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = [r for rs in consumer.poll(timeout_ms=1000).values() for r in rs]
            for r in batch:
                h = dict(r.headers)
                letters.append(
                    Letter(h["embmon-reason"], h["embmon-source"], h["embmon-detail"], r.value)
                )
            if not batch and len(letters) >= count:
                return letters
        pytest.fail(f"{len(letters)} dead letters on {topic} after 30 s, expected {count}")
    finally:
        consumer.close()


def _dead_letter_counts(m: Metrics) -> tuple[float, float, float, float]:
    """(sent, dropped for rate, undeliverable, pending) in a scrape; -1 where absent."""

    def get(name: str, **labels: str) -> float:
        value = m.get(name, **labels)
        return -1.0 if value is None else value

    return (
        get("embmon_dead_letters_sent_total"),
        get("embmon_dead_letters_dropped_total", reason="rate"),
        get("embmon_dead_letters_dropped_total", reason="undeliverable"),
        get("embmon_dead_letters_pending"),
    )


@pytest.mark.kafka
def test_every_reject_of_a_mixed_stream_is_a_dead_letter_with_its_source_and_bytes(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    good = digits_events(windows=1, per_window=200, seed=5)
    stream: list[tuple[int, bytes | None]] = []
    kinds: list[tuple[str, bytes | None] | None] = []  # (reason, value) of each bad record
    bad = iter(BAD)
    for i, event in enumerate(good):
        stream.append((i % 2, event.value))
        kinds.append(None)
        record = next(bad, None) if i % 3 == 1 else None
        if record is not None:
            stream.append((i % 2, record[1]))
            kinds.append(record)
    assert next(bad, None) is None, "spread the bad records over more good ones"
    topic = new_topic(kafka_bootstrap, 2, prefix="mixed")
    dead = new_topic(kafka_bootstrap, 1, prefix="dead")
    offsets = _produce(kafka_bootstrap, topic, stream)
    expected = Counter(
        (reason.encode(), f"{topic}/{partition}/{offset}".encode(), value or b"")
        for (partition, _), offset, kind in zip(stream, offsets, kinds, strict=True)
        if kind is not None
        for reason, value in [kind]
    )
    assert sum(expected.values()) == len(BAD)

    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=f"g-{uuid.uuid4().hex[:8]}",
        reference=digits_reference(tmp_path_factory),
        out=tmp_path / "out",
        extra=(
            "--max-event-bytes",
            str(MAX_EVENT_BYTES),
            "--segment-keys",
            "region",
            "--dead-letter-topic",
            dead,
        ),
    ) as agent:
        agent.wait_ready()
        scrape = agent.wait_metrics(
            lambda m: (
                m.get("embmon_events_total", model=MODEL) == len(good)
                and _dead_letter_counts(m)[0] == len(BAD)
            ),
            "every good event windowed and every reject acknowledged on the dead-letter topic",
        )
        assert _dead_letter_counts(scrape) == (len(BAD), 0, 0, 0)
        assert sum(scrape.by("embmon_events_rejected_total", "reason").values()) == len(BAD)
    letters = _read_letters(kafka_bootstrap, dead, len(BAD))
    assert Counter((x.reason, x.source, x.value) for x in letters) == expected
    assert all(x.detail for x in letters)


@pytest.mark.kafka
def test_a_burst_over_the_rate_is_counted_exactly_as_sent_or_dropped(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    rate, burst = 5, 60
    topic = new_topic(kafka_bootstrap, 1, prefix="burst")
    dead = new_topic(kafka_bootstrap, 1, prefix="dead")
    _produce(kafka_bootstrap, topic, [(0, b'{"broken %d' % i) for i in range(burst)])
    started = time.monotonic()
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=f"g-{uuid.uuid4().hex[:8]}",
        reference=digits_reference(tmp_path_factory),
        out=tmp_path / "out",
        extra=("--dead-letter-topic", dead, "--dead-letter-rate", str(rate)),
    ) as agent:
        agent.wait_ready()
        scrape = agent.wait_metrics(
            lambda m: (
                m.get("embmon_events_rejected_total", reason="invalid_json") == burst
                and sum(_dead_letter_counts(m)[:2]) == burst
            ),
            "the burst read and every letter sent or dropped",
        )
        elapsed = time.monotonic() - started
    sent, dropped, undeliverable, pending = _dead_letter_counts(scrape)
    assert (undeliverable, pending) == (0, 0)
    # One second's worth goes out at once; after that no more than the rate.
    assert rate <= sent <= rate + rate * elapsed < burst
    letters = _read_letters(kafka_bootstrap, dead, int(sent))
    assert len(letters) == sent == burst - dropped
    assert len({x.source for x in letters}) == sent


# --- a broker slow to acknowledge -----------------------------------------------------------

PRODUCE = 0  # Kafka API key of a Produce request


class ProduceGate:
    """A TCP proxy in front of a broker that can hold every Produce request it is sent.

    While held, the broker has not seen the records, so it has not acknowledged them: a
    broker slow to answer. ``release(drop=True)`` first cuts every connection with what it
    held, as the death of the client would leave them: never written. Other requests
    (metadata, fetches, commits) always pass at once. The broker must advertise ``port``.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.upstream = 0
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._links: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self._open.clear()

    def release(self, *, drop: bool) -> None:
        if drop:
            with self._lock:
                links, self._links = self._links, []
            for client, server, dropped in links:
                dropped.set()
                for sock in (client, server):
                    _shut(sock)
        self._open.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            dropped = threading.Event()
            with self._lock:
                self._links.append((client, server, dropped))
            threading.Thread(target=self._requests, args=(client, server, dropped)).start()
            threading.Thread(target=self._responses, args=(server, client)).start()

    def _requests(
        self, client: socket.socket, server: socket.socket, dropped: threading.Event
    ) -> None:
        try:
            for frame in _frames(client):
                if int.from_bytes(frame[4:6], "big", signed=True) == PRODUCE:
                    self._open.wait()
                if dropped.is_set():
                    return
                server.sendall(frame)
        except OSError:  # either side closed: this link of the proxy is over
            pass
        finally:
            _shut(server)

    @staticmethod
    def _responses(server: socket.socket, client: socket.socket) -> None:
        try:
            while chunk := server.recv(65536):
                client.sendall(chunk)
        except OSError:  # either side closed: this link of the proxy is over
            pass
        finally:
            _shut(client)

    def __enter__(self) -> ProduceGate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._listener.close()
        self.release(drop=True)


def _frames(sock: socket.socket) -> Iterator[bytes]:
    """Kafka requests as they come: a 4-byte size, then that many bytes."""
    while True:
        size = _read(sock, 4)
        if size is None:
            return
        body = _read(sock, int.from_bytes(size, "big"))
        if body is None:
            return
        yield size + body


def _read(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class GroupOffset:
    """The committed offset of partition 0 of ``topic`` for ``group`` (0 when none)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        self._tp = TopicPartition(topic, 0)

    def __call__(self) -> int:
        return int(self._consumer.committed(self._tp) or 0)

    def __enter__(self) -> GroupOffset:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._consumer.close()


@pytest.mark.kafka
def test_no_offset_is_committed_past_a_dead_letter_the_broker_has_not_acknowledged(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """SIGKILL while the broker holds every letter: no commit may cover one of them.

    Four one-hour windows, bad records among the first three's events; the agent closes
    the first three (a closed window's commit is forced at once). With the letters held, the
    committed offset must stay at or before the first reject. The agent is killed, the held
    requests die with it, and every reject below the committed offset must be on the topic.
    The never-flushed producer of old committed past them all. Then, with the broker
    answering, an agent run to the end commits everything and every reject is a letter.
    """
    reference = digits_reference(tmp_path_factory)
    good = digits_events(windows=4, per_window=40, window_s=HOUR, seed=9)
    stream: list[tuple[int, bytes | None]] = []
    bad: list[int] = []  # index in stream of each bad record
    for i, event in enumerate(good):
        stream.append((0, event.value))
        if i % 10 == 3 and i < 120:
            bad.append(len(stream))
            stream.append((0, b'{"held %d' % i))
    with ProduceGate() as gate, TansuProcess(tmp_path, advertised_port=gate.port) as tansu:
        gate.upstream = tansu.port
        bootstrap = tansu.bootstrap_servers
        topic = new_topic(bootstrap, 1, prefix="held")
        dead = new_topic(bootstrap, 1, prefix="dead")
        offsets = _produce(bootstrap, topic, stream)
        rejects = {offsets[i]: stream[i][1] for i in bad}
        group = f"g-{uuid.uuid4().hex[:8]}"

        def agent(name: str, *, until_end: bool = False) -> AgentProcess:
            return AgentProcess(
                bootstrap=bootstrap,
                topic=topic,
                group=group,
                reference=reference,
                out=tmp_path / "out",
                window="1h",
                until_end=until_end,
                extra=("--dead-letter-topic", dead),
                name=name,
            )

        gate.hold()
        with agent("held") as held, GroupOffset(bootstrap, group, topic) as committed:
            held.wait_ready()

            def settled() -> Metrics | bool | None:
                if committed() > min(rejects):
                    return True  # committed past a held letter: the assertion below fails
                m = held.metrics()
                closed = sum(m.by("embmon_windows_closed_total", "model").values())
                pending = _dead_letter_counts(m)[3]
                return m if closed >= 3 and pending == len(rejects) else None

            scrape = wait_for(settled, "three windows closed, every letter held", agents=[held])
            at_kill = committed()
            held.kill()
        gate.release(drop=True)
        on_topic = {x.source for x in _read_letters(bootstrap, dead, 0)}
        uncovered = [
            o for o in sorted(rejects) if o < at_kill and _source(topic, o) not in on_topic
        ]
        assert not uncovered, (
            f"offset {at_kill} committed past {len(uncovered)} reject(s) whose dead letter was "
            f"never acknowledged (offsets {uncovered})"
        )
        assert isinstance(scrape, Metrics)
        assert _dead_letter_counts(scrape) == (0, 0, 0, len(rejects))

        with agent("finish", until_end=True) as finish:
            assert finish.wait_exit(60) == 0, finish.log_tail()
        with GroupOffset(bootstrap, group, topic) as committed:
            assert committed() == len(stream)
        letters = _read_letters(bootstrap, dead, len(rejects))
        assert Counter((x.source, x.value) for x in letters) == Counter(
            (_source(topic, o), v) for o, v in rejects.items()
        )


def _source(topic: str, offset: int) -> bytes:
    return f"{topic}/0/{offset}".encode()
