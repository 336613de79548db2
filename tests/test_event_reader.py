"""The compiled event reader gives exactly what the exact path gives, or nothing.

``agent.event_reader.EventReader`` may pass any record on to the exact path (orjson and the
field map's paths, in ``agent.decode``), but whatever fields it returns must be the ones that
path reads: the decoder checks them with the same code either way, so every reject reason and
every accepted value stays as it was. The records here are built to sit on the edges: numbers
orjson reads as floats, base64 binascii's strict mode refuses, text that is not UTF-8,
surrogates, nested arrays, duplicate keys, and random byte edits of all of these.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.decode import Decoder
from agent.event_reader import EventFields, EventReader
from agent.fields import FieldMap
from agent.source import RawRecord
from agent.values import Bad

DIM = 4
KEPT = ["region"]
NESTED = FieldMap.from_mapping(
    {"embedding": "payload.vector", "embedding_b64": "payload.b64", "model": "meta.model"}
)

_edge_ints = st.sampled_from(
    [0, -1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30]
)
_numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    _edge_ints,
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=-4e38, max_value=4e38),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    _numbers,
    st.text(max_size=6),
    st.sampled_from(["\ud800", "a\udc00b", "é", "\x00", "2026-09-21T10:00:00+02:00"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
_b64_text = st.one_of(
    st.binary(min_size=0, max_size=20).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="AB+/=\n -_x", max_size=12),
)
_vectors = st.one_of(
    st.lists(_numbers, min_size=DIM, max_size=DIM),
    st.lists(st.one_of(_numbers, _scalars), min_size=0, max_size=DIM + 1),
    st.lists(st.lists(_numbers, max_size=2), max_size=DIM),
)


@st.composite
def _events(draw: st.DrawFn) -> bytes:
    event: dict[str, Any] = {}
    for key, strategy in [
        ("event_id", _scalars),
        ("timestamp", _scalars),
        ("model", _scalars),
        ("embedding", _vectors | _values),
        ("embedding_b64", _b64_text | _values),
        ("text", _scalars),
        ("tokens", st.lists(_scalars, max_size=3) | _values),
        ("prediction", _scalars),
        ("target", _scalars),
        ("segment", st.dictionaries(st.sampled_from(["region", "x"]), _values) | _values),
        ("other", _values),
    ]:
        if draw(st.booleans()):
            event[key] = draw(strategy)
    if draw(st.booleans()):  # the nested field map's paths
        event = {"payload": {"vector": event.pop("embedding", None)}, "meta": event, **event}
    raw = json.dumps(event, allow_nan=True).encode("utf-8", "surrogatepass")
    edit = draw(st.sampled_from(["none", "none", "byte", "cut", "duplicate"]))
    if edit == "byte" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
    elif edit == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif edit == "duplicate" and raw.startswith(b"{") and len(raw) > 2:
        raw = b'{"embedding": [1, 2, 3, 4], ' + raw[1:]
    return raw


def _exact(decoder: Decoder, raw: bytes) -> EventFields | None:
    try:
        return decoder._read_exactly(raw)
    except Bad:
        return None


def _same(fast: EventFields, exact: EventFields) -> None:
    for name in EventFields._fields:
        got, want = getattr(fast, name), getattr(exact, name)
        if name == "embedding" and isinstance(got, np.ndarray):
            assert isinstance(want, list)
            assert all(type(x) in (int, float) for x in want)
            with np.errstate(over="ignore"):  # past float32's range both become inf
                expected = np.array(want, dtype=np.float32)
                np.testing.assert_array_equal(got.astype(np.float32), expected)
        elif name == "segment" and isinstance(got, dict):
            assert isinstance(want, dict)  # of a segment the decoder reads the kept keys only
            assert [(type(got.get(k)), got.get(k)) for k in KEPT] == [
                (type(want.get(k)), want.get(k)) for k in KEPT
            ]
        elif name == "embedding_b64" and isinstance(got, bytes):
            assert isinstance(want, str)
            assert got == base64.b64decode(want, validate=True)
        else:
            assert type(got) is type(want) and got == want, (name, got, want)


@pytest.mark.parametrize("fields", [FieldMap(), NESTED], ids=["flat", "nested"])
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_events())
@example(raw=b'{"embedding": [[1, 2], [3, 4]]}')
@example(raw=b'{"embedding": [1, 2, 3, 1e999]}')
@example(raw=b'{"event_id": 18446744073709551616, "embedding": [1, 2, 3, 4]}')
@example(raw=b'{"timestamp": ' + b"1" * 400 + b', "embedding": [1, 2, 3, 4]}')
@example(raw=b'{"other": "\xed\xa0\x80", "embedding": [1, 2, 3, 4]}')
@example(raw=b'{"embedding_b64": "AAAAAAAAAAAAAAAAAAAAAA=====", "model": "m"}')
@example(raw=b'{"embedding": [1, 2, 3, 4], "embedding": [1, 2, true, 4]}')
def test_compiled_fields_are_the_exact_paths_fields(fields: FieldMap, raw: bytes) -> None:
    decoder = Decoder(dim=DIM, fields=fields, segment_keys=KEPT)
    fast = EventReader(fields, KEPT).read(raw)
    exact = _exact(decoder, raw)
    if fast is not None:
        assert exact is not None, raw
        _same(fast, exact)


def test_good_events_take_the_compiled_path() -> None:
    """The fast path is the common one: every shape of good event the agent is fed."""
    reader = EventReader(NESTED, ["region"])
    vector = [0.5, -1.0, 3, 2e-3]
    b64 = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    events = [
        {"payload": {"vector": vector}, "meta": {"model": "m"}, "timestamp": 1.7e9, "text": "hi"},
        {"payload": {"b64": b64}, "segment": {"region": "eu", "other": [1]}, "tokens": ["a"]},
        {"payload": {"b64": b64}, "event_id": 12, "prediction": True, "target": "cat"},
        {"payload": {"vector": vector}, "timestamp": "2026-09-21T10:00:00Z", "extra": {"é": 1}},
    ]
    for event in events:
        fields = reader.read(orjson.dumps(event))
        assert fields is not None, event
        assert fields.embedding is not None or fields.embedding_b64 == base64.b64decode(b64)


def test_overlapping_paths_always_take_the_exact_path() -> None:
    fields = FieldMap.from_mapping({"embedding": "payload", "model": "payload.model"})
    assert EventReader(fields).read(b'{"payload": [1, 2, 3, 4]}') is None
    out = Decoder(dim=DIM, fields=fields).decode([RawRecord(b'{"payload": [1, 2, 3, 4]}', 0)])
    assert out.events == 1 and not out.rejects
