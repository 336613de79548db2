"""JSON-lines files read a block at a time give the records that reading line by line gives.

agent/file_source.py splits whole blocks into lines (one copy per line); the reference here is
the plain reading it replaced: ``readline``, ``rstrip(b"\\r\\n")``, a BOM off the first line,
blank lines skipped, offsets the 0-based line numbers, records cut into chunks of
``chunk_size``. Small blocks put line ends, ``\\r\\n`` pairs and the BOM across block edges.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import file_source
from agent.file_source import iter_file_records
from agent.source import RawRecord

_BOM = b"\xef\xbb\xbf"


def _line_by_line(data: bytes, chunk_size: int, stamp: int) -> list[list[RawRecord]]:
    records = []
    for number, line in enumerate(io.BytesIO(data)):
        value = line.rstrip(b"\r\n")
        if number == 0:
            value = value.removeprefix(_BOM)
        if value.strip():
            records.append(RawRecord(value, stamp, 0, number, "file:t"))
    return [records[i : i + chunk_size] for i in range(0, len(records), chunk_size)]


_PIECES = st.sampled_from([b"\n", b"\r", b"\r\n", b" ", b"\t", b"\x0b", b"{}", b"x" * 7, _BOM])
_DATA = st.lists(_PIECES, max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=_DATA, chunk_size=st.integers(1, 6), block=st.integers(1, 9), gz=st.booleans())
def test_blocks_of_lines_give_the_records_of_reading_line_by_line(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk_size: int, block: int, gz: bool
) -> None:
    path = tmp_path_factory.mktemp("lines") / ("t.jsonl.gz" if gz else "t.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(file_source, "_BLOCK", block)
        got = list(
            iter_file_records(path, chunk_size=chunk_size, record_timestamp_ms=7, topic="file:t")
        )
    assert got == _line_by_line(data, chunk_size, 7)
    assert all(type(r) is RawRecord for chunk in got for r in chunk)


def test_a_line_longer_than_many_blocks_is_one_record(tmp_path: Path) -> None:
    long = b'{"x": "' + b"a" * 5000 + b'"}'
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"{}\r\n" + long + b"\n\n" + long)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(file_source, "_BLOCK", 64)
        (chunk,) = iter_file_records(path, record_timestamp_ms=0)
    assert [(r.value, r.offset) for r in chunk] == [(b"{}", 0), (long, 1), (long, 3)]
