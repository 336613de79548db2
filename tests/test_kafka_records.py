"""agent.kafka_records reads fetches to exactly what kafka-python's own reader gives.

Fetches are built with kafka-python's own batch builder (message formats v1 and v2, no
compression and gzip, keys, headers, empty and 2-byte-length values, transactional batches),
and some batches are rewritten after building: log-append time or the control flag set in
their attributes, the CRC recomputed. Each fetch is read by both ``PartitionRecords`` classes
from the same fetch offset, in takes of drawn sizes, and everything the fetcher reads back is
compared after every take: the records, ``leader_epoch``, ``records_read``, ``bytes_read``,
``next_fetch_offset``, whether it is drained, and any error raised (type and message). The
same is done with bytes of a fetch overwritten, with and without CRC checks.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from agent.kafka_records import FastPartitionRecords

TP = TopicPartition("events", 3)
ATTRIBUTES, CRC = 21, 17  # byte offsets in a v2 batch
LOG_APPEND_TIME, CONTROL = 0x08, 0x20
# the first batch's length, leader epoch, magic, attributes and record count: where the two
# readers' checks differ most (kafka-python reads a magic past 2 as v2 without its epoch)
HEADER_FIELDS = st.sampled_from([11, 15, 16, 22, 60])
BYTES = st.sampled_from([0, 1, 2, 3, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)

headers = st.lists(st.tuples(st.text(max_size=6), st.none() | st.binary(max_size=8)), max_size=3)
records = st.lists(
    st.tuples(
        st.none() | st.binary(max_size=12),  # key
        st.none()
        | st.binary(max_size=40)
        | st.binary(min_size=64, max_size=300)
        | st.just(b"v" * 20_000),  # value: a size of 3 varint bytes
        headers,
        st.integers(0, 10**7),  # timestamp delta, ms
    ),
    min_size=1,
    max_size=12,
)
batches = st.lists(
    st.fixed_dictionaries(
        {
            "records": records,
            "magic": st.sampled_from([2, 2, 2, 1]),
            "gzip": st.booleans(),
            "transactional": st.booleans(),
            "flags": st.sampled_from([0, 0, 0, LOG_APPEND_TIME, CONTROL]),
            "gap": st.integers(0, 3),  # offsets skipped before the batch (compaction)
        }
    ),
    max_size=4,
)
PLAIN = {  # three 300-byte values in one uncompressed v2 batch
    "records": [(None, b"x" * 300, [], 5)] * 3,
    "magic": 2,
    "gzip": False,
    "transactional": False,
    "flags": 0,
    "gap": 0,
}
takes = st.lists(st.none() | st.integers(1, 7), min_size=1, max_size=6)


def fetch(drawn: list[dict[str, Any]], cut: int = 0) -> bytes:
    """The batches one after the other, as a fetch response holds them, less ``cut`` bytes."""
    parts, offset = [], 0
    for batch in drawn:
        offset += batch["gap"]
        v2 = batch["magic"] == 2
        transactional = v2 and batch["transactional"]
        builder = MemoryRecordsBuilder(
            batch["magic"],
            1 if batch["gzip"] else 0,
            batch_size=1 << 24,
            offset=offset,
            transactional=transactional,
            producer_id=7 if transactional else -1,
            producer_epoch=0 if transactional else -1,
            base_sequence=0 if transactional else -1,
        )
        for key, value, head, delta in batch["records"]:
            stamp = 1_790_000_000_000 + delta
            builder.append(stamp, key, value, head if v2 else [])
        builder.close()
        data = bytearray(builder.buffer())
        if v2 and batch["flags"]:
            (attributes,) = struct.unpack_from(">h", data, ATTRIBUTES)
            struct.pack_into(">h", data, ATTRIBUTES, attributes | batch["flags"])
            struct.pack_into(">I", data, CRC, calc_crc32c(memoryview(data)[ATTRIBUTES:]))
        parts.append(bytes(data))
        offset += len(batch["records"])
    whole = b"".join(parts)
    return whole[: max(0, len(whole) - cut)]


def reads(
    kind: type, data: bytes, start: int, sizes: list[int | None], **options: Any
) -> list[Any]:
    """Every take's records and the fetcher-visible state after it, or the error it raised."""
    part = kind(start, TP, MemoryRecords(data), **options)
    seen: list[Any] = []
    for size in sizes:
        try:
            taken = part.take(size)
        except Exception as exc:  # the error itself is compared
            seen.append(("raised", type(exc), str(exc)))
            continue
        state = (part.leader_epoch, part.records_read, part.bytes_read, part.next_fetch_offset)
        seen.append((taken, state, bool(part)))
    return seen


def assert_same(data: bytes, start: int, sizes: list[int | None], **options: Any) -> None:
    theirs = reads(Fetcher.PartitionRecords, data, start, sizes, **options)
    ours = reads(FastPartitionRecords, data, start, sizes, **options)
    assert ours == theirs


@settings(max_examples=300, deadline=None)
@given(
    batches,
    st.integers(0, 20),
    takes,
    st.booleans(),
    st.sampled_from([IsolationLevel.READ_UNCOMMITTED, IsolationLevel.READ_COMMITTED]),
)
def test_fetches_read_to_the_same_records_and_bookkeeping(
    drawn: list[dict[str, Any]], start: int, sizes: list[int | None], crcs: bool, isolation: Any
) -> None:
    assert_same(fetch(drawn), start, sizes, check_crcs=crcs, isolation_level=isolation)


@settings(max_examples=300, deadline=None)
@given(
    batches,
    st.integers(0, 300),
    st.lists(st.tuples(HEADER_FIELDS | st.integers(0, 70) | st.integers(0), BYTES), max_size=3),
    takes,
    st.booleans(),
)
def test_corrupted_and_cut_fetches_read_or_fail_the_same(
    drawn: list[dict[str, Any]],
    cut: int,
    writes: list[tuple[int, int]],
    sizes: list[int | None],
    crcs: bool,
) -> None:
    data = bytearray(fetch(drawn, cut=cut))
    for where, value in writes:  # often into the first batch's header (61 bytes)
        if data:
            data[where % len(data)] = value
    assert_same(bytes(data), 0, sizes, check_crcs=crcs)


def test_a_batch_whose_magic_byte_reads_3_is_read_as_kafka_python_reads_it() -> None:
    """Found by the test above: kafka-python parses it as v2 but keeps the old leader epoch."""
    data = bytearray(fetch([PLAIN]))
    data[16] = 3
    assert_same(bytes(data), 0, [None], check_crcs=False)


def test_a_plain_fetch_is_read_by_the_fast_path() -> None:
    """A control on the test above: the fast reader must not be giving every fetch back."""
    data = fetch([PLAIN])
    part = FastPartitionRecords(0, TP, MemoryRecords(data))
    assert part._read_fetch(TP, MemoryRecords(data)) is not None
    taken = part.take(None)
    assert [r.value for r in taken] == [b"x" * 300] * 3
    assert [r.offset for r in taken] == [0, 1, 2]
