"""Broker fixtures: a real Kafka-protocol broker for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from demo.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``KAFKA_BOOTSTRAP_SERVERS`` when set, else an embedded Tansu broker for the session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers
