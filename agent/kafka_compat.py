"""Where embmon reads kafka-python's private state (with :mod:`agent.kafka_records`, which
it installs), checked once at start-up.

kafka-python 3.0.12 has two gaps a streaming agent falls into, and both are bridged through
its ``Fetcher``'s private fields:

* a partition's high watermark is only as fresh as its last fetch response that was read, so a
  partition with fetched records still buffered may look caught up while it is not
  (:func:`buffered_partitions`);
* ``Fetcher.fetched_records`` restores records parked by ``pause()`` only when its in-line slot
  is ``None``, but a fully read batch stays there (empty, not ``None``): the resumed partition
  is then never fetched again (:func:`unstick_parked_records`).

Two more gaps concern the consumer's life cycle:

* ``KafkaConsumer()`` bootstraps eagerly, and when that fails it raises with its IO thread
  still running and its client unreachable: a caller that retries leaks one thread and socket
  set per attempt. :func:`new_consumer` hands the documented ``kafka_client`` option a factory
  that keeps the client, and closes it when the constructor raises.
* ``KafkaConsumer.close()`` sends LeaveGroup whenever the coordinator holds a member id, also in
  the middle of a join. On Tansu 0.6 a LeaveGroup from the member elected leader before its
  SyncGroup leaves the forming group with a leader that is no longer a member: every member
  that joins later waits in SyncGroup (RebalanceInProgress) for ever, until the broker restarts.
  :func:`forget_membership` makes the coordinator drop its membership locally first, so close
  sends nothing; the broker forgets the member after its session timeout.

And one cost: kafka-python parses each fetched record in pure Python, at more than embmon's
own cost per event. :func:`new_consumer` gives its fetcher the faster reader of
:mod:`agent.kafka_records`, which reads ``MemoryRecords._buffer`` and ``DefaultRecordBatch``'s
buffer, position and record count.

:func:`check` fails at once, with what to do, when the installed kafka-python lacks these
fields, instead of letting the agent mis-judge its watermark later. ``TESTED_VERSIONS`` are
the releases these workarounds were checked against (pyproject pins them).
"""

from __future__ import annotations

import logging
from typing import Any

import kafka
from kafka import KafkaConsumer, TopicPartition
from kafka.net.compat import KafkaNetClient

from agent.kafka_records import FastPartitionRecords, missing_reader_fields

__all__ = [
    "TESTED_VERSIONS",
    "KafkaCompatError",
    "buffered_partitions",
    "check",
    "forget_membership",
    "new_consumer",
    "unstick_parked_records",
]

log = logging.getLogger(__name__)

TESTED_VERSIONS = ("3.0.12",)
_FETCHER_FIELDS = (
    "_completed_fetches",
    "_next_partition_records",
    "_paused_completed_fetches",
    "_paused_partition_records",
)


class KafkaCompatError(RuntimeError):
    """The installed kafka-python does not have the internals embmon relies on."""


def check(consumer: Any) -> None:
    """Fail clearly if ``consumer`` (a ``KafkaConsumer``) lacks the fields used here."""
    fetcher = getattr(consumer, "_fetcher", None)
    missing = [name for name in _FETCHER_FIELDS if not hasattr(fetcher, name)]
    if fetcher is None or missing:
        _fail(f"Fetcher fields {missing or ['_fetcher']}")
    if not callable(getattr(getattr(consumer, "_coordinator", None), "reset_generation", None)):
        _fail("the coordinator method _coordinator.reset_generation()")
    reader_missing = missing_reader_fields()
    if reader_missing:
        _fail(f"the record-reading internals {reader_missing}")
    if kafka.__version__ not in TESTED_VERSIONS:
        log.warning(
            "kafka-python %s is not among the releases embmon was tested with (%s)",
            kafka.__version__,
            ", ".join(TESTED_VERSIONS),
        )


def _fail(what: str) -> None:
    raise KafkaCompatError(
        f"kafka-python {kafka.__version__} lacks {what} that embmon uses; install a tested "
        f"release: pip install 'kafka-python=={TESTED_VERSIONS[-1]}'"
    )


def new_consumer(config: dict[str, Any]) -> KafkaConsumer:
    """``KafkaConsumer(**config)`` that leaves no IO thread behind when it cannot bootstrap,
    and reads fetched records with :class:`agent.kafka_records.FastPartitionRecords`."""
    made: list[Any] = []

    def client(**kwargs: Any) -> Any:
        made.append(KafkaNetClient(**kwargs))
        return made[-1]

    try:
        consumer = KafkaConsumer(**config, kafka_client=client)
    except BaseException:
        for each in made:
            each.close()
        raise
    consumer._fetcher.PartitionRecords = FastPartitionRecords  # this consumer's fetcher only
    return consumer


def forget_membership(consumer: Any) -> None:
    """Drop the member id and generation locally, so ``close()`` sends no LeaveGroup."""
    consumer._coordinator.reset_generation()


def buffered_partitions(consumer: Any) -> set[TopicPartition]:
    """Partitions with fetched records not yet returned by ``poll``."""
    fetcher = consumer._fetcher
    found = {f.topic_partition for f in list(fetcher._completed_fetches)}
    current = fetcher._next_partition_records
    if current:
        found.add(current.topic_partition)
    found.update(fetcher._paused_completed_fetches)
    found.update(fetcher._paused_partition_records)
    return found


def unstick_parked_records(consumer: Any) -> None:
    """Free the fetcher's empty in-line slot so records parked by ``pause()`` come back.

    Run before every ``poll``.
    """
    fetcher = consumer._fetcher
    current = fetcher._next_partition_records
    if current is not None and not current and fetcher._paused_partition_records:
        fetcher._next_partition_records = None
