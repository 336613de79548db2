"""The scaled layout against a real broker: 3 collectors and 1 evaluator over a 6-partition topic
give the windows one ``--role all`` process gives on the same events.

The events hold what makes windows differ when an event is counted twice or lost: two models
(their pieces go to different profiles partitions), a corrupted hour (drift), late events at
the default lateness (each partition gets events of the previous hour after it has moved on),
and bad records. Counts must be equal exactly, drift decisions identically, and the merged
distance quantiles must sit within the sketch's rank error of the single process's.
"""

from __future__ import annotations

import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from exporters.profile_sink import ProfileSink
from exporters.records import SegmentKey, parse_time
from sketches.profile import WindowProfile
from tests.agent_scenarios import (
    HOUR,
    MODEL,
    T0,
    AgentProcess,
    digits_events,
    digits_reference,
    produce_events,
    window_records,
)
from tests.broker import new_topic

pytestmark = pytest.mark.kafka

PARTITIONS = 6
PROFILE_PARTITIONS = 3
HOURS = 5
OTHER = "digits-b"
BAD = [b'{"not json', b"[1, 2]", b'{"timestamp": 1763596800}']
RANKS = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Traffic:
    topic: str
    reference: Path
    values: list[bytes]


def _late_copies(values: list[bytes], hour: int, count: int) -> list[bytes]:
    """``count`` events re-timed into the hour before ``hour``: late once a partition is past it."""
    copies = []
    for value in values[:count]:
        event = orjson.loads(value)
        event["timestamp"] = T0 + (hour - 1) * HOUR + 60.0
        event["event_id"] = f"late-{hour}-{event['event_id']}"
        copies.append(orjson.dumps(event))
    return copies


@pytest.fixture(scope="module")
def traffic(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    reference = digits_reference(tmp_path_factory)
    main = digits_events(windows=HOURS, per_window=240, window_s=HOUR, shifted_windows=(3,))
    other = digits_events(windows=HOURS, per_window=90, window_s=HOUR, seed=5, model=OTHER)
    values: list[bytes] = []
    for hour in range(HOURS):
        mine = [e.value for e in main if e.window_start == T0 + hour * HOUR]
        theirs = [e.value for e in other if e.window_start == T0 + hour * HOUR]
        mixed = [v for pair in zip(mine, theirs, strict=False) for v in pair]
        mixed += mine[len(theirs) :]
        if hour:  # after each partition has shown this hour, events of the hour before
            mixed[3 * PARTITIONS : 3 * PARTITIONS] = _late_copies(mine, hour, PARTITIONS)
        values += mixed
    for i, bad in enumerate(BAD):
        values.insert(len(values) // 2 + i, bad)
    topic = new_topic(kafka_bootstrap, PARTITIONS, prefix="scaled")
    produce_events(kafka_bootstrap, topic, PARTITIONS, values)
    return Traffic(topic, reference, values)


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def _single(kafka_bootstrap: str, traffic: Traffic, out: Path) -> None:
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=traffic.topic,
        group=_group(),
        reference=traffic.reference,
        out=out,
        window="1h",
        until_end=True,
    ) as agent:
        assert agent.wait_exit(180) == 0, agent.log_tail()


def _scaled(
    kafka_bootstrap: str, traffic: Traffic, out: Path, collectors: int = 3
) -> tuple[list[AgentProcess], AgentProcess]:
    profiles = new_topic(kafka_bootstrap, PROFILE_PARTITIONS, prefix="profiles")
    group = _group()
    role = ["--profiles-topic", profiles]
    started = [
        AgentProcess(
            bootstrap=kafka_bootstrap,
            topic=traffic.topic,
            group=group,
            reference=traffic.reference,
            out=out.parent / f"collector-{i}",
            window="1h",
            until_end=True,
            extra=["--role", "collector", *role],
            name=f"collector-{i}",
        )
        for i in range(collectors)
    ]
    evaluator = AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=traffic.topic,
        group=group,
        reference=traffic.reference,
        out=out,
        window="1h",
        until_end=True,
        extra=["--role", "evaluator", *role],
        name="evaluator",
    )
    return started, evaluator


def _by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        latest[(record["model"], record["window_start"])] = record
    return latest


def _profile(out: Path, record: dict[str, Any]) -> WindowProfile:
    start = parse_time(record["window_start"])
    return WindowProfile.from_bytes(
        ProfileSink(out).path_for(record["model"], SegmentKey(), start).read_bytes()
    )


def test_three_collectors_and_an_evaluator_give_the_single_process_windows(
    kafka_bootstrap: str, traffic: Traffic, tmp_path: Path
) -> None:
    single_out, scaled_out = tmp_path / "single", tmp_path / "scaled"
    _single(kafka_bootstrap, traffic, single_out)
    collectors, evaluator = _scaled(kafka_bootstrap, traffic, scaled_out)
    with ExitStack() as running:
        for process in (*collectors, evaluator):
            running.enter_context(process)
        for collector in collectors:
            assert collector.wait_exit(180) == 0, collector.log_tail()
        assert evaluator.wait_exit(120) == 0, evaluator.log_tail()

    single = _by_key(window_records(single_out))
    scaled_records = window_records(scaled_out)
    scaled = _by_key(scaled_records)
    assert sorted(scaled) == sorted(single)
    assert len(scaled_records) == len(scaled), "a window was emitted twice"
    assert {(m, n) for m, n in Counter(r["model"] for r in scaled.values()).items()} == {
        (MODEL, HOURS),
        (OTHER, HOURS),
    }
    for key, mine in scaled.items():
        theirs = single[key]
        assert mine["complete"] is True
        assert mine["events"] == theirs["events"], key
        assert mine["closest_centroid"] == theirs["closest_centroid"], key
        assert mine["classification"] == theirs["classification"], key
        assert {m: r["drifted"] for m, r in mine["drift"].items()} == {
            m: r["drifted"] for m, r in theirs["drift"].items()
        }, key
        merged, whole = _profile(scaled_out, mine), _profile(single_out, theirs)
        bound = 2 * whole.distances.rank_error
        for column in range(whole.distances.columns):
            values = merged.distances.quantiles(column, RANKS)
            ranks = whole.distances.cdf(column, values)
            assert np.all(np.abs(ranks - np.asarray(RANKS)) <= bound + 1e-9), (key, column)
    assert any(r["drifted"] for r in scaled.values())
    assert (
        sum(r["events"] for r in scaled.values())
        == len(traffic.values) - len(BAD) - (HOURS - 1) * PARTITIONS
    )
