"""``embmon run --role evaluator --until-end`` through a broker outage during its end-offset probe.

A bounded evaluator asks for the end offsets of the input topics once it holds a profiles
partition (``Evaluator.finished`` calls the ``ends`` probe ``agent.run`` gives it, which is
``KafkaSource.end_offsets``: a fresh consumer and ListOffsets). If the broker is down at that
moment kafka-python raises ``KafkaTimeoutError`` (the probe's consumer finds no broker within
``bootstrap_timeout_ms``), and before the fix that ended the agent.

The broker is a real Tansu over TCP with durable storage (``tests.durable_broker``): SIGKILLed
just before the first probe and started again once that probe has returned or raised, as in
``tests/test_kafka_source_outage.py``. kafka-python is not mocked. The agent (in-process, so
the probe can be wrapped) must not raise, and must write every window with every event.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import agent.cli
from agent.config import load_settings
from agent.kafka_source import KafkaSource
from agent.run import Agent
from tests.agent_scenarios import (
    HOUR,
    digits_events,
    digits_reference,
    expected_counts,
    produce_events,
    window_counts,
)
from tests.broker import new_topic
from tests.durable_broker import DurableBroker, down_during_first_call

pytestmark = pytest.mark.kafka

PARTITIONS = 2


def _agent(bootstrap: str, reference: Path, topic: str, out: Path, *extra: str) -> Agent:
    args = vars(
        agent.cli._parser().parse_args(
            [
                "run",
                "--bootstrap-servers",
                bootstrap,
                "--topic",
                topic,
                "--group-id",
                f"g-{uuid.uuid4().hex[:8]}",
                "--reference",
                str(reference),
                "--out",
                str(out),
                "--window",
                "1h",
                "--metrics-port",
                "0",
                "--until-end",
                *extra,
            ]
        )
    )
    flags = {k: v for k, v in args.items() if k not in ("command", "config")}
    return Agent(load_settings(None, env={}, flags=flags))


def test_an_outage_during_the_evaluators_end_offset_probe_costs_nothing(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = digits_reference(tmp_path_factory)
    events = digits_events(windows=3, per_window=40, window_s=HOUR)
    out = tmp_path / "evaluator"
    with DurableBroker(tmp_path) as broker:
        bootstrap = broker.bootstrap_servers
        topic = new_topic(bootstrap, PARTITIONS, prefix="ends-outage")
        profiles = new_topic(bootstrap, 1, prefix="profiles")
        produce_events(bootstrap, topic, PARTITIONS, [e.value for e in events])
        role = ("--profiles-topic", profiles, "--role")
        collector = _agent(bootstrap, reference, topic, tmp_path / "c", *role, "collector")
        assert collector.run() == 0

        evaluator = _agent(bootstrap, reference, topic, out, *role, "evaluator")
        probe, outage = down_during_first_call(broker, KafkaSource.end_offsets)
        monkeypatch.setattr(KafkaSource, "end_offsets", probe)
        assert evaluator.run() == 0  # must not raise

    assert outage.calls >= 2 and outage.first not in (None, "returned"), vars(outage)
    assert window_counts(out) == expected_counts(events)
