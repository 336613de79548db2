"""``embmon run`` rides out a broker outage: the broker (durable S3 storage, so records and
committed offsets survive) is SIGKILLed while the agent holds an open window, stays down for
longer than the agent's commit interval, and comes back on the same port.

The agent must neither exit nor print a traceback, must resume on its own once the broker
answers again, and every window must be written once with exactly the produced count.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from agent.kafka_source import KafkaSettings, KafkaSource
from tests.agent_scenarios import (
    HOUR,
    MODEL,
    T0,
    AgentProcess,
    Metrics,
    digits_events,
    digits_reference,
    expected_counts,
    produce_events,
    wait_for,
    window_counts,
    window_records,
)
from tests.broker import new_topic, produce
from tests.durable_broker import DurableBroker

pytestmark = pytest.mark.kafka

PARTITIONS = 2
WINDOWS = 12
FIRST_PART = 6  # windows produced before the outage
PER_WINDOW = 100
SENTINEL_WINDOW = 30  # one event per partition, far ahead, so every real window closes
OUTAGE_S = 10.0  # the shortest outage; longer than the agent's commit interval (5 s)


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offsets, read outside the group (no join)."""
    probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: probe.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        probe.close(autocommit=False)


def _foreign_tracebacks(log: str) -> list[str]:
    """Tracebacks in ``log`` with a frame outside kafka-python.

    kafka-python logs a traceback of its own when a connection is reset under it (and handles
    the error); anything else, e.g. an exception escaping the agent, is a failure.
    """
    blocks = re.findall(r"^Traceback \(most recent call last\):\n(?:[ \t].*\n)*.*$", log, re.M)
    return [
        block
        for block in blocks
        if any("/kafka/" not in f for f in re.findall(r'^\s+File "([^"]+)"', block, re.M))
    ]


def test_records_read_in_one_poll_restart_the_idle_clock(kafka_bootstrap: str) -> None:
    """A backlog that arrives all at once (after an outage, say) can leave a partition at its
    end right after the poll that read it: it was not idle meanwhile, so it is not caught up
    (which would let other partitions close windows its producer is still writing)."""
    topic = new_topic(kafka_bootstrap, 1)
    tp = TopicPartition(topic, 0)
    produce(kafka_bootstrap, topic, [(0, b"x", None)] * 3)
    cfg = KafkaSettings(kafka_bootstrap, [topic], f"g-{uuid.uuid4().hex[:8]}")
    with KafkaSource(cfg, idle_ms=300) as source:
        read = 0
        while read < 3:
            read += len(source.poll(200).records)
        wait_for(lambda: source.poll(100) and source.progress()[tp].caught_up, "idle at 3")
        produce(kafka_bootstrap, topic, [(0, b"y", None)] * 5)
        while read < 8:  # no progress() in between: nothing saw the partition behind its end
            read += len(source.poll(200).records)
        progress = source.progress()[tp]
        assert (progress.position, progress.highwater) == (8, 8)
        assert not progress.caught_up
        wait_for(lambda: source.poll(100) and source.progress()[tp].caught_up, "idle at 8")


def test_agent_rides_out_a_broker_restart(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    reference = digits_reference(tmp_path_factory)
    events = digits_events(windows=WINDOWS, per_window=PER_WINDOW, window_s=HOUR, seed=11)
    sentinels = digits_events(
        windows=1, per_window=PARTITIONS, window_s=HOUR, seed=12, start=T0 + SENTINEL_WINDOW * HOUR
    )
    first_part = FIRST_PART * PER_WINDOW
    with DurableBroker(tmp_path) as broker:
        bootstrap = broker.bootstrap_servers
        topic = new_topic(bootstrap, PARTITIONS, prefix="outage")
        gid = f"g-{uuid.uuid4().hex[:8]}"
        produced: Counter[int] = Counter()
        produced.update(
            produce_events(bootstrap, topic, PARTITIONS, [e.value for e in events[:first_part]])
        )
        with AgentProcess(
            bootstrap=bootstrap,
            topic=topic,
            group=gid,
            reference=reference,
            out=tmp_path / "out",
            window="1h",
            lateness="0s",
        ) as agent:
            agent.wait_ready()

            def read_first_part(m: Metrics) -> bool:
                lag = m.by("embmon_consumer_lag_records", "partition", topic=topic)
                return (
                    len(lag) == PARTITIONS
                    and sum(lag.values()) == 0
                    and m.get("embmon_events_total", model=MODEL) == first_part
                    and (m.get("embmon_windows_closed_total", model=MODEL) or 0) > 0
                )

            agent.wait_metrics(read_first_part, "the agent through the first part")
            closed_before = len(window_records(agent.out))
            assert 0 < closed_before < FIRST_PART  # the last window of the first part is open

            # Down for OUTAGE_S at least, and until the agent has met a failed commit (it commits
            # every 5 s): the commit is what used to raise out of the agent.
            broker.kill()
            down_since = time.monotonic()
            wait_for(
                lambda: (
                    time.monotonic() - down_since >= OUTAGE_S
                    and "offset commit failed" in agent.log_text()
                ),
                f"a broker outage of {OUTAGE_S} s with a failed commit",
                timeout_s=45,
                interval_s=0.2,
                agents=[agent],
            )
            broker.start()
            assert broker.bootstrap_servers == bootstrap

            rest = [e.value for e in events[first_part:]] + [e.value for e in sentinels]
            produced.update(produce_events(bootstrap, topic, PARTITIONS, rest))
            expected = expected_counts(events)
            wait_for(
                lambda: window_counts(agent.out) == expected,
                "every window written after the outage",
                agents=[agent],
                timeout_s=45,
            )
            # Commits resumed too: each partition's committed offset reaches its sentinel (the
            # only record of a window still open).
            want = {p: produced[p] - 1 for p in range(PARTITIONS)}
            wait_for(
                lambda: _committed(bootstrap, gid, topic) == want,
                f"committed offsets {want}",
                agents=[agent],
                timeout_s=20,
                interval_s=0.5,
            )
            assert agent.returncode is None
            assert agent.metrics().get("embmon_events_rejected_total", reason="late") is None
            log = agent.log_text()
            agent.terminate()
            assert agent.wait_exit(15) == 0, agent.log_tail()

    assert _foreign_tracebacks(log) == [], log[-4000:]
    keys = Counter((r["model"], r["window_start"]) for r in window_records(agent.out))
    assert [k for k, n in keys.items() if n > 1] == []
    assert window_counts(agent.out) == expected_counts(events)
