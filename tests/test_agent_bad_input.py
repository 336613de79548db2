"""``embmon run`` on a topic that mixes good events with every kind of bad record.

The agent stays up, counts every good event in ``windows.jsonl``, counts each bad record under
its reason in ``embmon_events_rejected_total{reason}``, and forwards each one to the
``--dead-letter-topic`` with its reason in the ``embmon-reason`` header.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from agent.decode import REJECT_REASONS, Decoder
from agent.source import RawRecord
from tests.agent_scenarios import (
    MODEL,
    T0,
    AgentProcess,
    Metrics,
    digits_events,
    digits_reference,
    expected_counts,
    window_counts,
)
from tests.broker import new_topic

PARTITIONS = 2
DAYS = 2
PER_DAY = 150
DIM = 64
MAX_EVENT_BYTES = 4096


def _event(**fields: object) -> dict[str, object]:
    event: dict[str, object] = {"timestamp": T0 + 3600, "model": MODEL, "embedding": [1.0] * DIM}
    event.update(fields)
    return {k: v for k, v in event.items() if v is not None}


def _json(**fields: object) -> bytes:
    return orjson.dumps(_event(**fields))


def _b64(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def _raw_number(text: str) -> bytes:
    """An event whose first embedding value is written as ``text`` (a JSON number literal)."""
    return _json(embedding=[0.5] * DIM).replace(b"[0.5,", f"[{text},".encode(), 1)


# (expected reason, record value); None is a tombstone.
BAD: list[tuple[str, bytes | None]] = [
    ("invalid_json", b'{"not json'),
    ("invalid_json", b""),
    ("invalid_json", b"\xff\xfe garbage"),
    ("invalid_json", None),
    ("not_object", b"[1.0, 2.0, 3.0]"),
    ("not_object", b'"an embedding"'),
    ("not_object", b"null"),
    ("missing_embedding", _json(embedding=None)),
    ("missing_embedding", _json(embedding=None, vector=[1.0] * DIM)),
    ("wrong_dimension", _json(embedding=[1.0] * (DIM - 1))),
    ("wrong_dimension", _json(embedding=[])),
    ("wrong_dimension", _json(embedding=None, embedding_b64=_b64([1.0] * (DIM + 1)))),
    ("non_finite", _raw_number("1e39")),  # finite as a double, infinite as float32
    ("non_finite", _raw_number("-1e39")),
    ("non_finite", _json(embedding=None, embedding_b64=_b64([float("nan")] * DIM))),
    ("non_finite", _json(embedding=None, embedding_b64=_b64([0.0] * (DIM - 1) + [float("inf")]))),
    ("non_finite", json.dumps(_event(embedding=[float("nan")] * DIM)).encode()),  # NaN literal
    ("non_finite", json.dumps(_event(embedding=[float("-inf")] + [0.0] * (DIM - 1))).encode()),
    ("non_finite", _json(embedding=[None] + [0.0] * (DIM - 1))),  # NaN as written by encoders
    ("wrong_type", _json(embedding=["1.0"] + [0.0] * (DIM - 1))),
    ("wrong_type", _json(embedding=[True] + [0.0] * (DIM - 1))),
    ("wrong_type", _json(embedding="1,2,3")),
    ("wrong_type", _json(text=42)),
    ("wrong_type", _json(text=["not", "a", "string"])),
    ("wrong_type", _json(tokens="not a list")),
    ("wrong_type", _json(embedding=None, embedding_b64="!!not base64!!")),
    ("wrong_type", _json(embedding=None, embedding_b64=base64.b64encode(b"1234567").decode())),
    ("wrong_type", _json(embedding=None, embedding_b64=12345)),
    ("wrong_type", _json(model=7)),
    ("wrong_type", _json(target=1.5)),
    ("oversized", _json(text="padding " * (MAX_EVENT_BYTES // 8))),
    ("oversized", b"[" + b"0," * MAX_EVENT_BYTES + b"0]"),  # size is checked before parsing
    ("bad_timestamp", _json(timestamp="yesterday")),
    ("bad_timestamp", _json(timestamp=(T0 + 3600) * 1000)),  # milliseconds
    ("bad_timestamp", _json(timestamp=-5)),
    ("bad_timestamp", _json(timestamp=True)),
    ("bad_timestamp", _json(timestamp=[T0])),
    ("future_timestamp", _json(timestamp=32_503_680_000)),  # year 3000
    # Poison pills: each of these once crashed the agent, which then crash-looped on restart.
    ("bad_name", _json(model="m" * 300)),
    ("bad_name", _json(segment={"region": "r" * 300})),
    ("bad_name", _json(model="tab\there")),
    ("bad_name", _json(target="t" * 129)),
    ("invalid_json", _json(model="MODEL").replace(b"MODEL", b"\\ud800")),
    ("invalid_json", _json(prediction="P").replace(b"P", b"\xed\xa0\x80")),
    ("non_finite", _raw_number("1" * 400)),
    ("bad_timestamp", _json(timestamp=0).replace(b'"timestamp":0', b'"timestamp":' + b"9" * 400)),
]
EXPECTED = Counter(reason for reason, _ in BAD)


def test_every_reason_is_covered_by_the_bad_records() -> None:
    assert set(EXPECTED) == set(REJECT_REASONS)


def test_bad_records_decode_to_their_reasons() -> None:
    """The same records through the decoder alone, so a wrong reason is named precisely."""
    decoder = Decoder(DIM, segment_keys=["region"], max_event_bytes=MAX_EVENT_BYTES)
    decoded = decoder.decode([RawRecord(value, -1, 0, i) for i, (_, value) in enumerate(BAD)])
    assert decoded.events == 0
    assert [(r.offset, r.reason) for r in decoded.rejects] == [
        (i, reason) for i, (reason, _) in enumerate(BAD)
    ]


def test_number_overflowing_a_double_is_non_finite() -> None:
    decoded = Decoder(DIM).decode([RawRecord(_raw_number("1e999"), -1)])
    assert [r.reason for r in decoded.rejects] == ["non_finite"]


@pytest.mark.kafka
def test_agent_stays_up_counts_good_events_and_each_reject_under_its_reason(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    reference = digits_reference(tmp_path_factory)
    good = digits_events(windows=DAYS, per_window=PER_DAY, seed=11)
    # Bad records spread through both partitions, between good events of both days.
    stream: list[tuple[int, bytes | None]] = []
    bad = iter(BAD)
    for i, event in enumerate(good):
        stream.append((i % PARTITIONS, event.value))
        if i % 5 == 3:
            record = next(bad, None)
            if record is not None:
                stream.append((i % PARTITIONS, record[1]))
    assert next(bad, None) is None, "spread the bad records over fewer good ones"
    topic = new_topic(kafka_bootstrap, PARTITIONS, prefix="bad")
    dead = new_topic(kafka_bootstrap, 1, prefix="dead")
    _produce(kafka_bootstrap, topic, stream)

    out, gid = tmp_path / "out", f"g-{uuid.uuid4().hex[:8]}"
    flags = ("--max-event-bytes", str(MAX_EVENT_BYTES), "--segment-keys", "region")
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=gid,
        reference=reference,
        out=out,
        extra=(*flags, "--dead-letter-topic", dead),
    ) as agent:
        agent.wait_ready()

        def consumed(m: Metrics) -> bool:
            lag = m.by("embmon_consumer_lag_records", "partition", topic=topic)
            return (
                len(lag) == PARTITIONS
                and sum(lag.values()) == 0
                and (m.get("embmon_events_total", model=MODEL) == len(good))
            )

        scrape = agent.wait_metrics(consumed, "every record read")
        rejected = scrape.by("embmon_events_rejected_total", "reason")
        assert rejected == {reason: float(n) for reason, n in EXPECTED.items()}
        assert agent.returncode is None
        assert agent.get("/healthz")[0] == 200
        agent.terminate()
        assert agent.wait_exit(10) == 0, agent.log_tail()
    log = agent.log_text()
    assert "Traceback" not in log

    # Dead letters: each bad record once, its bytes intact, its reason and origin in headers.
    letters = _read_all(kafka_bootstrap, dead, len(BAD))
    assert Counter((h["embmon-reason"], v) for h, v in letters) == Counter(
        (reason.encode(), value or b"") for reason, value in BAD
    )
    for headers, _ in letters:
        assert headers["embmon-source"].startswith(f"{topic}/".encode())
        assert headers["embmon-detail"]

    # Finish the open day: every good event is in windows.jsonl, exactly once.
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=gid,
        reference=reference,
        out=out,
        until_end=True,
        extra=flags,
        name="finish",
    ) as finish:
        assert finish.wait_exit(120) == 0, finish.log_tail()
    assert window_counts(out) == expected_counts(good)


def _produce(bootstrap: str, topic: str, stream: list[tuple[int, bytes | None]]) -> None:
    """Send ``(partition, value)`` records; a tombstone (None) needs a key, so all get one."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for i, (partition, value) in enumerate(stream):
            producer.send(topic, value=value, key=b"%d" % i, partition=partition)
        producer.flush()
    finally:
        producer.close()


def _read_all(bootstrap: str, topic: str, count: int) -> list[tuple[dict[str, bytes], bytes]]:
    """The records of the one-partition ``topic`` as (headers, value); expects ``count``.

    Reads until ``count`` arrived (Tansu's ListOffsets can be short of the end), then one more
    poll to catch any extra.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records: list[tuple[dict[str, bytes], bytes]] = []
        deadline = time.monotonic() + 30
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((dict(r.headers), r.value or b"") for r in batch)
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend((dict(r.headers), r.value or b"") for r in batch)
        assert len(records) == count, f"{len(records)} dead letters, expected {count}"
        return records
    finally:
        consumer.close()
