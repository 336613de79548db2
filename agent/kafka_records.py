"""Kafka record batches read in fewer Python steps than kafka-python's, to the same records.

kafka-python 3.0.12 turns each fetched record into a ``ConsumerRecord`` in pure Python: a
``DefaultRecord`` object, seven varint calls, two deserializer calls and a header-size sum per
record, ~5-8 µs a record on this machine, more than embmon's own decode of the event it holds.
:class:`FastPartitionRecords` replaces the one generator that does this
(``Fetcher.PartitionRecords._unpack_records``) for the common case and reads each record in one
loop, its varints of one or two bytes read inline.

The promise: the same ``ConsumerRecord`` s in the same order, and the same bookkeeping
(``leader_epoch``, ``records_read``, ``bytes_read``, ``next_fetch_offset``, ``drain()``) as
each record is taken. It holds it like this:

- it only reads fetches it can vouch for: every batch of message format v2, not a control
  batch, no key or value deserializer, and not a transactional batch under
  ``read_committed`` (kafka-python skips aborted ones then);
- it reads the whole fetch before giving a record (a fetch is at most
  ``max_partition_fetch_bytes``), so any doubt found on the way (a failed CRC, a record whose
  fields do not add up to its length, bytes left over, a codec missing, anything raised) gives
  the fetch back, untouched, to kafka-python's own generator, which yields what it would and
  raises its own error at its own record.

tests/test_kafka_records.py holds the two to the same records and bookkeeping over generated
fetches (codecs, keys, headers, timestamps, several batches, partial takes) and corrupted ones.
Installed per consumer by :func:`agent.kafka_compat.new_consumer` (the fetcher's
``PartitionRecords`` attribute), and checked there at start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord, Fetcher, IsolationLevel
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords

__all__ = ["FastPartitionRecords", "missing_reader_fields"]

_Batch = tuple[int, list[Any], list[int]]  # leader epoch, ConsumerRecords, their sizes
_record = tuple.__new__  # a ConsumerRecord without its Python-level __new__ (~0.1 µs less)


def missing_reader_fields() -> list[str]:
    """The kafka-python internals this reader uses that the installed release lacks."""
    needed = {
        Fetcher.PartitionRecords: ("_unpack_records", "drain"),
        MemoryRecords: ("_buffer", "next_batch"),
        DefaultRecordBatch: ("_buffer", "_pos", "_num_records", "_maybe_uncompress"),
    }
    return [
        f"{kind.__name__}.{name}"
        for kind, names in needed.items()
        for name in names
        if not hasattr(kind, name)
    ]


class _Doubt(Exception):
    """The fetch goes to kafka-python's own reader."""


class FastPartitionRecords(Fetcher.PartitionRecords):  # type: ignore[misc]
    """kafka-python's ``PartitionRecords`` with a faster reader for plain v2 fetches."""

    def _unpack_records(
        self, tp: Any, records: MemoryRecords, key_deserializer: Any, value_deserializer: Any
    ) -> Iterator[Any]:
        read = None
        if key_deserializer is None and value_deserializer is None:
            read = self._read_fetch(tp, MemoryRecords(records._buffer))
        if read is None:
            yield from super()._unpack_records(tp, records, key_deserializer, value_deserializer)
            return
        batches, next_offset = read
        for epoch, taken, sizes in batches:
            self.leader_epoch = epoch
            for record, size in zip(taken, sizes, strict=True):
                self.records_read += 1
                self.bytes_read += size
                self.next_fetch_offset = record.offset + 1
                yield record
        if next_offset is not None:
            self.next_fetch_offset = next_offset
        self.drain()

    def _read_fetch(
        self, tp: Any, records: MemoryRecords
    ) -> tuple[list[_Batch], int | None] | None:
        """Every batch's records, and the offset after the last batch; None: kafka-python's."""
        batches: list[_Batch] = []
        next_offset = None
        fetched = bytes(records._buffer)  # no copy when it is bytes already, as fetches are
        start = 0  # of the batch: MemoryRecords cuts them one after the other from 0
        try:
            batch = records.next_batch()
            while batch is not None:
                if not isinstance(batch, DefaultRecordBatch) or batch.magic != 2:
                    return None  # kafka-python reads a magic past 2 as v2, but not its epoch
                if batch.is_control_batch:
                    return None
                if (
                    self.isolation_level == IsolationLevel.READ_COMMITTED
                    and batch.has_producer_id()
                ):
                    return None
                if self.check_crcs and not batch.validate_crc():
                    return None
                if batch.compression_type == batch.CODEC_NONE:  # its records, in the fetch
                    data, first, end = fetched, start + batch._pos, start + batch.size_in_bytes
                else:
                    batch._maybe_uncompress()
                    data = bytes(batch._buffer)
                    first, end = batch._pos, len(data)
                batches.append(_read_batch(tp, batch, data, first, end))
                next_offset = batch.next_offset
                start += batch.size_in_bytes
                batch = records.next_batch()
        except Exception:  # any doubt: kafka-python reads the fetch and raises its own error
            return None
        return batches, next_offset


def _read_batch(tp: Any, batch: DefaultRecordBatch, data: bytes, pos: int, end: int) -> _Batch:
    """One batch's records, ``data[pos:end]``, as ``DefaultRecordBatch.__next__`` and
    ``_unpack_records`` build them.

    The hot loop of the agent's Kafka path, so written out: each varint (zigzag-coded, as
    kafka-python's ``decode_varint`` reads them) is read inline when it fits one or two bytes,
    as record lengths, offset and timestamp deltas and value sizes of up to 8 KB do; longer
    ones take :func:`_unsigned`.
    """
    topic, partition, epoch = tp.topic, tp.partition, batch.leader_epoch
    base_offset, timestamp_type = batch.base_offset, batch.timestamp_type
    first_timestamp = batch.first_timestamp
    log_append_time = batch.max_timestamp if timestamp_type == batch.LOG_APPEND_TIME else None
    taken: list[Any] = []
    sizes: list[int] = []
    for _ in range(batch._num_records):
        u = data[pos]  # the record's length
        if u < 0x80:
            pos += 1
        elif data[pos + 1] < 0x80:
            u, pos = (u & 0x7F) | data[pos + 1] << 7, pos + 2
        else:
            u, pos = _unsigned(data, pos)
        length = (u >> 1) ^ -(u & 1)
        start = pos
        pos = pos + 1 if data[pos] < 0x80 else _unsigned(data, pos)[1]  # attributes: unused
        u = data[pos]  # timestamp delta
        if u < 0x80:
            pos += 1
        elif data[pos + 1] < 0x80:
            u, pos = (u & 0x7F) | data[pos + 1] << 7, pos + 2
        else:
            u, pos = _unsigned(data, pos)
        timestamp = first_timestamp + ((u >> 1) ^ -(u & 1))
        u = data[pos]  # offset delta
        if u < 0x80:
            pos += 1
        elif data[pos + 1] < 0x80:
            u, pos = (u & 0x7F) | data[pos + 1] << 7, pos + 2
        else:
            u, pos = _unsigned(data, pos)
        offset = base_offset + ((u >> 1) ^ -(u & 1))
        if data[pos] == 1:  # key size -1: no key, the common case
            key, key_size, pos = None, -1, pos + 1
        else:
            u, pos = _unsigned(data, pos)
            key, key_size, pos = _bytes(data, pos, (u >> 1) ^ -(u & 1))
        u = data[pos]  # value size
        if u < 0x80:
            pos += 1
        elif data[pos + 1] < 0x80:
            u, pos = (u & 0x7F) | data[pos + 1] << 7, pos + 2
        else:
            u, pos = _unsigned(data, pos)
        value, value_size, pos = _bytes(data, pos, (u >> 1) ^ -(u & 1))
        if data[pos] == 0:  # no headers
            headers: list[tuple[str, bytes | None]] = []
            header_size = -1
            pos += 1
        else:
            headers, header_size, pos = _headers(data, pos)
        if pos - start != length:
            raise _Doubt  # kafka-python: "Invalid record size"
        if log_append_time is not None:
            timestamp = log_append_time
        taken.append(
            _record(
                ConsumerRecord,
                (
                    topic,
                    partition,
                    epoch,
                    offset,
                    timestamp,
                    timestamp_type,
                    key,
                    value,
                    headers,
                    None,
                    key_size,
                    value_size,
                    header_size,
                ),
            )
        )
        sizes.append(length)
    if pos != end:
        raise _Doubt  # kafka-python: "unconsumed bytes after all records consumed"
    return epoch, taken, sizes


def _unsigned(data: bytes, pos: int) -> tuple[int, int]:
    """A varint's raw (not yet zigzag-decoded) value and the next position."""
    value = shift = 0
    while True:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7
        if shift >= 64:
            raise _Doubt  # kafka-python: "Out of int64 range"


def _bytes(data: bytes, pos: int, size: int) -> tuple[bytes | None, int, int]:
    """A nullable byte field (a negative size: None), the size kafka-python reports for it
    (``len``, or -1), and the next position."""
    if size < 0:
        return None, -1, pos
    field = data[pos : pos + size]
    if len(field) != size:
        raise _Doubt  # past the end of the fetch
    return field, size, pos + size


def _headers(data: bytes, pos: int) -> tuple[list[tuple[str, bytes | None]], int, int]:
    """A record's headers, their size as ``_unpack_records`` sums it, and the next position."""
    u, pos = _unsigned(data, pos)
    count = (u >> 1) ^ -(u & 1)
    if count < 0:
        raise _Doubt
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        u, pos = _unsigned(data, pos)
        if u & 1:  # a negative key size
            raise _Doubt
        raw_key, _, pos = _bytes(data, pos, u >> 1)
        u, pos = _unsigned(data, pos)
        value, _, pos = _bytes(data, pos, (u >> 1) ^ -(u & 1))
        headers.append((bytes(raw_key or b"").decode("utf-8"), value))
    size = sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers)
    return headers, (size if headers else -1), pos
