"""``embmon run`` under the group events and loads that once cost events, on the real broker.

* Thousands of windows due at once, amid a fuzz mix of bad records, with a short
  ``max_poll_interval_ms``: closing them once outlived the poll interval, the member was
  evicted, and events were lost and counted twice. Now closing is chunked and the member stays.
* One window's profile cannot be written: it used to crash the agent (and crash-loop it);
  now that window is held and retried while the others are persisted.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from exporters.profile_sink import ProfileSink
from exporters.records import SegmentKey
from tests.agent_scenarios import (
    MODEL,
    T0,
    AgentProcess,
    Event,
    Metrics,
    digits_events,
    digits_reference,
    expected_counts,
    iso,
    wait_for,
    window_counts,
)
from tests.broker import new_topic, produce
from tests.test_agent_bad_input import BAD, EXPECTED, MAX_EVENT_BYTES

pytestmark = pytest.mark.kafka

MINUTE = 60
MODELS = 40
WINDOWS = 50
PER_WINDOW = 2
BAD_COPIES = 30
TRICKLE = 600  # live events on partition 1, one event-second apart


def _many_windows() -> tuple[list[Event], Counter[tuple[str, str]]]:
    """``MODELS`` models times ``WINDOWS`` one-minute windows, all events in time order."""
    events: list[Event] = []
    expected: Counter[tuple[str, str]] = Counter()
    for k in range(MODELS):
        model = f"m{k:02d}"
        mine = digits_events(
            windows=WINDOWS, per_window=PER_WINDOW, window_s=MINUTE, seed=k, model=model
        )
        events += mine
        expected += expected_counts(mine, model)
    events.sort(key=lambda e: e.window_start)
    return events, expected


def _minute(event: Event) -> int:
    """The start of the one-minute window of ``event``."""
    return int(orjson.loads(event.value)["timestamp"]) // MINUTE * MINUTE


def _count(m: Metrics, name: str, label: str) -> dict[str, float]:
    return m.by(name, label)


def test_thousands_of_windows_closing_at_once_amid_bad_records_lose_and_double_nothing(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    reference = digits_reference(tmp_path_factory)
    good, expected = _many_windows()
    bad = [value for _ in range(BAD_COPIES) for _, value in BAD]
    # Bad records spread through the good ones, then one event per partition two hours on:
    # with an hour of lateness that is what makes all 2,000 windows due in the same turn.
    mixed: list[bytes | None] = []
    every = len(good) // len(bad) + 1
    for i, event in enumerate(good):
        mixed.append(event.value)
        if i % every == 0 and bad:
            mixed.append(bad.pop())
    mixed += bad
    sentinels = digits_events(
        windows=1, per_window=2, start=T0 + 3 * 3600, seed=99, model="sentinel"
    )
    mixed += [e.value for e in sentinels]
    topic = new_topic(kafka_bootstrap, 2, prefix="slow")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
    for i, value in enumerate(mixed):  # keyed: a tombstone (None) needs a key
        producer.send(topic, value=value, key=b"%d" % i, partition=i % 2)
    producer.flush()
    producer.close()
    agent = AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=f"g-{uuid.uuid4().hex[:8]}",
        reference=reference,
        out=tmp_path / "out",
        window="1m",
        lateness="1h",
        extra=[
            "--max-poll-interval-ms",
            "4000",
            "--max-event-bytes",
            str(MAX_EVENT_BYTES),
            "--segment-keys",
            "region",
            "--max-models",
            "100",
        ],
    )
    with agent:
        wanted = sum(expected.values())
        wait_for(
            lambda: sum(window_counts(agent.out).values()) >= wanted,
            timeout_s=240,
            what=f"{wanted} events in closed windows",
            agents=[agent],
        )
        m = agent.metrics()
        counts = window_counts(agent.out)
        del counts[("sentinel", iso(T0 + 3 * 3600))]
        log = agent.log_text()
    assert counts == expected, "windows.jsonl per (model, window)"
    events = _count(m, "embmon_events_total", "model")
    assert sum(events.values()) == wanted + len(sentinels), "each good event counted once"
    rejected = _count(m, "embmon_events_rejected_total", "reason")
    assert {r: int(n) for r, n in rejected.items() if n} == {
        r: n * BAD_COPIES for r, n in EXPECTED.items()
    }
    assert "partitions revoked" not in log, "the member stayed in its group"


def test_a_window_that_cannot_be_persisted_holds_its_offsets_and_spares_the_others(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The profile file of one window cannot be written (a directory is in the way, as a
    full or read-only volume would refuse it): the windows around it are persisted, the
    partition's commit stops below that window's events, and once the way is clear the
    window is persisted on the next try."""
    reference = digits_reference(tmp_path_factory)
    events = digits_events(windows=3, per_window=40, window_s=MINUTE, seed=4)
    sentinel = digits_events(windows=1, per_window=1, start=T0 + 3600, seed=5, model="sentinel")
    topic = new_topic(kafka_bootstrap, 1, prefix="persist")
    group = f"g-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    blocked = T0 + MINUTE
    obstacle = ProfileSink(out).path_for(MODEL, SegmentKey(), blocked).with_suffix(".tmp")
    obstacle.mkdir(parents=True)
    produce(kafka_bootstrap, topic, [(0, e.value, None) for e in events + sentinel])
    agent = AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=group,
        reference=reference,
        out=out,
        window="1m",
    )
    want = expected_counts(events)
    with agent:
        wait_for(
            lambda: set(window_counts(out)) == set(want) - {(MODEL, iso(blocked))},
            "the windows around the blocked one",
            agents=[agent],
        )
        assert "could not persist window" in agent.log_text()
        m = agent.metrics()
        assert m.get("embmon_windows_held") == 1
        assert (m.get("embmon_persist_errors_total") or 0) >= 1
        probe = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
        committed = probe.committed(TopicPartition(topic, 0))
        probe.close()
        assert committed is None or committed <= 40, "no commit past the blocked window"
        obstacle.rmdir()
        wait_for(lambda: window_counts(out) == want, "the blocked window", agents=[agent])


def test_a_flood_of_model_names_is_folded_in_the_window_state(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """300 model names, one event each, with ``--max-models 5``: five models and ``other``
    get windows; every event is in one of them."""
    reference = digits_reference(tmp_path_factory)
    flood = [
        e
        for k in range(300)
        for e in digits_events(windows=1, per_window=1, window_s=MINUTE, seed=k, model=f"f{k}")
    ]
    sentinel = digits_events(windows=1, per_window=1, start=T0 + 3600, seed=7, model="f0")
    topic = new_topic(kafka_bootstrap, 1, prefix="flood")
    produce(kafka_bootstrap, topic, [(0, e.value, None) for e in flood + sentinel])
    agent = AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=f"g-{uuid.uuid4().hex[:8]}",
        reference=reference,
        out=tmp_path / "out",
        window="1m",
        extra=["--max-models", "5"],
    )
    with agent:
        wait_for(
            lambda: sum(window_counts(agent.out).values()) >= len(flood),
            "the flood's window closed",
            agents=[agent],
        )
        counts = window_counts(agent.out)
        log = agent.log_text()
    assert counts == Counter({**{(f"f{k}", iso(T0)): 1 for k in range(5)}, ("other", iso(T0)): 295})
    assert "as 'other'" in log
