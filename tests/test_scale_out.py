"""The scaled layout against a real broker: 3 collectors and 1 evaluator over a 6-partition topic
give the windows one ``--role all`` process gives on the same events.

The events hold what makes windows differ when an event is counted twice or lost: two models
(their pieces go to different profiles partitions), a corrupted hour (drift), late events at
the default lateness (each partition gets events of the previous hour after it has moved on),
and bad records. Counts must be equal exactly, drift decisions identically, and the merged
distance quantiles must sit within the sketch's rank error of the single process's.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from exporters.profile_sink import ProfileSink
from exporters.records import SegmentKey, parse_time
from sketches.profile import WindowProfile
from tests.agent_scenarios import (
    HOUR,
    MODEL,
    T0,
    AgentProcess,
    Metrics,
    digits_events,
    digits_reference,
    iso,
    produce_events,
    wait_for,
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
    values = _hours(HOURS, 240, 90)
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


def _layout(
    kafka_bootstrap: str, traffic: Traffic, out: Path, collectors: int = 3
) -> tuple[list[AgentProcess], AgentProcess]:
    """``collectors`` collectors and one evaluator (writing to ``out``) on a new profiles topic."""
    profiles = new_topic(kafka_bootstrap, PROFILE_PARTITIONS, prefix="profiles")
    group = _group()
    started = [
        _collector(kafka_bootstrap, traffic, out, group, profiles, f"collector-{i}")
        for i in range(collectors)
    ]
    return started, _evaluator(kafka_bootstrap, traffic, out, group, profiles, "evaluator")


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
    collectors, evaluator = _layout(kafka_bootstrap, traffic, scaled_out)
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


def test_two_evaluators_split_the_models_and_together_give_the_single_process_windows(
    kafka_bootstrap: str, traffic: Traffic, tmp_path: Path
) -> None:
    """The profiles topic is keyed by model: with two partitions (one model on each) and two
    evaluators, each writes the windows of its model only, and together they write them all."""
    single_out = tmp_path / "single"
    _single(kafka_bootstrap, traffic, single_out)
    single = _by_key(window_records(single_out))
    profiles = new_topic(kafka_bootstrap, 2, prefix="profiles")
    group = _group()
    outs = [tmp_path / "left", tmp_path / "right"]
    with ExitStack() as running:
        judges = [
            running.enter_context(
                _evaluator(kafka_bootstrap, traffic, out, group, profiles, out.name)
            )
            for out in outs
        ]
        for judge in judges:
            judge.wait_ready(60)  # one profiles partition each
        members = [
            running.enter_context(
                _collector(kafka_bootstrap, traffic, tmp_path / "c", group, profiles, f"c{i}")
            )
            for i in range(2)
        ]
        for process in (*members, *judges):
            assert process.wait_exit(180) == 0, process.log_tail()
    written = [_by_key(window_records(out)) for out in outs]
    assert [{model for model, _ in w} for w in written] in ([{MODEL}, {OTHER}], [{OTHER}, {MODEL}])
    merged = {**written[0], **written[1]}
    assert {k: r["events"] for k, r in merged.items()} == {
        k: r["events"] for k, r in single.items()
    }


def _process(
    role: str,
    kafka_bootstrap: str,
    traffic: Traffic,
    out: Path,
    group: str,
    profiles: str,
    name: str,
    *,
    live: bool = False,
    extra: tuple[str, ...] = (),
) -> AgentProcess:
    """One process of the scaled layout, stopping at the end offsets unless ``live``; a collector
    writes nothing, so its files go to a folder of its own beside ``out``."""
    return AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=traffic.topic,
        group=group,
        reference=traffic.reference,
        out=out if role == "evaluator" else out.parent / name,
        window="1h",
        until_end=not live,
        extra=["--role", role, "--profiles-topic", profiles, *extra],
        name=name,
    )


_collector = partial(_process, "collector")
_evaluator = partial(_process, "evaluator")


def _owned(agent: AgentProcess) -> int:
    return int(agent.metrics().get("embmon_partitions_owned") or 0)


def test_a_window_a_collector_holds_back_is_emitted_partial_then_complete(
    kafka_bootstrap: str, traffic: Traffic, tmp_path: Path
) -> None:
    """One collector stops (SIGSTOP) once the two collectors hold the partitions between them,
    before any event is sent; the other reads its own. Past the grace period the evaluator emits
    the windows the other partitions passed as partial; once the stopped collector goes on,
    they come out complete, with the single process's counts. (The events are sent after the
    stop: sent before, the stopped collector may have read its share already.)"""
    single_out, out = tmp_path / "single", tmp_path / "scaled"
    _single(kafka_bootstrap, traffic, single_out)
    single = _by_key(window_records(single_out))
    held = Traffic(new_topic(kafka_bootstrap, PARTITIONS, prefix="held"), traffic.reference, [])
    profiles = new_topic(kafka_bootstrap, PROFILE_PARTITIONS, prefix="profiles")
    group = _group()
    # The stopped collector must stay in the group while stopped, or the other takes its share.
    stays = ("--session-timeout-ms", "25000")
    slow = _collector(kafka_bootstrap, held, out, group, profiles, "slow", live=True, extra=stays)
    fast = _collector(kafka_bootstrap, held, out, group, profiles, "fast", live=True)
    evaluator = _evaluator(
        kafka_bootstrap, held, out, group, profiles, "evaluator", live=True, extra=("--grace", "2s")
    )
    with ExitStack() as running:
        for process in (slow, fast, evaluator):
            running.enter_context(process)
        for process in (slow, fast, evaluator):
            process.wait_ready()
        wait_for(
            lambda: 0 < _owned(slow) < PARTITIONS and _owned(slow) + _owned(fast) == PARTITIONS,
            "the two collectors sharing the partitions",
            agents=[slow, fast],
        )
        slow.process.send_signal(signal.SIGSTOP)
        try:
            produce_events(kafka_bootstrap, held.topic, PARTITIONS, traffic.values)
            scrape = evaluator.wait_metrics(
                lambda m: 0.0 in m.by("embmon_window_complete", "model").values(),
                "a partial window",
                timeout_s=60,
            )
        finally:
            slow.process.send_signal(signal.SIGCONT)
        partial = [r for r in window_records(out) if not r["complete"]]
        assert partial, scrape
        for record in partial:
            assert record["events"] < single[(record["model"], record["window_start"])]["events"]
        # The last hour stays open, as in a live single process: no event has passed its end.
        last = iso(T0 + (HOURS - 1) * HOUR)
        closed = {k: r["events"] for k, r in single.items() if k[1] != last}
        wait_for(
            lambda: (
                {k: r["events"] for k, r in _by_key(window_records(out)).items() if r["complete"]}
                == closed
            ),
            "every window but the last complete with the single process's counts",
            timeout_s=90,
            agents=[evaluator],
        )
        # The open hour's pieces come as tails, each collector's on its own clock.
        events = sum(r["events"] for r in single.values() if r["model"] == MODEL)
        final = evaluator.wait_metrics(
            lambda m: (
                set(m.by("embmon_window_complete", "model").values()) == {1.0}
                and m.get("embmon_events_total", model=MODEL) == events
            ),
            "the latest windows complete and every event counted",
        )
        assert final.get("embmon_events_rejected_total", reason="late") == (HOURS - 1) * PARTITIONS
        assert (final.get("embmon_profiles_merged_total") or 0) > 0


_RESUMED = re.compile(r"resuming from Checkpoint\(offset=[1-9]")


def _publishing(scrape: Metrics) -> bool:
    owned = scrape.get("embmon_partitions_owned") or 0
    return owned > 0 and (scrape.get("embmon_profiles_published_total") or 0) > 0


def _emitting(scrape: Metrics) -> bool:
    return sum(scrape.by("embmon_windows_closed_total", "model").values()) > 0


def _hours(hours: int, per_hour: int, per_hour_other: int) -> list[bytes]:
    """Two models' events, hour by hour in time order, with late copies and bad records."""
    main = digits_events(windows=hours, per_window=per_hour, window_s=HOUR, shifted_windows=(3,))
    other = digits_events(
        windows=hours, per_window=per_hour_other, window_s=HOUR, seed=5, model=OTHER
    )
    values: list[bytes] = []
    for hour in range(hours):
        mine = [e.value for e in main if e.window_start == T0 + hour * HOUR]
        theirs = [e.value for e in other if e.window_start == T0 + hour * HOUR]
        mixed = [v for pair in zip(mine, theirs, strict=False) for v in pair]
        mixed += mine[len(theirs) :]
        if hour:  # after each partition has shown this hour, events of the hour before
            mixed[3 * PARTITIONS : 3 * PARTITIONS] = _late_copies(mine, hour, PARTITIONS)
        values += mixed
    for i, bad in enumerate(BAD):
        values.insert(len(values) // 2 + i, bad)
    return values


class _SteadyProducer(threading.Thread):
    """Sends ``values`` round-robin over the partitions at ``rate`` records a second."""

    def __init__(self, bootstrap: str, topic: str, values: list[bytes], rate: float) -> None:
        super().__init__(daemon=True)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.topic, self.values, self.rate = topic, values, rate
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            began = time.monotonic()
            for i, value in enumerate(self.values):
                self.producer.send(self.topic, value=value, partition=i % PARTITIONS)
                ahead = began + i / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            self.producer.flush()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.producer.close()


def test_collectors_and_the_evaluator_killed_at_random_moments_lose_and_double_nothing(
    kafka_bootstrap: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Chaos at the default lateness while the traffic flows: collectors are SIGKILLed or
    leave and others join, the evaluator is SIGKILLed and restarted, each at a random moment.
    Once the traffic is all in, an evaluator run ``--until-end`` finishes the job: the final
    windows equal what one process computes over the same topic, exactly, and no window is
    emitted complete twice with different counts."""
    rng = random.Random(int(os.environ.get("EMBMON_CHAOS_SEED", "11")))
    topic = new_topic(kafka_bootstrap, PARTITIONS, prefix="chaos")
    traffic = Traffic(topic, digits_reference(tmp_path_factory), _hours(16, 240, 80))
    producer = _SteadyProducer(kafka_bootstrap, topic, traffic.values, rate=120.0)
    out = tmp_path / "scaled"
    profiles = new_topic(kafka_bootstrap, PROFILE_PARTITIONS, prefix="profiles")
    group = _group()
    names = iter(f"c{i}" for i in range(100))
    started: list[AgentProcess] = []
    with ExitStack() as running:

        def collector() -> AgentProcess:
            process = _collector(
                kafka_bootstrap, traffic, out, group, profiles, next(names), live=True
            )
            started.append(running.enter_context(process))
            return process

        def evaluator(name: str, *, live: bool = True) -> AgentProcess:
            process = _evaluator(kafka_bootstrap, traffic, out, group, profiles, name, live=live)
            started.append(running.enter_context(process))
            return process

        judge = evaluator("e0")
        members = [collector(), collector()]
        producer.start()
        for step in range(4):
            # Strike a member that is at work: assigned, and publishing.
            victim = members.pop(rng.randrange(len(members)))
            victim.wait_ready(90)
            victim.wait_metrics(_publishing, f"{victim.name} publishing", timeout_s=90)
            time.sleep(rng.uniform(0.0, 1.5))
            if rng.random() < 0.7:
                victim.kill()
            else:
                victim.terminate()
            members.append(collector())
            if step % 2:
                judge.wait_ready(90)
                judge.wait_metrics(_emitting, f"{judge.name} emitting", timeout_s=90)
                time.sleep(rng.uniform(0.0, 1.0))
                judge.kill()
                judge = evaluator(f"e{step}")
        producer.join(180)
        assert producer.error is None and not producer.is_alive(), producer.error
        judge.kill()
        last = evaluator("last", live=False)
        assert last.wait_exit(240) == 0, last.log_tail()
        logs = {process.name: process.log_text() for process in started}

    resumed = [n for n, text in logs.items() if _RESUMED.search(text)]
    assert any(n.startswith("c") for n in resumed), "no collector resumed from a commit"
    assert any(n.startswith("e") or n == "last" for n in resumed), "no evaluator resumed"
    single_out = tmp_path / "single"
    _single(kafka_bootstrap, traffic, single_out)
    single = _by_key(window_records(single_out))
    records = window_records(out)
    complete: dict[tuple[str, str], set[int]] = {}
    for record in records:
        if record["complete"]:
            key = (record["model"], record["window_start"])
            complete.setdefault(key, set()).add(record["events"])
    assert {k: v for k, v in complete.items() if len(v) > 1} == {}
    final = _by_key(records)
    assert {k: r["events"] for k, r in final.items()} == {k: r["events"] for k, r in single.items()}
    assert all(r["complete"] for r in final.values())
