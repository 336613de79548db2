"""``embmon run``: the long-running agent. Kafka in, window profiles, Prometheus out.

The agent is the driver loop (``agent.driver``) over a Kafka source, plus what a service needs
around it: the metrics endpoint, health, dead letters and signals. SIGTERM or SIGINT ends the
loop after the current turn. ``--out`` is resumed: a restarted agent carries on from its own
ledger and the group's committed offsets.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, cast

from kafka import KafkaProducer
from kafka.errors import RetriableError
from prometheus_client import CollectorRegistry

from exporters.http import Health, MetricsServer
from exporters.prometheus import EmbmonCollector
from exporters.records import WindowRecord
from exporters.table import format_row
from sketches.reference import Reference

from .accounting import Accounting
from .collector import Collector, Publisher
from .config import Settings, load_settings
from .dead_letters import DeadLetters
from .decode import Decoder
from .driver import Driver, Stage
from .durations import parse_duration
from .evaluator import Evaluator
from .fields import FieldMap
from .kafka_source import KafkaSettings, KafkaSource, connect
from .ledger import prepare_out
from .pipeline import Pipeline
from .window_caps import Caps

__all__ = ["Agent", "run", "run_from_args"]

log = logging.getLogger("embmon")


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
        self.accounting = Accounting(
            version=_version(), expire_after_windows=settings.series_expiry_windows
        )
        self.registry = CollectorRegistry()
        EmbmonCollector(
            self.accounting.snapshot,
            max_models=settings.max_models,
            max_segments=settings.max_segments,
            max_terms=settings.max_terms,
            term_labels=settings.term_labels,
        ).register(self.registry)
        self.health = Health()
        decoder = Decoder(
            self.reference.dim,
            FieldMap.from_mapping(dict(settings.fields)),
            segment_keys=settings.segment_keys,
            default_model=settings.default_model,
            max_event_bytes=settings.max_event_bytes,
            max_future_s=parse_duration(settings.max_future).total_seconds() or None,
        )
        self.window = parse_duration(settings.window)
        self.lateness = parse_duration(settings.lateness)
        self.publisher: Publisher | None = None
        self._source: KafkaSource | None = None
        self.pipeline: Stage
        if settings.role == "collector":
            self.pipeline = self._collector(decoder)
        elif settings.role == "evaluator":
            self.pipeline = self._evaluator()
        else:
            self.pipeline = Pipeline(
                self.reference,
                decoder,
                window=self.window,
                out_dir=prepare_out(settings.out, resume=True),
                lateness=self.lateness,
                time_mode=cast(Literal["event", "processing"], settings.time_mode),
                clock=clock,
                max_windows_ahead=settings.watermark_lead_windows,
                accounting=self.accounting,
                on_close=_log_closed,
                caps=Caps(settings.max_models, settings.max_segments, settings.max_open_windows),
            )
        self.stop = threading.Event()
        self.dead_letters = self._new_dead_letters()

    def _collector(self, decoder: Decoder) -> Collector:
        """Events in, chunks of partial profiles out to ``profiles_topic``."""
        s = self.settings
        self.publisher = Publisher(self._profiles_producer, cast(str, s.profiles_topic))
        return Collector(
            self.reference,
            decoder,
            self.publisher,
            window=self.window,
            lateness=self.lateness,
            accounting=self.accounting,
        )

    def _evaluator(self) -> Evaluator:
        """Partial profiles in, windows out: ``--out`` and the metrics, as ``--role all``."""
        s = self.settings
        return Evaluator(
            self.reference,
            topics=s.topics,
            window=self.window,
            lateness=self.lateness,
            grace=parse_duration(s.grace),
            out_dir=prepare_out(s.out, resume=True),
            shards=lambda: self._connected().partitions_of(cast(str, s.profiles_topic)),
            ends=(lambda: self._connected().end_offsets(topics=s.topics)) if s.until_end else None,
            accounting=self.accounting,
            on_close=_log_closed,
        )

    def _connected(self) -> KafkaSource:
        if self._source is None:
            raise RuntimeError("not connected to Kafka yet")
        return self._source

    def _profiles_producer(self) -> KafkaProducer:
        """Keeps each partition's records in order (one request in flight, retried): a seal
        never overtakes its pieces."""
        s = self.settings
        return KafkaProducer(
            bootstrap_servers=[b.strip() for b in s.bootstrap_servers.split(",") if b.strip()],
            client_id=f"{s.client_id}-profiles",
            acks="all",
            max_in_flight_requests_per_connection=1,
            linger_ms=5,
            max_request_size=16 * 1024 * 1024,
            max_block_ms=5000,
            **s.kafka_security(),
        )

    def kafka_settings(self) -> KafkaSettings:
        """The consumer: of the inference topics, or of the profiles topic for an evaluator
        (in its own group, ``<group_id>-evaluators``)."""
        s = self.settings
        evaluator = s.role == "evaluator"
        security = s.kafka_security()  # reads the password file, if one is set
        return KafkaSettings(
            bootstrap_servers=[b.strip() for b in s.bootstrap_servers.split(",") if b.strip()],
            topics=[cast(str, s.profiles_topic)] if evaluator else s.topics,
            group_id=f"{s.group_id}-evaluators" if evaluator else s.group_id,
            client_id=s.client_id,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            max_poll_records=s.max_poll_records,
            security_protocol=s.security_protocol,
            sasl_mechanism=s.sasl_mechanism,
            sasl_plain_username=s.sasl_plain_username,
            sasl_plain_password=security.get("sasl_plain_password"),
            ssl_cafile=s.ssl_cafile,
            ssl_certfile=s.ssl_certfile,
            ssl_keyfile=s.ssl_keyfile,
            fetch_max_bytes=s.fetch_max_bytes,
            max_partition_fetch_bytes=s.max_partition_fetch_bytes,
            extra={"ssl_check_hostname": s.ssl_check_hostname},
        )

    def run(self) -> int:
        """Consume until stopped (or, with ``until_end``, until the end offsets seen at start)."""
        server = None
        if self.settings.metrics_port:
            server = MetricsServer(
                self.registry,
                self.health,
                self.settings.metrics_host,
                self.settings.metrics_port,
                web_config=self.settings.metrics_web_config,
            ).start()
            log.info("metrics on %s/metrics", server.url)
        try:
            source = self._connect()
            if source is None:
                log.info("stopped before connecting to Kafka")
                return 0
            self._source = source
            finished = None
            if isinstance(self.pipeline, Evaluator):
                finished = _RetriedCheck(self.pipeline.finished, "end-offset probe")
            with source:
                Driver(
                    self.pipeline,
                    source,
                    stop=self.stop,
                    on_rejects=self.dead_letters.send if self.dead_letters is not None else None,
                    before_commit=lambda: self._flush_dead_letters(last=source.finished()),
                    on_turn=lambda: self._turn(source),
                    finished=finished,
                ).run()
                if self.settings.until_end:
                    log.info("reached the end offsets seen at start; all windows closed")
        finally:
            if self.dead_letters is not None:
                self.dead_letters.close()
            if self.publisher is not None:
                self.publisher.close()
            if server is not None:
                server.stop()
        return 0

    def _connect(self) -> KafkaSource | None:
        """The source once a broker answers, None if stopped first; the endpoint serves meanwhile
        (alive, not ready). A bounded run (``until_end``) gives up after ``join_timeout``:
        waiting for ever there would hang a batch job."""
        join_timeout = parse_duration(self.settings.join_timeout).total_seconds()
        return connect(
            self.kafka_settings(),
            self.stop,
            give_up_after_s=join_timeout if self.settings.until_end else None,
            on_wait=self.health.tick,
            until_end=self.settings.until_end and self.settings.role != "evaluator",
            join_timeout_s=join_timeout,
            lookback=self.settings.role == "collector",
        )

    def _turn(self, source: KafkaSource) -> None:
        """Liveness: the loop turns. Readiness: this member holds partitions of a stable group
        (not while it is joining or rebalancing, when it reads nothing)."""
        self.health.tick()
        self.health.ready = source.ready()

    def _new_dead_letters(self) -> DeadLetters | None:
        """The dead letters of ``dead_letter_topic`` (none without one), in the snapshot."""
        topic = self.settings.dead_letter_topic
        if not topic:
            return None
        letters = DeadLetters(self._dead_letter_producer, topic, self.settings.dead_letter_rate)
        self.accounting.dead_letters = letters.counts
        return letters

    def _dead_letter_producer(self) -> KafkaProducer:
        """A producer with the consumer's servers and security; a send waits 1 s at most for
        metadata or buffer space, so a missing topic cannot stall the loop."""
        s = self.settings
        return KafkaProducer(
            bootstrap_servers=[b.strip() for b in s.bootstrap_servers.split(",") if b.strip()],
            client_id=f"{s.client_id}-dead-letters",
            max_block_ms=1000,
            **s.kafka_security(),
        )

    def _flush_dead_letters(self, *, last: bool) -> bool:
        """Before each commit: are the dead letters it covers acknowledged? A short wait keeps
        the loop polling (a False skips this commit; the next turn tries again); the last
        commit, once stopping or at the end of a bounded run, waits longer."""
        if self.dead_letters is None:
            return True
        return self.dead_letters.flush(5.0 if last or self.stop.is_set() else 0.5)


class _RetriedCheck:
    """``check()``, or False while the broker does not answer it: a retriable Kafka error
    (``KafkaTimeoutError`` from the evaluator's end-offset probe during an outage) is logged
    and tried again on a later turn, after 1 s, doubling up to 30 s; the loop keeps turning."""

    def __init__(self, check: Callable[[], bool], what: str) -> None:
        self._check = check
        self._what = what
        self._backoff = _FIRST_RETRY_S
        self._next_try = float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            return False
        try:
            answer = self._check()
        except RetriableError as exc:
            log.warning(
                "%s failed (broker unreachable?), retrying in %.0f s: %s",
                self._what,
                self._backoff,
                exc,
            )
            self._next_try = now + self._backoff
            self._backoff = min(self._backoff * 2, _MAX_RETRY_S)
            return False
        self._backoff = _FIRST_RETRY_S
        return answer


_FIRST_RETRY_S = 1.0
_MAX_RETRY_S = 30.0


def _log_closed(record: WindowRecord) -> None:
    log.info("window closed: %s", format_row(record))


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
