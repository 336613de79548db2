"""``embmon run`` end to end against a real broker: a week of digits whose last two days are
half corrupted goes through a 3-partition topic.

``--until-end`` writes exactly the produced count per window and flags exactly the corrupted
days. The live agent serves ``/metrics`` (drift of the last closed window, event totals, lag),
``/healthz`` and ``/readyz``, stops promptly on SIGTERM, and a ``--until-end`` resume of its
group finishes the week with nothing lost or doubled.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent_scenarios import (
    DAY,
    HOUR,
    MODEL,
    T0,
    AgentProcess,
    Event,
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
from tests.e2e_services import require_binary

pytestmark = pytest.mark.kafka

PARTITIONS = 3
DAYS = 7
PER_DAY = 300
SHIFTED = (5, 6)  # days 6 and 7
BAD = [b'{"not json', b"[1, 2]", b'{"timestamp": 1763596800}']
BAD_REASONS = Counter({"invalid_json": 1, "not_object": 1, "missing_embedding": 1})
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Week:
    topic: str
    events: list[Event]
    reference: Path


@pytest.fixture(scope="module")
def week(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Week:
    """The week of events (plus a few bad records) on a fresh 3-partition topic."""
    reference = digits_reference(tmp_path_factory)
    events = digits_events(windows=DAYS, per_window=PER_DAY, shifted_windows=SHIFTED, seed=7)
    values = [e.value for e in events]
    for i, bad in enumerate(BAD):  # one bad record in the middle of each partition's stream
        values.insert(len(values) // 2 + i, bad)
    topic = new_topic(kafka_bootstrap, PARTITIONS, prefix="week")
    produce_events(kafka_bootstrap, topic, PARTITIONS, values)
    return Week(topic, events, reference)


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def test_until_end_counts_every_event_once_and_flags_exactly_the_shifted_days(
    kafka_bootstrap: str, week: Week, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=week.topic,
        group=group(),
        reference=week.reference,
        out=out,
        until_end=True,
    ) as agent:
        assert agent.wait_exit(120) == 0, agent.log_tail()

    records = window_records(out)
    starts = [r["window_start"] for r in records]
    assert starts == [iso(T0 + d * DAY) for d in range(DAYS)]  # each window once, in order
    assert window_counts(out) == expected_counts(week.events)
    assert all(r["model"] == MODEL for r in records)
    assert [r["window_end"] for r in records] == [iso(T0 + (d + 1) * DAY) for d in range(DAYS)]
    drifted = [d for d, r in enumerate(records) if r["drifted"]]
    assert drifted == list(SHIFTED), {r["window_start"]: r["drift"] for r in records}
    for record in records:
        assert "closest_centroid" in record["drift"]
        assert record["drifted"] == any(m["drifted"] for m in record["drift"].values())
        assert record["reference"].startswith("sha256:")
        assert record["classification"]["labelled"] == PER_DAY
    accuracy = [r["classification"]["accuracy"] for r in records]
    assert max(accuracy[d] for d in SHIFTED) < min(accuracy[: SHIFTED[0]])


def test_ready_only_once_the_member_holds_partitions(
    kafka_bootstrap: str, week: Week, tmp_path: Path
) -> None:
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=week.topic,
        group=group(),
        reference=week.reference,
        out=tmp_path / "out",
    ) as agent:
        answers: list[int] = []

        def ready() -> bool:
            try:
                answers.append(agent.get("/readyz")[0])
            except OSError:  # not listening yet
                return False
            return answers[-1] == 200

        wait_for(ready, "/readyz 200", agents=[agent], timeout_s=60, interval_s=0.05)
        assert "partition assigned" in agent.log_text()  # the group join is done
        assert answers[0] == 503  # up, alive, but not yet a member holding partitions
        assert agent.get("/healthz")[0] == 200


def test_live_agent_serves_metrics_of_the_last_closed_window_and_stops_on_sigterm(
    kafka_bootstrap: str, week: Week, tmp_path: Path
) -> None:
    out, gid = tmp_path / "out", group()
    good = len(week.events)
    with AgentProcess(
        bootstrap=kafka_bootstrap, topic=week.topic, group=gid, reference=week.reference, out=out
    ) as agent:
        agent.wait_ready()
        assert agent.get("/healthz")[0] == 200
        assert agent.get("/readyz")[0] == 200

        def consumed(m: Metrics) -> bool:
            lag = m.by("embmon_consumer_lag_records", "partition", topic=week.topic)
            return (
                len(lag) == PARTITIONS
                and sum(lag.values()) == 0
                and m.get("embmon_events_total", model=MODEL) == good
                and m.get("embmon_windows_closed_total", model=MODEL) == DAYS - 1
            )

        scrape = agent.wait_metrics(consumed, "the whole topic consumed, six days closed")
        assert agent.get("/healthz")[0] == 200
        assert agent.get("/readyz")[0] == 200

        # Live, the newest day stays open (no later event moves the watermark past it).
        records = window_records(out)
        assert len(records) == DAYS - 1
        last = records[-1]
        assert last["window_start"] == iso(T0 + (DAYS - 2) * DAY)
        labels = {"model": MODEL}
        assert scrape.get("embmon_window_events", **labels) == PER_DAY
        assert scrape.get("embmon_window_drifted", **labels) == 1.0
        assert scrape.get("embmon_last_window_end_timestamp_seconds", **labels) == (
            T0 + (DAYS - 1) * DAY
        )
        scores = scrape.by("embmon_drift_score", "metric", **labels)
        thresholds = scrape.by("embmon_drift_threshold", "metric", **labels)
        detected = scrape.by("embmon_drift_detected", "metric", **labels)
        assert set(scores) == set(detected) == set(last["drift"])
        for metric, result in last["drift"].items():
            assert scores[metric] == pytest.approx(result["score"], rel=1e-12)
            assert detected[metric] == float(result["drifted"])
            if result["threshold"] is None:
                assert metric not in thresholds
            else:
                assert thresholds[metric] == pytest.approx(result["threshold"], rel=1e-12)
        assert any(detected.values())
        assert scrape.get("embmon_classification_accuracy", **labels) == pytest.approx(
            last["classification"]["accuracy"], rel=1e-12
        )
        ratios = scrape.by("embmon_closest_centroid_ratio", "centroid", **labels)
        assert ratios == pytest.approx(last["closest_centroid"], rel=1e-12)
        rejected = scrape.by("embmon_events_rejected_total", "reason")
        assert rejected == {reason: float(n) for reason, n in BAD_REASONS.items()}
        assert scrape.get("embmon_open_windows") == 1.0
        assert scrape.get("embmon_window_size_seconds") == DAY
        distance = scrape.by("embmon_centroid_distance", "q", centroid="0", **labels)
        assert set(distance) == {"0.05", "0.25", "0.5", "0.75", "0.95"}
        # Prometheus' own linter accepts the live exposition (no reserved `quantile` label).
        status, text = agent.get("/metrics")
        lint = subprocess.run(
            [require_binary("promtool"), "check", "metrics"],
            input=text, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert (status, lint.returncode) == (200, 0), lint.stdout + lint.stderr

        started = time.monotonic()
        agent.terminate()
        assert agent.wait_exit(STOP_TIMEOUT_S) == 0, agent.log_tail()
        stopped_in = time.monotonic() - started

    # Same days, same counts and verdicts as --until-end, minus the open one.
    assert [r["events"] for r in records] == [PER_DAY] * (DAYS - 1)
    assert [d for d, r in enumerate(records) if r["drifted"]] == [SHIFTED[0]]
    assert stopped_in < STOP_TIMEOUT_S

    # The group resumes where SIGTERM left it: the open day is re-read, nothing else is.
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=week.topic,
        group=gid,
        reference=week.reference,
        out=out,
        until_end=True,
        name="resume",
    ) as resumed:
        assert resumed.wait_exit(120) == 0, resumed.log_tail()
    assert window_counts(out) == expected_counts(week.events)
    final = window_records(out)
    assert len(final) == DAYS
    assert [d for d, r in enumerate(final) if r["drifted"]] == list(SHIFTED)


def test_live_agent_catching_up_a_burst_counts_no_event_late(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Every partition in time order, the agent caught up, then a burst: nothing is late."""
    partitions, per_window, windows, first = 4, 200, 42, 2
    reference = digits_reference(tmp_path_factory)
    events = digits_events(windows=windows, per_window=per_window, window_s=HOUR, seed=9)
    topic = new_topic(kafka_bootstrap, partitions, prefix="burst")
    produce_events(
        kafka_bootstrap, topic, partitions, [e.value for e in events[: first * per_window]]
    )
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=group(),
        reference=reference,
        out=tmp_path / "out",
        window="1h",
        lateness="2h",
        extra=("--max-poll-records", "200"),
    ) as agent:
        agent.wait_ready()

        def caught_up(m: Metrics) -> bool:
            lag = m.by("embmon_consumer_lag_records", "partition", topic=topic)
            events_total = m.get("embmon_events_total", model=MODEL)
            return (
                len(lag) == partitions
                and sum(lag.values()) == 0
                and events_total == first * per_window
            )

        agent.wait_metrics(caught_up, "the first two windows read")
        produce_events(
            kafka_bootstrap, topic, partitions, [e.value for e in events[first * per_window :]]
        )

        def read_all(m: Metrics) -> bool:
            added = m.get("embmon_events_total", model=MODEL) or 0
            late = m.get("embmon_events_rejected_total", reason="late") or 0
            return added + late == len(events)

        scrape = agent.wait_metrics(read_all, "the burst read")
        agent.terminate()
        assert agent.wait_exit(STOP_TIMEOUT_S) == 0, agent.log_tail()
    late = scrape.get("embmon_events_rejected_total", reason="late")
    closed = window_records(tmp_path / "out")
    short = {r["window_start"]: r["events"] for r in closed if r["events"] != per_window}
    assert late is None and short == {}, f"{late} events late; windows short: {short}"


