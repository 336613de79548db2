"""A poll decoded column by column gives what decoding each record on its own gives.

``Decoder.decode`` reads and checks the records the compiled reader vouches for all at once
(``_at_once``: the reader's columns, each field checked in a few C loops) and decodes only the
others record by record (``_each``). Together they must give the groups, rows, offsets and
rejects of ``_each`` alone; the polls here mix good events of every shape (and non-finite
vectors, which pass to the matrix check) with the edge cases of tests/test_event_reader.py.
"""

from __future__ import annotations

import base64
from dataclasses import astuple
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.decode import DecodedBatch, Decoder, Reject
from agent.fields import FieldMap
from agent.source import RawRecord
from tests.test_event_reader import DIM, KEPT, NESTED, _events

T0 = 1_767_225_600
_CLOCK = float(T0 + 86_400)

_timestamps = st.one_of(
    st.none(),
    st.integers(T0, T0 + 3600),
    st.floats(T0, T0 + 3600),
    st.sampled_from(["2026-01-01T10:00:00Z", -1, 1e12, _CLOCK + 7200, True]),
)
_labels = st.one_of(st.none(), st.sampled_from(["a", "b", 3, True, "x" * 200, "\x00"]))
_floats = st.floats(-2.0, 2.0, width=32) | st.sampled_from([float("nan"), float("inf"), 1e39])


@st.composite
def _good(draw: st.DrawFn, nested: bool) -> bytes:
    """An event that is good, or nearly: every field drawn from values the reader takes."""
    vector = draw(st.lists(_floats, min_size=DIM, max_size=DIM))
    event: dict[str, Any] = {}
    if draw(st.booleans()):
        with np.errstate(over="ignore"):  # 1e39 becomes inf, as a producer's float32 would
            blob = np.asarray(vector, "<f4").tobytes()
        event["embedding_b64"] = base64.b64encode(blob).decode()
    else:
        event["embedding"] = [x if np.isfinite(x) else 1e39 for x in vector]
    for key, strategy in [
        ("event_id", _labels),
        ("timestamp", _timestamps),
        ("model", st.sampled_from([None, "m1", "m2", ""])),
        ("text", st.sampled_from([None, "Está aquí", "hola"])),
        ("tokens", st.sampled_from([None, ["a", "b"], []])),
        ("prediction", _labels),
        ("target", _labels),
        ("segment", st.sampled_from([None, {"region": "eu"}, {"region": 2**63}, {"x": 1}])),
    ]:
        value = draw(strategy)
        if value is not None or draw(st.booleans()):
            event[key] = value
    if nested:
        event = {"payload": {"vector": event.pop("embedding", None)}, "meta": event, **event}
        event["payload"]["b64"] = event.pop("embedding_b64", None)
    return orjson.dumps(event)


def _polls(nested: bool) -> st.SearchStrategy[list[RawRecord]]:
    good = st.lists(_good(nested), min_size=1, max_size=6)
    mixed = st.lists(st.one_of(_good(nested), _events(), st.none()), max_size=6)
    stamp = st.one_of(st.integers(-5, 2 * T0 * 1000), st.sampled_from([T0 * 1000, -1]))
    return st.tuples(good | mixed, st.lists(stamp, min_size=6, max_size=6)).map(
        lambda pair: [
            RawRecord(value, pair[1][i], i % 2, 10 + i, "t") for i, value in enumerate(pair[0])
        ]
    )


def _one_by_one(decoder: Decoder, records: list[RawRecord]) -> DecodedBatch:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decoder._reader, "read_columns", lambda raws: ([], []))
        return decoder.decode(records)


def _fields(reject: Reject) -> tuple[object, ...]:
    return astuple(reject)  # with the value, which == leaves out


def _assert_same(got: DecodedBatch, want: DecodedBatch) -> None:
    assert list(map(_fields, got.rejects)) == list(map(_fields, want.rejects))
    assert len(got.groups) == len(want.groups)
    for g, w in zip(got.groups, want.groups, strict=True):
        assert (g.model, g.segment) == (w.model, w.segment)
        np.testing.assert_array_equal(g.batch.embeddings, w.batch.embeddings)
        assert g.batch.embeddings.dtype == w.batch.embeddings.dtype
        for name in ("timestamps", "partitions", "offsets"):
            got_column = getattr(g.batch, name, None)
            got_column = getattr(g, name) if got_column is None else got_column
            want_column = getattr(w.batch, name, None)
            want_column = getattr(w, name) if want_column is None else want_column
            assert got_column.dtype == want_column.dtype
            assert got_column.tolist() == want_column.tolist()
        for name in ("tokens", "predictions", "targets"):
            assert getattr(g.batch, name) == getattr(w.batch, name), name


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_poll_at_once_decodes_as_record_by_record(nested: bool, data: st.DataObject) -> None:
    records = data.draw(_polls(nested))
    segment_keys = data.draw(st.sampled_from([(), tuple(KEPT)]))
    decoder = Decoder(
        DIM, NESTED if nested else FieldMap(), segment_keys=segment_keys, clock=lambda: _CLOCK
    )
    _assert_same(decoder.decode(records), _one_by_one(decoder, records))


def test_good_records_take_the_poll_wide_path_and_only_bad_ones_go_one_by_one() -> None:
    vector = np.arange(DIM, dtype="<f4")
    b64 = base64.b64encode(vector.tobytes()).decode()
    events = [
        {"event_id": "a", "timestamp": T0, "embedding_b64": b64},
        {"event_id": 7, "timestamp": T0 + 0.5, "embedding_b64": b64, "model": "m", "text": "hi"},
        {"event_id": "short", "timestamp": T0, "embedding_b64": base64.b64encode(b"1234").decode()},
        {"event_id": "b", "embedding": [1, 2, 3, 4]},
    ]
    records = [RawRecord(orjson.dumps(e), T0 * 1000, 0, i) for i, e in enumerate(events)]
    records.insert(2, RawRecord(None, 0, 0, 9))
    decoder = Decoder(DIM, max_future_s=None)
    assert decoder._at_once(records, np.inf)[0].positions == [0, 1, 4]
    out = decoder.decode(records)
    assert [(g.model, g.offsets.tolist(), g.batch.tokens) for g in out.groups] == [
        ("default", [0, 3], None),
        ("m", [1], [["hi"]]),
    ]
    assert [(r.reason, r.offset, r.event_id) for r in out.rejects] == [
        ("invalid_json", 9, None),
        ("wrong_dimension", 2, "short"),
    ]
    _assert_same(out, _one_by_one(decoder, records))
