"""Two replicas of ``embmon run`` in one consumer group, each with its own ``--out``: the second
joins mid-stream, while the first holds open windows of every partition.

The rebalance takes partitions (and their open windows) away from the first replica; the second
re-reads them from the committed offsets. Each window's events are then split by partition
between the replicas, and the sum over both ``windows.jsonl`` per (model, window) must equal
what was produced: nothing lost, nothing doubled.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.agent_scenarios import (
    HOUR,
    MODEL,
    T0,
    AgentProcess,
    Metrics,
    digits_events,
    digits_reference,
    expected_counts,
    iso,
    produce_events,
    wait_for,
    window_counts,
    window_records,
)
from tests.broker import new_topic

pytestmark = pytest.mark.kafka

PARTITIONS = 4
WINDOWS = 20
FIRST_PART = 10  # windows produced before the second replica joins
PER_WINDOW = 200
# Live, a window closes once the watermark is this far past its end: the first replica keeps
# the last few windows of the first part open when the second one joins. It also covers the
# skew between partitions while the second part is produced (one window is flushed at a time).
LATENESS = "3h"
SENTINEL_WINDOW = 40  # one event per partition, far ahead, so every real window closes


def test_second_replica_joining_mid_stream_loses_and_doubles_nothing(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    reference = digits_reference(tmp_path_factory)
    events = digits_events(windows=WINDOWS, per_window=PER_WINDOW, window_s=HOUR, seed=5)
    sentinels = digits_events(
        windows=1, per_window=PARTITIONS, window_s=HOUR, seed=6, start=T0 + SENTINEL_WINDOW * HOUR
    )
    topic = new_topic(kafka_bootstrap, PARTITIONS, prefix="rebalance")
    gid = f"g-{uuid.uuid4().hex[:8]}"
    first_part = FIRST_PART * PER_WINDOW
    produce_events(kafka_bootstrap, topic, PARTITIONS, [e.value for e in events[:first_part]])

    def replica(name: str) -> AgentProcess:
        return AgentProcess(
            bootstrap=kafka_bootstrap,
            topic=topic,
            group=gid,
            reference=reference,
            out=tmp_path / name,
            window="1h",
            lateness=LATENESS,
            name=name,
        )

    with replica("a") as a:
        a.wait_ready()

        def read_first_part(m: Metrics) -> bool:
            lag = m.by("embmon_consumer_lag_records", "partition", topic=topic)
            return (
                len(lag) == PARTITIONS
                and sum(lag.values()) == 0
                and m.get("embmon_events_total", model=MODEL) == first_part
                and (m.get("embmon_windows_closed_total", model=MODEL) or 0) > 0
            )

        scrape = a.wait_metrics(read_first_part, "replica a through the first part")
        held_open = scrape.get("embmon_open_windows")
        assert held_open is not None and held_open >= 3  # the windows the join will split
        closed_before = len(window_records(a.out))
        assert 0 < closed_before < FIRST_PART

        with replica("b") as b:
            b.wait_ready()
            wait_for(
                lambda: (
                    "partition assigned" in b.log_text() and "partitions revoked" in a.log_text()
                ),
                "the rebalance: b assigned, a revoked",
                agents=[a, b],
                timeout_s=60,
            )
            for w in range(FIRST_PART, WINDOWS):  # one window at a time, each fully acked
                chunk = events[w * PER_WINDOW : (w + 1) * PER_WINDOW]
                produce_events(kafka_bootstrap, topic, PARTITIONS, [e.value for e in chunk])
            produce_events(kafka_bootstrap, topic, PARTITIONS, [e.value for e in sentinels])

            expected = expected_counts(events)
            wait_for(
                lambda: window_counts(a.out, b.out) == expected,
                "every window accounted for over both replicas",
                agents=[a, b],
                timeout_s=60,
            )
            for agent in (a, b):
                # The gauge is set once the turn's windows are persisted, a moment after the
                # files show them: wait for it rather than read it once.
                m = agent.wait_metrics(
                    lambda m: m.get("embmon_open_windows") == 1.0,
                    "the sentinels' window the only one open",
                    timeout_s=30,
                )
                assert m.get("embmon_events_rejected_total", reason="late") is None
            b.terminate()
            a.terminate()
            assert b.wait_exit(15) == 0, b.log_tail()
            assert a.wait_exit(15) == 0, a.log_tail()

    records_a, records_b = window_records(a.out), window_records(b.out)
    for records in (records_a, records_b):
        keys = Counter((r["model"], r["window_start"]) for r in records)
        assert [k for k, n in keys.items() if n > 1] == []
    assert window_counts(a.out, b.out) == expected_counts(events)

    # The join really split windows: b re-read open windows of the first part from a's
    # committed offsets, and those windows have events in both files.
    starts_a = {r["window_start"] for r in records_a}
    starts_b = {r["window_start"] for r in records_b}
    first_part_starts = {iso(T0 + w * HOUR) for w in range(FIRST_PART)}
    assert starts_b & first_part_starts, sorted(starts_b)
    assert starts_a & starts_b & first_part_starts
    resumed = [int(o) for o in re.findall(r"resuming from Checkpoint\(offset=(\d+),", b.log_text())]
    assert resumed and max(resumed) > 0, b.log_tail()