def test_agent_reading_a_backlog_with_paused_partitions_does_not_stall(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A backlog larger than one fetch per partition, read with watermark-lead pausing."""
    partitions, per_window, windows = 3, 200, 20
    reference = digits_reference(tmp_path_factory)
    events = digits_events(windows=windows, per_window=per_window, window_s=HOUR, seed=13)
    topic = new_topic(kafka_bootstrap, partitions, prefix="backlog")
    produce_events(kafka_bootstrap, topic, partitions, [e.value for e in events])
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=group(),
        reference=reference,
        out=tmp_path / "out",
        window="1h",
        # ~50 records per partition and fetch (the default 1 MiB holds ~3000 of these events),
        # and pausing as soon as a partition is one window ahead.
        extra=(
            "--max-partition-fetch-bytes",
            "16384",
            "--max-poll-records",
            "100",
            "--watermark-lead-windows",
            "1",
        ),
    ) as agent:
        agent.wait_ready()

        def read_all(m: Metrics) -> bool:
            lag = m.by("embmon_consumer_lag_records", "partition", topic=topic)
            return (
                len(lag) == partitions
                and sum(lag.values()) == 0
                and (m.get("embmon_events_total", model=MODEL) == len(events))
            )

        agent.wait_metrics(read_all, "the backlog read", stall_s=5.0)
        assert agent.get("/healthz")[0] == 200
        agent.terminate()
        assert agent.wait_exit(STOP_TIMEOUT_S) == 0, agent.log_tail()
    closed = window_records(tmp_path / "out")
    assert [r["events"] for r in closed] == [per_window] * (windows - 1)
