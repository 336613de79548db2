"""``embmon run``: the long-running agent. Kafka in, window profiles, Prometheus out.

Each turn of the loop: poll; apply revocations and assignments; decode each partition's
records and route them into windows; note positions (and lag); close due windows, evaluate
and persist them; only then commit the offsets the window store says are safe; pause the
partitions that run too far ahead in event time. SIGTERM or SIGINT ends the loop after the
current turn; open windows are not emitted partially, their events are re-read by whoever
resumes the group.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, cast

from kafka import KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from exporters.http import Health, MetricsServer
from exporters.prometheus import AgentMetrics, EmbmonCollector
from exporters.table import format_row
from sketches.reference import Reference

from .checkpoint import Checkpoint
from .config import Settings, load_settings
from .decode import Decoder, RawRecord, Reject
from .fields import FieldMap
from .kafka_source import KafkaSettings, KafkaSource, Poll
from .pipeline import Pipeline
from .windows import parse_duration

__all__ = ["Agent", "run", "run_from_args"]

log = logging.getLogger("embmon")
_COMMIT_EVERY_S = 5.0


def _version() -> str:
    try:
        return version("embmon")
    except PackageNotFoundError:
        return "dev"


class Agent:
    """One replica of the agent: a consumer-group member with its windows and endpoint."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        if not settings.topics:
            raise ValueError("no topic to consume: set --topic (or EMBMON_TOPICS / topics:)")
        if not settings.reference:
            raise ValueError("no reference: set --reference (or EMBMON_REFERENCE / reference:)")
        self.settings = settings
        self.reference = Reference.load(settings.reference)
        self.metrics = AgentMetrics(version=_version())
        self.collector = EmbmonCollector(
            self.metrics,
            max_models=settings.max_models,
            max_segments=settings.max_segments,
            max_terms=settings.max_terms,
        )
        self.registry = CollectorRegistry()
        self.collector.register(self.registry)
        self.health = Health()
        decoder = Decoder(
            self.reference.dim,
            FieldMap.from_mapping(dict(settings.fields)),
            segment_keys=settings.segment_keys,
            default_model=settings.default_model,
            max_event_bytes=settings.max_event_bytes,
        )
        self.pipeline = Pipeline(
            self.reference,
            decoder,
            window=parse_duration(settings.window),
            out_dir=settings.out,
            lateness=parse_duration(settings.lateness),
            time_mode=cast(Literal["event", "processing"], settings.time_mode),
            clock=clock,
            max_windows_ahead=settings.watermark_lead_windows,
            collector=self.collector,
            on_close=lambda record: log.info("window closed: %s", format_row(record)),
        )
        self.stop = threading.Event()
        self._dead_letters: KafkaProducer | None = None
        self._last_commit = 0.0

    def kafka_settings(self) -> KafkaSettings:
        s = self.settings
        return KafkaSettings(
            bootstrap_servers=[b.strip() for b in s.bootstrap_servers.split(",") if b.strip()],
            topics=s.topics,
            group_id=s.group_id,
            client_id=s.client_id,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            max_poll_records=s.max_poll_records,
            security_protocol=s.security_protocol,
            sasl_mechanism=s.sasl_mechanism,
            sasl_plain_username=s.sasl_plain_username,
            sasl_plain_password=s.sasl_plain_password,
            ssl_cafile=s.ssl_cafile,
            ssl_certfile=s.ssl_certfile,
            ssl_keyfile=s.ssl_keyfile,
            fetch_max_bytes=s.fetch_max_bytes,
            max_partition_fetch_bytes=s.max_partition_fetch_bytes,
        )

    def run(self) -> int:
        """Consume until stopped (or, with ``until_end``, until the end offsets seen at start)."""
        server = None
        if self.settings.metrics_port:
            server = MetricsServer(
                self.registry, self.health, self.settings.metrics_host, self.settings.metrics_port
            ).start()
            log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, server.port)
        try:
            with KafkaSource(self.kafka_settings(), until_end=self.settings.until_end) as source:
                self.health.ready = True
                self._loop(source)
        finally:
            if self._dead_letters is not None:
                self._dead_letters.close()
            if server is not None:
                server.stop()
        return 0

    def _loop(self, source: KafkaSource) -> None:
        store = self.pipeline.store
        while not self.stop.is_set():
            self.health.tick()
            poll = source.poll(timeout_ms=500)
            self._apply_assignment(poll)
            self._ingest(poll)
            progress = source.progress()
            for tp, state in progress.items():
                store.advance(tp, state.position, caught_up=state.caught_up)
            with self.metrics.lock:
                self.metrics.lag = {
                    (tp.topic, tp.partition): p.lag
                    for tp, p in progress.items()
                    if p.lag is not None
                }
            closed = self.pipeline.close()
            self._commit(source, force=bool(closed))
            source.set_paused(TopicPartition(*tp) for tp in store.paused_partitions())
            if self.settings.until_end and source.finished():
                self.pipeline.close(everything=True)
                self._commit(source, force=True)
                log.info("reached the end offsets seen at start; all windows closed")
                return
        self._commit(source, force=True)

    def _apply_assignment(self, poll: Poll) -> None:
        store = self.pipeline.store
        if poll.revoked:
            log.info("partitions revoked: %s", sorted(poll.revoked))
            store.revoke(poll.revoked)
        for tp, committed in poll.assigned.items():
            log.info("partition assigned: %s (committed %s)", tp, committed)
            store.assign(tp, Checkpoint.from_committed(committed))

    def _ingest(self, poll: Poll) -> None:
        by_partition: dict[tuple[str, int], list[RawRecord]] = defaultdict(list)
        for r in poll.records:
            by_partition[(r.topic, r.partition)].append(
                RawRecord(r.value, r.timestamp_ms, r.partition, r.offset)
            )
        for tp, records in by_partition.items():
            decoded = self.pipeline.ingest(TopicPartition(*tp), records)
            if decoded.rejects and self.settings.dead_letter_topic:
                self._send_dead_letters(tp[0], decoded.rejects)

    def _commit(self, source: KafkaSource, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < _COMMIT_EVERY_S:
            return
        checkpoints: Mapping[Any, Checkpoint] = self.pipeline.store.commit_offsets()
        if source.commit({tp: (c.offset, c.metadata()) for tp, c in checkpoints.items()}):
            self._last_commit = now

    def _send_dead_letters(self, topic: str, rejects: tuple[Reject, ...]) -> None:
        if self._dead_letters is None:
            self._dead_letters = KafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers.split(","),
                **self.settings.kafka_security(),
            )
        target = cast(str, self.settings.dead_letter_topic)
        for reject in rejects:
            headers = [
                ("embmon-reason", reject.reason.encode()),
                ("embmon-detail", reject.detail.encode()),
                ("embmon-source", f"{topic}/{reject.partition}/{reject.offset}".encode()),
            ]
            self._dead_letters.send(target, value=reject.value or b"", headers=headers)


def run(settings: Settings) -> int:
    logging.getLogger().setLevel(settings.log_level.upper())
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    agent = Agent(settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop.set())
    return agent.run()


def run_from_args(args: Mapping[str, Any]) -> int:
    """``embmon run``: settings from ``--config``/``EMBMON_CONFIG``, variables and flags."""
    flags = {k: v for k, v in args.items() if k not in ("command", "config")}
    return run(load_settings(args.get("config"), flags=flags))
