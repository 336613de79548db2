"""Event decoding: every reject reason leaves its neighbours intact; encodings agree."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from agent.decode import REJECT_REASONS, DecodedBatch, Decoder, tokenize
from agent.fields import FieldMap
from agent.source import RawRecord

DIM = 4
T0 = 1_790_000_000.0  # 2026-09-21, epoch seconds
YEAR_3000 = 32_503_680_000.0  # 3000-01-01T00:00:00Z: ahead of any clock these tests meet


def _good(i: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "timestamp": T0 + i, "embedding": [float(i), 1.0, 2.0, 3.0]}


def _b64(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


def _records(values: list[bytes | dict[str, Any] | None], record_ms: int = 0) -> list[RawRecord]:
    raw = [v if v is None or isinstance(v, bytes) else orjson.dumps(v) for v in values]
    return [RawRecord(v, record_ms, partition=3, offset=100 + i) for i, v in enumerate(raw)]


def _only_group(out: DecodedBatch) -> Any:
    assert len(out.groups) == 1, out.groups
    return out.groups[0]


BAD: list[tuple[str, bytes | dict[str, Any] | None]] = [
    ("invalid_json", b'{"embedding": [1, 2,'),
    ("invalid_json", b"\xff\xfe not utf-8"),
    ("invalid_json", None),
    ("not_object", b"[1, 2, 3, 4]"),
    ("not_object", b'"a string"'),
    ("missing_embedding", {"text": "no vector here"}),
    ("missing_embedding", {"embedding": None}),
    ("wrong_dimension", {"embedding": [1.0, 2.0]}),
    ("wrong_dimension", {"embedding_b64": _b64([1.0, 2.0, 3.0, 4.0, 5.0])}),
    ("non_finite", {"embedding_b64": _b64([1.0, float("nan"), 0.0, 0.0])}),
    ("non_finite", {"embedding_b64": _b64([float("-inf"), 0.0, 0.0, 0.0])}),
    ("non_finite", {"embedding": [1.0, 2.0, 3e39, 0.0]}),  # overflows float32
    ("non_finite", json.dumps({"embedding": [1.0, float("nan"), 0.0, 0.0]}).encode()),
    ("non_finite", {"embedding": [1.0, None, 0.0, 0.0]}),
    ("wrong_type", {"embedding": "1,2,3,4"}),
    ("wrong_type", {"embedding": [1.0, "2", 3.0, 4.0]}),
    ("wrong_type", {"embedding": [1.0, True, 3.0, 4.0]}),
    ("wrong_type", {"embedding": [[1.0], [2.0], [3.0], [4.0]]}),
    ("wrong_type", {"embedding_b64": "not base64!"}),
    ("wrong_type", {"embedding_b64": [1, 2, 3, 4]}),
    ("wrong_type", {"embedding_b64": base64.b64encode(b"12345").decode()}),
    ("wrong_type", {"embedding": [0, 0, 0, 0], "text": 42}),
    ("wrong_type", {"embedding": [0, 0, 0, 0], "tokens": ["a", 1]}),
    ("wrong_type", {"embedding": [0, 0, 0, 0], "tokens": "a b"}),
    ("wrong_type", {"embedding": [0, 0, 0, 0], "prediction": 0.9}),
    ("wrong_type", {"embedding": [0, 0, 0, 0], "target": {"class": "a"}}),
    ("wrong_type", {"embedding": [0, 0, 0, 0], "model": 7}),
    ("wrong_type", {"embedding": [0, 0, 0, 0], "segment": ["eu"]}),
    ("wrong_type", {"embedding": [0, 0, 0, 0], "segment": {"region": ["eu"]}}),
    ("wrong_type", {"embedding": [0, 0, 0, 0], "event_id": [1]}),
    ("oversized", {"embedding": [0, 0, 0, 0], "text": "x" * 600}),
    ("bad_timestamp", {"embedding": [0, 0, 0, 0], "timestamp": "yesterday"}),
    ("bad_timestamp", {"embedding": [0, 0, 0, 0], "timestamp": 1_790_000_000_000}),
    ("bad_timestamp", {"embedding": [0, 0, 0, 0], "timestamp": -5}),
    ("bad_timestamp", {"embedding": [0, 0, 0, 0], "timestamp": [2026]}),
    ("bad_timestamp", {"embedding": [0, 0, 0, 0], "timestamp": True}),
    ("bad_timestamp", json.dumps({"embedding": [0, 0, 0, 0], "timestamp": float("inf")}).encode()),
    ("future_timestamp", {"embedding": [0, 0, 0, 0], "timestamp": YEAR_3000}),
    ("future_timestamp", {"embedding": [0, 0, 0, 0], "timestamp": "3000-01-01T00:00:00Z"}),
    # Poison pills: each once crashed the agent, or wrote a name no output could hold.
    ("bad_name", {"embedding": [0, 0, 0, 0], "model": "m" * 300}),
    ("bad_name", {"embedding": [0, 0, 0, 0], "segment": {"region": "r" * 129}}),
    ("bad_name", {"embedding": [0, 0, 0, 0], "model": "two\nlines"}),
    ("bad_name", {"embedding": [0, 0, 0, 0], "prediction": "p" * 129}),
    ("invalid_json", b'{"embedding": [0, 0, 0, 0], "model": "\\ud800"}'),  # half a character
    ("invalid_json", b'{"embedding": [0, 0, 0, 0], "prediction": "\xed\xa0\x80"}'),
    ("invalid_json", b'{"embedding": [NaN, 0, 0, 0], "target": "\\udfff"}'),
    ("non_finite", b'{"embedding": [' + b"1" * 400 + b", 0, 0, 0]}"),
    ("bad_timestamp", b'{"embedding": [0, 0, 0, 0], "timestamp": ' + b"9" * 400 + b"}"),
]


@pytest.mark.parametrize(("reason", "bad"), BAD, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD)])
def test_bad_record_is_rejected_and_neighbours_survive_in_order(
    reason: str, bad: bytes | dict[str, Any] | None
) -> None:
    records = _records([_good(0), _good(1), bad, _good(2), _good(3)])
    out = Decoder(DIM, segment_keys=["region"], max_event_bytes=512).decode(records)

    assert [(r.reason, r.partition, r.offset) for r in out.rejects] == [(reason, 3, 102)]
    reject = out.rejects[0]
    assert reject.detail and len(reject.detail) <= 80
    assert reject.value == records[2].value  # kept for a dead-letter topic
    assert out.reject_counts == {reason: 1}
    group = _only_group(out)
    assert group.offsets.tolist() == [100, 101, 103, 104]
    assert group.partitions.tolist() == [3, 3, 3, 3]
    assert group.batch.embeddings[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert group.batch.timestamps.tolist() == [T0, T0 + 1, T0 + 2, T0 + 3]


def test_every_reason_is_covered_and_many_bad_records_interleave() -> None:
    assert {r for r, _ in BAD} == set(REJECT_REASONS)
    values: list[bytes | dict[str, Any] | None] = []
    for i, (_, bad) in enumerate(BAD):
        values += [_good(i), bad]
    out = Decoder(DIM, segment_keys=["region"], max_event_bytes=512).decode(_records(values))
    assert [r.reason for r in out.rejects] == [r for r, _ in BAD]
    assert [r.offset for r in out.rejects] == [101 + 2 * i for i in range(len(BAD))]
    group = _only_group(out)
    assert group.batch.embeddings[:, 0].tolist() == [float(i) for i in range(len(BAD))]
    assert out.events == len(BAD)


def test_reject_keeps_event_id_when_the_event_parsed() -> None:
    out = Decoder(DIM).decode(_records([{"event_id": "abc", "embedding": [1, 2]}, b"{"]))
    assert [(r.event_id, r.reason) for r in out.rejects] == [
        ("abc", "wrong_dimension"),
        (None, "invalid_json"),
    ]


def test_bad_timestamp_detail_hints_at_milliseconds() -> None:
    event = {"embedding": [0, 0, 0, 0], "timestamp": 1_790_000_000_000}
    (reject,) = Decoder(DIM).decode(_records([event])).rejects
    assert "milliseconds" in reject.detail


def test_b64_and_list_encodings_give_identical_matrices() -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(50, DIM)).astype(np.float32)
    as_list = [{"embedding": row.tolist(), "timestamp": T0} for row in matrix]
    as_b64 = [{"embedding_b64": _b64(row.tolist()), "timestamp": T0} for row in matrix]
    mixed = [a if i % 2 else b for i, (a, b) in enumerate(zip(as_list, as_b64, strict=True))]
    decoder = Decoder(DIM)
    for events in (as_list, as_b64, mixed):
        got = _only_group(decoder.decode(_records(list(events)))).batch.embeddings
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, matrix)


def test_nested_field_mapping() -> None:
    fields = FieldMap.from_mapping(
        {
            "embedding": "payload.vector",
            "timestamp": "meta.ts",
            "model": "meta.model",
            "text": "payload.doc",
            "prediction": "out.label",
            "segment": "ctx.seg",
        }
    )
    event = {
        "payload": {"vector": [1, 2, 3, 4], "doc": "Hola Mundo"},
        "meta": {"ts": T0, "model": "news"},
        "out": {"label": 3},
        "ctx": {"seg": {"region": "eu"}},
    }
    misplaced = {"payload": 5, "meta": {"ts": T0}}  # a step into a non-object: missing
    out = Decoder(DIM, fields, segment_keys=["region"]).decode(_records([event, misplaced]))
    group = _only_group(out)
    assert (group.model, group.segment.label) == ("news", "region=eu")
    assert group.batch.embeddings.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert group.batch.tokens == [["hola", "mundo"]]
    assert group.batch.predictions == ["3"]
    assert [r.reason for r in out.rejects] == ["missing_embedding"]
    assert "payload.vector" in out.rejects[0].detail


def test_field_map_refuses_unknown_names_and_empty_path_steps() -> None:
    with pytest.raises(ValueError, match="embeding"):
        FieldMap.from_mapping({"embeding": "vec"})
    with pytest.raises(ValueError, match=r"payload\.\.vector"):
        FieldMap(embedding="payload..vector")


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (T0, T0),
        (int(T0), T0),
        (T0 + 0.25, T0 + 0.25),
        ("2026-11-20T00:00:00Z", 1_795_132_800.0),
        ("2026-11-20T00:00:00+00:00", 1_795_132_800.0),
        ("2026-11-20T02:00:00.5+02:00", 1_795_132_800.5),
        ("2026-11-20T00:00:00", 1_795_132_800.0),  # naive: UTC
        ("2026-11-20", 1_795_132_800.0),
        (None, 1_795_132_800.123),  # absent: the record's own timestamp
    ],
)
def test_timestamps(timestamp: float | str | None, expected: float) -> None:
    event: dict[str, Any] = {"embedding": [0, 0, 0, 0]}
    if timestamp is not None:
        event["timestamp"] = timestamp
    out = Decoder(DIM).decode(_records([event], record_ms=1_795_132_800_123))
    assert _only_group(out).batch.timestamps.tolist() == [pytest.approx(expected, abs=1e-6)]


def test_absent_timestamp_without_record_timestamp_is_rejected() -> None:
    out = Decoder(DIM).decode(_records([{"embedding": [0, 0, 0, 0]}], record_ms=-1))
    assert [r.reason for r in out.rejects] == ["bad_timestamp"]


def test_segment_keys_are_filtered_and_split_groups() -> None:
    base = {"embedding": [0, 0, 0, 0], "timestamp": T0}
    events = [
        {**base, "segment": {"region": "eu", "user": "u1", "tier": 1}},
        {**base, "segment": {"tier": 1, "region": "eu", "user": "u2"}},
        {**base, "segment": {"region": "us"}},
        base,
        {**base, "segment": {"user": "u3", "device": {"nested": "ignored: key not kept"}}},
    ]
    out = Decoder(DIM, segment_keys=["region", "tier"]).decode(_records(list(events)))
    assert [(g.segment.pairs, g.offsets.tolist()) for g in out.groups] == [
        ((("region", "eu"), ("tier", "1")), [100, 101]),
        ((("region", "us"),), [102]),
        ((), [103, 104]),
    ]
    assert not out.rejects
    ignored = Decoder(DIM).decode(_records(list(events)))
    assert [(g.segment.pairs, len(g.batch)) for g in ignored.groups] == [((), 5)]


def test_groups_by_model_in_first_appearance_order_with_optional_columns() -> None:
    events = [
        {"model": "b", "embedding": [1, 0, 0, 0], "timestamp": T0, "prediction": "x"},
        {"embedding": [2, 0, 0, 0], "timestamp": T0, "tokens": ["Ya", "está"]},
        {"model": "b", "embedding": [3, 0, 0, 0], "timestamp": T0, "target": 1},
        {"embedding": [4, 0, 0, 0], "timestamp": T0, "text": "Él está aquí"},
    ]
    out = Decoder(DIM, default_model="fallback").decode(_records(list(events)))
    b, fallback = out.groups
    assert (b.model, fallback.model) == ("b", "fallback")
    assert b.batch.embeddings[:, 0].tolist() == [1.0, 3.0]
    assert (b.batch.tokens, b.batch.predictions, b.batch.targets) == (
        None,
        ["x", None],
        [None, "1"],
    )
    assert fallback.batch.tokens == [["Ya", "está"], ["él", "está", "aquí"]]
    assert (fallback.batch.predictions, fallback.batch.targets) == (None, None)


def test_tokenize_keeps_accented_words_whole_in_any_normal_form() -> None:
    decomposed = "Esta\u0301 aqui\u0301"  # "Está aquí" with combining accents
    assert tokenize(decomposed) == ["está", "aquí"]
    assert tokenize("¡Qué año! l'été, naïve_test") == ["qué", "año", "l", "été", "naïve", "test"]


def test_kafka_consumer_records_decode_as_they_are() -> None:
    record = ConsumerRecord(
        topic="t", partition=2, leader_epoch=0, offset=41, timestamp=1_795_132_800_000,
        timestamp_type=0, key=None, value=b'{"embedding": [1, 2, 3, 4]}', headers=[],
        checksum=None, serialized_key_size=0, serialized_value_size=27, serialized_header_size=0,
    )  # fmt: skip
    group = _only_group(Decoder(DIM).decode([record]))
    assert (group.partitions.tolist(), group.offsets.tolist()) == ([2], [41])
    assert group.batch.timestamps.tolist() == [1_795_132_800.0]


def test_empty_batch_and_constructor_checks() -> None:
    out = Decoder(DIM).decode([])
    assert (out.groups, out.rejects, out.events) == ((), (), 0)
    with pytest.raises(ValueError, match="dim"):
        Decoder(0)
    with pytest.raises(ValueError, match="distinct"):
        Decoder(DIM, segment_keys=["a", "a"])


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
_scalar = st.none() | st.booleans() | st.integers() | st.floats(width=32) | st.text(max_size=2)
_event = st.fixed_dictionaries(
    {},
    optional={
        "embedding": st.lists(st.floats(width=32), min_size=4, max_size=4)
        | st.lists(_scalar, min_size=4, max_size=4)
        | _json,
        "embedding_b64": st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
        "timestamp": st.floats() | st.integers() | st.text(max_size=12),
        "model": _json,
        "text": _json,
        "tokens": _json,
        "prediction": _scalar,
        "target": _scalar,
        "segment": st.dictionaries(st.sampled_from(["region", "x"]), _json, max_size=2) | _json,
        "event_id": _scalar,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64) | st.none(), max_size=20), st.integers(-(2**63), 2**63))
def test_arbitrary_bytes_never_raise(values: list[bytes | None], record_ms: int) -> None:
    records = [RawRecord(v, record_ms, 0, i) for i, v in enumerate(values)]
    out = Decoder(DIM, segment_keys=["region"], max_event_bytes=48).decode(records)
    assert out.events + len(out.rejects) == len(values)
    assert set(out.reject_counts) <= set(REJECT_REASONS)


@settings(max_examples=200, deadline=None)
@given(st.lists(_event, max_size=8))
def test_arbitrary_events_never_raise_and_every_record_is_accounted(
    events: list[dict[str, Any]],
) -> None:
    good = _good(0)
    values: list[bytes | dict[str, Any] | None] = [json.dumps(e).encode() for e in events]
    out = Decoder(DIM, segment_keys=["region"]).decode(_records([good, *values, good]))
    assert out.events + len(out.rejects) == len(events) + 2
    offsets = sorted(o for g in out.groups for o in g.offsets.tolist())
    assert offsets[0] == 100 and offsets[-1] == 101 + len(events)
    assert all(np.isfinite(g.batch.embeddings).all() for g in out.groups)


# --- far-future timestamps ----------------------------------------------------------------


def _clock(now: float) -> Any:
    return lambda: now


def test_event_further_ahead_than_max_future_is_rejected_by_the_injected_clock() -> None:
    now = T0 + 100.0
    ahead = [T0, now + 3600.0, now + 3600.5, "2026-09-21T15:15:01Z"]  # the last: now + 3601
    events = [{"embedding": [0, 0, 0, 0], "timestamp": t} for t in ahead]
    out = Decoder(DIM, clock=_clock(now)).decode(_records(list(events)))
    assert _only_group(out).offsets.tolist() == [100, 101]  # at the limit is not beyond it
    assert [(r.reason, r.offset) for r in out.rejects] == [
        ("future_timestamp", 102),
        ("future_timestamp", 103),
    ]
    assert out.rejects[0].detail == (
        "timestamp is more than 3600 s ahead of the clock (max_future)"
    )
    tight = Decoder(DIM, clock=_clock(now), max_future_s=60).decode(_records(list(events)))
    assert _only_group(tight).offsets.tolist() == [100]


def test_record_timestamp_is_checked_against_max_future_too() -> None:
    now = T0
    event = {"embedding": [0, 0, 0, 0]}
    out = Decoder(DIM, clock=_clock(now)).decode(
        _records([event], record_ms=int(now + 7200) * 1000)
    )
    assert [r.reason for r in out.rejects] == ["future_timestamp"]
    assert "record's timestamp" in out.rejects[0].detail


@pytest.mark.parametrize("off", [None, 0, 0.0])
def test_max_future_off_accepts_the_far_future(off: float | None) -> None:
    out = Decoder(DIM, clock=_clock(T0), max_future_s=off).decode(
        _records([{"embedding": [0, 0, 0, 0], "timestamp": YEAR_3000}])
    )
    assert _only_group(out).batch.timestamps.tolist() == [YEAR_3000]


def test_clock_is_read_once_per_decode() -> None:
    calls: list[float] = []

    def clock() -> float:
        calls.append(T0)
        return T0

    Decoder(DIM, clock=clock).decode(_records([_good(i) for i in range(5)]))
    assert len(calls) == 1
    Decoder(DIM, clock=clock, max_future_s=None).decode(_records([_good(0)]))
    assert len(calls) == 1  # off: the clock is not read at all


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_max_future_must_be_a_non_negative_finite_number(bad: float) -> None:
    with pytest.raises(ValueError, match="max_future_s"):
        Decoder(DIM, max_future_s=bad)


def test_record_timestamp_past_year_5138_is_rejected_even_with_max_future_off() -> None:
    """Regression (found by tests/test_fuzz.py): with no ``timestamp`` field, a record stamped
    2**63 - 1 ms became an event at 9.2e15 s, accepted; closing its window then raised
    OverflowError in ``format_time``, and the agent crash-looped on the record."""
    event = {"embedding": [0, 0, 0, 0]}
    for record_ms in (2**63 - 1, 100_000_000_000_000):
        out = Decoder(DIM, max_future_s=None).decode(_records([event], record_ms=record_ms))
        assert [(r.reason, r.detail) for r in out.rejects] == [
            ("bad_timestamp", "the record's timestamp is past year 5138")
        ]
    last = Decoder(DIM, max_future_s=None).decode(_records([event], record_ms=99_999_999_999_999))
    assert len(_only_group(last).batch) == 1


# --- reject details never echo content ----------------------------------------------------

SECRETS = [
    "patient ssn-123-45-6789",
    "Bearer sk_live_4eC39HqLyjWDarj",
    "hunter2hunter2",
    "\u00e9\u00e8secr\u00eat",
    "987654321987",  # digits: also written as numbers (timestamps, embedding values)
]


def _windows(secret: str, width: int = 6) -> set[str]:
    """Every ``width``-character piece of ``secret``: a detail must not hold even part of it."""
    return {secret[i : i + width] for i in range(len(secret) - width + 1)}


def _hostile(secret: str) -> list[bytes]:
    """Records that put ``secret`` into every field, in every shape a reject can be about."""
    ok: dict[str, Any] = {"embedding": [0, 0, 0, 0], "timestamp": T0}
    long = secret * (1 + 200 // len(secret))
    events: list[dict[str, Any]] = [
        {"embedding": secret},
        {"embedding": [secret, 0, 0, 0]},
        {"embedding": [0, 0, 0, {secret: secret}]},
        {"embedding": [secret] * 7},
        {"embedding_b64": secret},
        {"embedding_b64": base64.b64encode(secret.encode()).decode()},
        {**ok, "timestamp": secret},
        {**ok, "timestamp": [secret]},
        {**ok, "timestamp": {"t": secret}},
        {**ok, "model": long},
        {**ok, "model": secret + "\n"},
        {**ok, "model": [secret]},
        {**ok, "text": {"secret": secret}},
        {**ok, "tokens": secret},
        {**ok, "tokens": [secret, 7]},
        {**ok, "prediction": long},
        {**ok, "prediction": "\t" + secret},
        {**ok, "prediction": {"p": secret}},
        {**ok, "target": long},
        {**ok, "target": [secret]},
        {**ok, "segment": secret},
        {**ok, "segment": {"region": long}},
        {**ok, "segment": {"region": secret + "\x00"}},
        {**ok, "segment": {"region": [secret]}},
        {**ok, "event_id": [secret]},
        {**ok, "event_id": {"id": secret}},
        {**ok, "oversize": long * 10},
    ]
    if secret.isdigit():
        number = int(secret)
        events += [
            {**ok, "timestamp": -number},
            {**ok, "timestamp": number * 1000},
            {**ok, "timestamp": float(f"{secret}e9")},
            {**ok, "timestamp": f"{secret}"},
            {"embedding": [number, 0, 0, 0], "timestamp": -number},
            {"embedding": [float(f"{secret}e30"), 0, 0, 0]},  # float32 overflow
            {"embedding": [number] * 3},
            {**ok, "event_id": number, "model": 0},
        ]
    encoded = [json.dumps(e).encode() for e in events]
    text = json.dumps(secret)[1:-1]
    broken = [
        f'{{"model": "{text}", oops}}',
        f'{{"{text}": 1,',
        f'{{"text": "{text}\\q"}}',
        f'{{"text": "{text}\x01"}}',
        f'{{"text": "{text}\\ud800"}}',
        f"{text}",
        f'["{text}"]',
        f'"{text}"',
        f'{{"embedding": [{text}]}}',
        f'{{"embedding": [0, 0, 0, 0], "timestamp": {text}}}',
    ]
    raw = [b.encode() for b in broken]
    raw += [secret.encode() + b"\xff", b'{"text": "' + secret.encode("utf-16-le") + b'"}']
    raw.append(b"[" * 2000 + json.dumps(secret).encode() + b"]" * 2000)
    return encoded + raw


@pytest.mark.parametrize("secret", SECRETS)
def test_reject_details_never_echo_field_values(secret: str) -> None:
    records = _records(list(_hostile(secret)))
    fields = FieldMap(model="meta.model")  # a configured path is named, a value never
    decoder = Decoder(DIM, segment_keys=["region"], max_event_bytes=1024)
    for dec in (decoder, Decoder(DIM, fields, segment_keys=["region"], max_event_bytes=1024)):
        out = dec.decode(records)
        assert out.events <= 4  # ones whose hostile field this decoder does not read
        assert len(out.rejects) + out.events == len(records)
        for reject in out.rejects:
            leaked = [w for w in _windows(secret) if w in reject.detail]
            assert not leaked, (reject.reason, reject.detail)
            assert len(reject.detail) <= 80
