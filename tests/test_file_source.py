"""File sources: JSON lines and Parquet reach the decoder exactly as Kafka records do."""

from __future__ import annotations

import base64
import gzip
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.decode import Decoder
from agent.fields import FieldMap
from agent.file_source import iter_file_records, load_events
from agent.source import RawRecord
from sketches.errors import FormatError

DIM = 3
T0 = 1_795_132_800  # 2026-11-20T00:00:00Z


def _events(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return [
        {
            "event_id": f"e{i}",
            "timestamp": T0 + 60 * i,
            "model": "news" if i % 3 else "ads",
            "embedding": vectors[i].tolist(),
            "text": f"Documento {i} está aquí",
            "prediction": "a" if i % 2 else "b",
            "target": "a",
            "segment": {"region": "eu" if i % 2 else "us"},
        }
        for i in range(n)
    ]


def _write_jsonl(path: Path, lines: list[bytes]) -> Path:
    data = b"\n".join(lines) + b"\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _decode_all(decoder: Decoder, chunks: list[list[RawRecord]]) -> dict[tuple[Any, ...], Any]:
    """Per (model, segment): embeddings, timestamps, tokens and offsets over all chunks."""
    merged: dict[tuple[Any, ...], Any] = {}
    for chunk in chunks:
        for g in decoder.decode(chunk).groups:
            acc = merged.setdefault((g.model, g.segment), ([], [], [], []))
            acc[0].append(g.batch.embeddings)
            acc[1].extend(g.batch.timestamps.tolist())
            acc[2].extend(g.batch.tokens or [])
            acc[3].extend(g.offsets.tolist())
    return {k: (np.concatenate(v[0]), v[1], v[2], v[3]) for k, v in merged.items()}


def _assert_same(got: dict[tuple[Any, ...], Any], want: dict[tuple[Any, ...], Any]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key][0], want[key][0])
        assert got[key][1:] == want[key][1:]


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz", "events.ndjson"])
def test_jsonl_replay_decodes_like_the_live_path(tmp_path: Path, name: str) -> None:
    events = _events(25)
    lines = [orjson.dumps(e) for e in events]
    path = _write_jsonl(tmp_path / name, lines)
    decoder = Decoder(DIM, segment_keys=["region"])

    chunks = list(iter_file_records(path, chunk_size=7))
    assert [len(c) for c in chunks] == [7, 7, 7, 4]
    assert [r.offset for c in chunks for r in c] == list(range(25))
    assert {r.partition for c in chunks for r in c} == {0}

    live = [[RawRecord(v, 0, 0, i) for i, v in enumerate(lines)]]
    _assert_same(_decode_all(decoder, chunks), _decode_all(decoder, live))


def test_jsonl_offsets_are_line_numbers_past_blank_lines_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"embedding": [1, 2, 3]}\r\n\n   \n{"embedding": [4, 5, 6]}\r\nnot json'
    )
    (chunk,) = iter_file_records(path, record_timestamp_ms=T0 * 1000)
    assert [(r.offset, r.timestamp) for r in chunk] == [
        (0, T0 * 1000),
        (3, T0 * 1000),
        (4, T0 * 1000),
    ]
    out = Decoder(DIM).decode(chunk)
    assert out.groups[0].offsets.tolist() == [0, 3]
    assert [(r.reason, r.offset) for r in out.rejects] == [("invalid_json", 4)]


def test_events_without_timestamp_get_the_file_modification_time(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "e.jsonl", [b'{"embedding": [1, 2, 3]}'])
    os.utime(path, (T0, T0))
    out = Decoder(DIM).decode(next(iter_file_records(path)))
    assert out.groups[0].batch.timestamps.tolist() == [float(T0)]


