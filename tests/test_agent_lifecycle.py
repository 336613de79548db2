"""``embmon run``'s life cycle against a real broker (#10): starting while no broker answers,
stopping in the middle of a group join, and a rebalance while a partition still trickles.

The unreachable broker is a local port bound but not listening (connections are refused).
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from tests.agent_scenarios import (
    MODEL,
    T0,
    AgentProcess,
    Event,
    Metrics,
    digits_events,
    digits_reference,
    iso,
    produce_events,
    wait_for,
    window_counts,
)
from tests.broker import new_topic, produce

pytestmark = pytest.mark.kafka

TRACEBACK = "Traceback (most recent call last)"


@contextmanager
def closed_port() -> Iterator[str]:
    """``127.0.0.1:PORT`` where nothing listens, held so no one else takes the port meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _status(agent: AgentProcess, path: str) -> int | None:
    try:
        return agent.get(path)[0]
    except OSError:
        return None


def test_unreachable_broker_is_retried_until_sigterm(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The endpoint serves (alive, not ready) while every attempt to connect fails with one
    warning line, and SIGTERM ends the agent at once with exit 0 and no traceback."""
    reference = digits_reference(tmp_path_factory)
    with (
        closed_port() as bootstrap,
        AgentProcess(
            bootstrap=bootstrap, topic="t", group="g", reference=reference, out=tmp_path / "out"
        ) as agent,
    ):
        wait_for(lambda: _status(agent, "/healthz") == 200, "/healthz", agents=[agent])
        wait_for(
            lambda: agent.log_text().count("cannot reach Kafka at") >= 2,
            "two failed connection attempts",
            timeout_s=30,
            agents=[agent],
        )
        assert agent.get("/readyz")[0] == 503
        assert agent.get("/healthz")[0] == 200
        agent.terminate()
        stopped = time.monotonic()
        assert agent.wait_exit(10) == 0, agent.log_tail()
        assert time.monotonic() - stopped < 2.0
    log = agent.log_text()
    assert TRACEBACK not in log, log
    warning = next(line for line in log.splitlines() if "cannot reach Kafka at" in line)
    assert re.search(r"attempt 1\): KafkaTimeoutError: .*; retrying in 1 s$", warning), warning


def test_unreachable_broker_ends_a_bounded_run_after_join_timeout(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """``--until-end`` is a batch job: it gives up after ``join_timeout`` with exit 2 and a
    one-line error instead of waiting for ever."""
    reference = digits_reference(tmp_path_factory)
    with (
        closed_port() as bootstrap,
        AgentProcess(
            bootstrap=bootstrap,
            topic="t",
            group="g",
            reference=reference,
            out=tmp_path / "out",
            until_end=True,
            extra=["--join-timeout", "3s"],
        ) as agent,
    ):
        started = time.monotonic()
        assert agent.wait_exit(20) == 2, agent.log_tail()
        took = time.monotonic() - started
    log = agent.log_text()
    assert TRACEBACK not in log, log
    assert 3.0 <= took < 10.0, took
    (error,) = [line for line in log.splitlines() if line.startswith("embmon: error:")]
    assert f"cannot reach Kafka at {bootstrap}: gave up after 3 s" in error, error
    assert "join_timeout" in error


def test_restart_after_sigterm_mid_join_is_assigned(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A replica stopped while its group join is under way must not wedge the group: the
    replica started after it is assigned, and only then ready. (kafka-python's close sends
    LeaveGroup mid-join; on Tansu 0.6 the group then never forms again.)"""
    reference = digits_reference(tmp_path_factory)
    topic = new_topic(kafka_bootstrap, 2, prefix="midjoin")
    gid = f"g-{uuid.uuid4().hex[:8]}"
    events = digits_events(windows=3, per_window=40, window_s=60, seed=21)
    produce_events(kafka_bootstrap, topic, 2, [e.value for e in events])

    def replica(name: str) -> AgentProcess:
        return AgentProcess(
            bootstrap=kafka_bootstrap,
            topic=topic,
            group=gid,
            reference=reference,
            out=tmp_path / name,
            window="1m",
            name=name,
        )

    with replica("first") as first:
        wait_for(lambda: "joining group" in first.log_text(), "the join", agents=[first])
        first.terminate()  # the join takes about 3 s on Tansu: this lands in the middle of it
        assert first.wait_exit(10) == 0, first.log_tail()
        assert "partition assigned" not in first.log_text(), first.log_tail()

    with replica("second") as second:
        wait_for(lambda: _status(second, "/healthz") == 200, "/healthz", agents=[second])
        assert second.get("/readyz")[0] == 503
        second.wait_ready(timeout_s=40)
        assert "partition assigned" in second.log_text()
        second.wait_metrics(
            lambda m: m.get("embmon_events_total", model=MODEL) == len(events),
            "every event read by the second replica",
            timeout_s=20,
        )
        second.terminate()
        assert second.wait_exit(10) == 0, second.log_tail()


# --- a rebalance while a partition trickles --------------------------------------------------

BULK_START = T0 + 300  # partition 0: far ahead in event time
TRICKLE_EVENTS = 120  # partition 1: one event per event-time second from T0
TRICKLE_EVERY_S = 0.1
SENTINEL = T0 + 3600  # one event per partition that closes every window before it


def _at(event: Event, timestamp: float) -> bytes:
    record = orjson.loads(event.value)
    record["timestamp"] = timestamp
    return orjson.dumps(record)


def _minute_counts(timestamps: list[float]) -> Counter[tuple[str, str]]:
    return Counter((MODEL, iso(int(t) // 60 * 60)) for t in timestamps)


class _Trickle(threading.Thread):
    """Produces partition 1's events one at a time, event time T0 + i, a few per second."""

    def __init__(self, bootstrap: str, topic: str, values: list[bytes]) -> None:
        super().__init__(name="trickle", daemon=True)
        self.servers, self.topic, self.values = bootstrap, topic, values
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.servers, linger_ms=0)
        try:
            for value in self.values:
                if self.stop.wait(TRICKLE_EVERY_S):
                    return
                producer.send(self.topic, value=value, partition=1).get(timeout=10)
                self.sent += 1
        finally:
            producer.close()


def _visit(bootstrap: str, topic: str, group: str, agent: AgentProcess) -> None:
    """A plain consumer joins the group for a moment (taking partition 1: the range assignor
    orders members by id and ``zzz-visitor`` sorts after ``embmon``), then leaves. It polls
    in a thread of its own, as a member in another process would: a join on a loaded machine
    can take a while, and a poll loop shared with the waiting would stall it."""
    held: list[set[int]] = []
    visiting = threading.Event()
    visiting.set()

    def visit() -> None:
        visitor = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id="zzz-visitor",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            max_poll_interval_ms=10000,
        )
        try:
            visitor.subscribe([topic])
            while visiting.is_set():
                visitor.poll(timeout_ms=200)
                held.append({tp.partition for tp in visitor.assignment()})
        finally:
            visitor.close(autocommit=False)

    thread = threading.Thread(target=visit, name="visitor", daemon=True)
    thread.start()
    try:
        wait_for(lambda: held and held[-1], "the visitor assigned", timeout_s=60, agents=[agent])
        assert held[-1] == {1}
        stay_until = time.monotonic() + 2.0
        wait_for(lambda: time.monotonic() > stay_until, "the visitor's stay", agents=[agent])
    finally:
        visiting.clear()
        thread.join(timeout=30)


def test_a_rebalance_does_not_make_a_trickling_partition_look_caught_up(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """During a rebalance nothing is fetched, so partition 1 sits at a stale high watermark;
    counted as caught up, it would let partition 0's event time (minutes ahead) close the
    windows partition 1 is still being written into, and its next events would be late."""
    reference = digits_reference(tmp_path_factory)
    topic = new_topic(kafka_bootstrap, 2, prefix="trickle")
    gid = f"g-{uuid.uuid4().hex[:8]}"
    base = digits_events(windows=1, per_window=TRICKLE_EVENTS + 100, window_s=60, seed=31)
    bulk = [_at(e, BULK_START + i) for i, e in enumerate(base[:100])]
    trickle_times = [float(T0 + i) for i in range(TRICKLE_EVENTS)]
    trickle = [_at(e, t) for e, t in zip(base[100:], trickle_times, strict=True)]
    produce(kafka_bootstrap, topic, [(0, value, None) for value in bulk])

    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=gid,
        reference=reference,
        out=tmp_path / "out",
        window="1m",
        lateness="0s",
    ) as agent:
        agent.wait_ready()
        producer = _Trickle(kafka_bootstrap, topic, trickle)
        producer.start()
        try:
            agent.wait_metrics(
                lambda m: (m.get("embmon_events_total", model=MODEL) or 0) >= len(bulk) + 10,
                "the bulk and the first trickled events read",
                timeout_s=30,
            )
            _visit(kafka_bootstrap, topic, gid, agent)
            wait_for(lambda: not producer.is_alive(), "the trickle", timeout_s=60, agents=[agent])
        finally:
            producer.stop.set()
            producer.join()
        assert producer.sent == TRICKLE_EVENTS
        sentinels = [_at(base[0], SENTINEL), _at(base[1], SENTINEL)]
        produce(kafka_bootstrap, topic, [(p, v, None) for p, v in enumerate(sentinels)])
        expected = _minute_counts(trickle_times) + _minute_counts(
            [float(BULK_START + i) for i in range(len(bulk))]
        )

        def settled(m: Metrics) -> bool:
            return (m.get("embmon_events_rejected_total", reason="late") or 0) > 0 or (
                window_counts(agent.out) == expected
            )

        scrape = agent.wait_metrics(settled, "every window written", timeout_s=40)
        assert scrape.get("embmon_events_rejected_total", reason="late") is None
        assert window_counts(agent.out) == expected
        agent.terminate()
        assert agent.wait_exit(10) == 0, agent.log_tail()