def _parquet(path: Path, events: list[dict[str, Any]], row_group_size: int) -> Path:
    table = pa.table(
        {
            "event_id": [e["event_id"] for e in events],
            "timestamp": pa.array(
                [datetime.fromtimestamp(e["timestamp"], UTC) for e in events],
                type=pa.timestamp("ms", tz="UTC"),
            ),
            "model": [e["model"] for e in events],
            "embedding": pa.array([e["embedding"] for e in events], type=pa.list_(pa.float32())),
            "text": [e["text"] for e in events],
            "prediction": [e["prediction"] for e in events],
            "target": [e["target"] for e in events],
            "segment": [e["segment"] for e in events],
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_parquet_replay_decodes_like_jsonl(tmp_path: Path) -> None:
    events = _events(23, seed=3)
    path = _parquet(tmp_path / "events.parquet", events, row_group_size=10)
    decoder = Decoder(DIM, segment_keys=["region"])

    chunks = list(iter_file_records(path, chunk_size=4))
    assert all(len(c) <= 4 for c in chunks)
    assert [r.offset for c in chunks for r in c] == list(range(23))

    jsonl = _write_jsonl(tmp_path / "events.jsonl", [orjson.dumps(e) for e in events])
    _assert_same(_decode_all(decoder, chunks), _decode_all(decoder, list(iter_file_records(jsonl))))


def test_parquet_binary_column_is_a_base64_embedding(tmp_path: Path) -> None:
    vectors = np.arange(6, dtype="<f4").reshape(2, DIM)
    table = pa.table(
        {"embedding_b64": [row.tobytes() for row in vectors], "timestamp": [T0, T0 + 1]}
    )
    pq.write_table(table, tmp_path / "b.parquet")
    out = Decoder(DIM).decode(next(iter_file_records(tmp_path / "b.parquet")))
    np.testing.assert_array_equal(out.groups[0].batch.embeddings, vectors)


def test_unknown_suffix_and_missing_pyarrow_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FormatError, match=r"\.jsonl"):
        iter_file_records(tmp_path / "events.csv")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import now raises ImportError
    with pytest.raises(FormatError, match=r"pip install 'embmon\[parquet\]'"):
        iter_file_records(tmp_path / "events.parquet")


def test_load_events_keeps_file_order_across_models_and_segments(tmp_path: Path) -> None:
    events = _events(20, seed=5)
    events[4] = {"embedding": [1.0, 2.0]}  # wrong dimension
    events[9] = {"embedding": [1.0, 2.0, 3.0], "timestamp": "soon"}
    path = _write_jsonl(tmp_path / "ref.jsonl", [orjson.dumps(e) for e in events])

    loaded = load_events(path, chunk_size=6)
    kept = [e for i, e in enumerate(events) if i not in (4, 9)]
    np.testing.assert_array_equal(
        loaded.embeddings, np.array([e["embedding"] for e in kept], dtype=np.float32)
    )
    assert loaded.labels == [e["target"] for e in kept]
    assert loaded.predictions == [e["prediction"] for e in kept]
    assert loaded.tokens is not None and loaded.tokens[0] == ["documento", "0", "está", "aquí"]
    assert loaded.rejects == {"wrong_dimension": 1, "bad_timestamp": 1}

    by_model = load_events(path, label_field="model")
    assert by_model.labels == [e["model"] for e in kept]


def test_load_events_infers_the_dimension_and_reads_nested_fields(tmp_path: Path) -> None:
    b64 = base64.b64encode(np.array([1, 2, 3, 4], dtype="<f4").tobytes()).decode()
    lines = [b"junk", b'{"p": {"v64": "' + b64.encode() + b'"}}', b'{"p": {"v": [5, 6, 7, 8]}}']
    path = _write_jsonl(tmp_path / "nested.jsonl.gz", lines)
    fields = FieldMap(embedding="p.v", embedding_b64="p.v64")
    loaded = load_events(path, fields=fields)
    assert loaded.embeddings.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert (loaded.labels, loaded.tokens, loaded.predictions) == (None, None, None)
    assert loaded.rejects == {"invalid_json": 1}


def test_load_events_without_a_good_event_raises(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [b'{"text": "no vectors"}'])
    with pytest.raises(FormatError, match="dimension is unknown"):
        load_events(path)
    with pytest.raises(FormatError, match="missing_embedding"):
        load_events(path, dim=DIM)


def test_a_missing_file_fails_before_iteration(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        iter_file_records(tmp_path / "absent.jsonl", record_timestamp_ms=0)
