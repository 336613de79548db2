"""Fuzzing decode and window updates with hostile records (issue #10).

Hypothesis builds hostile records of every kind (malformed JSON, deep nesting, huge strings
and arrays, wrong types, NaN/±Inf/subnormals, zero vectors, invalid UTF-8, far past and future
timestamps, hostile names) and runs them through ``Decoder.decode``, a ``WindowStore`` of real
``sketches`` profiles and ``close_all``; ``tests/fuzz_decode_atheris.py`` holds the invariants
(:func:`check`) and is also run here as a coverage-guided atheris fuzzer for a bounded time.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.checkpoint import Checkpoint
from agent.decode import REJECT_REASONS, Decoder
from agent.fields import FieldMap
from agent.source import RawRecord
from agent.window_caps import Caps
from agent.windows import AddResult, WindowKey, WindowStore
from exporters.profile_sink import ProfileSink
from exporters.records import SegmentKey
from sketches.batch import EventBatch
from tests.fuzz_decode_atheris import (
    CAPS,
    DIM,
    FIELD_MAPS,
    NOW,
    RECORD_MS,
    SEGMENT_KEYS,
    WINDOWS,
    Rows,
    Setup,
    Tally,
    Tracked,
    check,
    parse_input,
    real_profile,
    seeds,
    tracked_ids,
)

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "fuzz_decode_atheris.py"
YEAR_3000 = 32_503_680_000.0
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- hostile values ---------------------------------------------------------------------

SPECIAL_FLOATS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    0.0,
    -0.0,
    5e-324,  # smallest double subnormal
    2.2250738585072014e-308,
    1.401298464324817e-45,  # smallest float32 subnormal
    1.1754942e-38,
    3.4028234663852886e38,  # largest float32
    3.5e38,  # overflows float32
    1.8446744073709552e19,  # its square overflows float32
    1e300,
    -1.7976931348623157e308,
]
numbers = (
    st.sampled_from(SPECIAL_FLOATS)
    | st.floats()
    | st.floats(width=32)
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
)
HOSTILE_NAMES = [
    "",
    " ",
    "..",
    "../../etc/passwd",
    "a/b",
    "C:\\con",
    "a=b,c=d",
    "eu,tier=gold",
    "\u202egnp.exe",
    "zero\u200bwidth",
    "\ufeffbom",
    "tab\there",
    "nul\x00",
    "line\nbreak",
    "\x7f",
    "\u2028",
    "m" * 128,
    "m" * 129,
    "\U0001f600" * 40,
    "e\u0301" * 64,
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    "'; DROP TABLE windows; --",
    "%s%n%x",
    "NaN",
    "null",
    "0",
]
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
huge_strings = st.integers(0, 300_000).map(lambda n: "x" * n)
string_names = (
    st.sampled_from(HOSTILE_NAMES)
    | st.text(max_size=40)
    | st.text(st.characters(categories=("Cc", "Cf", "Co", "Zl", "Zp", "Zs", "Mn")), max_size=20)
)
names = string_names | huge_strings | json_values
offsets = st.timedeltas(
    min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
)
iso_times = st.builds(
    lambda moment, sep, date_only: (
        moment.date().isoformat() if date_only else moment.isoformat(sep)
    ),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.none() | st.builds(timezone, offsets),
    ),
    st.sampled_from(["T", " "]),
    st.booleans(),
)
timestamps = (
    st.sampled_from(
        [NOW, NOW + 3600, NOW + 3600.001, NOW - 1e9, 0, -1, 1e11 - 1, 1e11, NOW * 1000, YEAR_3000]
    )
    | st.floats(min_value=NOW - 1e6, max_value=NOW + 1e4)
    | numbers
    | iso_times
    | st.text(max_size=40)
    | json_values
)


def _f32(values: list[float]) -> str:
    with np.errstate(over="ignore"):  # a double past float32 becomes inf: wanted here
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


vectors = (
    st.lists(st.floats(width=32), min_size=DIM, max_size=DIM)
    | st.lists(numbers, min_size=DIM, max_size=DIM)
    | st.sampled_from([[0] * DIM, [0.0] * DIM, [-0.0] * DIM, [5e-324] * DIM])
    | st.lists(numbers | st.none() | st.booleans() | st.text(max_size=3), max_size=2 * DIM)
    | st.integers(0, 50_000).map(lambda n: [0.5] * n)  # huge arrays
    | json_values
)
blobs = (
    st.lists(st.floats(width=32), min_size=DIM, max_size=DIM).map(_f32)
    | st.lists(st.sampled_from(SPECIAL_FLOATS), min_size=DIM, max_size=DIM).map(_f32)
    | st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode())
    | st.text(max_size=30)
    | json_values
)
token_lists = st.lists(names, max_size=4) | st.lists(st.text(max_size=12), max_size=12) | names
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": names | numbers,
    "timestamp": timestamps,
    "model": names,
    "embedding": vectors,
    "embedding_b64": blobs,
    "text": names | st.text(max_size=60),
    "tokens": token_lists,
    "prediction": names | numbers,
    "target": names | numbers,
    "segment": st.dictionaries(st.sampled_from(["region", "tier", "other"]), names, max_size=3)
    | st.dictionaries(string_names, names, max_size=2)
    | json_values,
}


def _place(event: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Put ``value`` at ``path``; a step that is not an object is overwritten by one."""
    for key in path[:-1]:
        if not isinstance(event.get(key), dict):
            event[key] = {}
        event = event[key]
    event[path[-1]] = value


@st.composite
def hostile_events(draw: st.DrawFn, fields: FieldMap) -> dict[str, Any]:
    """An event whose every field is absent, good, or hostile, at its mapped (nested) path."""
    event: dict[str, Any] = {}
    if draw(st.booleans()):  # half get a good base, so the later checks are reached too
        _place(
            event,
            fields.path("embedding"),
            draw(st.lists(st.floats(-9, 9), min_size=DIM, max_size=DIM)),
        )
        _place(event, fields.path("timestamp"), draw(st.floats(NOW - 5000, NOW + 100)))
    for name, values in FIELD_VALUES.items():
        if draw(st.integers(0, 3)) == 0:
            _place(event, fields.path(name), draw(values))
    for key, value in draw(st.dictionaries(string_names, json_values, max_size=2)).items():
        event.setdefault(key, value)
    return event


INVALID_UTF8 = [
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
    b"\x80",
    b"\x00",
]


@st.composite
def encoded(draw: st.DrawFn, event: dict[str, Any]) -> bytes:
    """``event`` as bytes, by some encoder, then perhaps damaged at the byte level."""
    how = draw(st.sampled_from(["json", "ascii", "orjson"]))
    try:
        if how == "orjson":
            raw = orjson.dumps(event)
        else:
            raw = json.dumps(event, ensure_ascii=how == "ascii").encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, OverflowError, orjson.JSONEncodeError):
        raw = json.dumps(event, default=str).encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none"] * 4 + ["cut", "insert", "flip", "bom", "deep", "raw"]))
    if damage == "cut":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif damage == "insert":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from(INVALID_UTF8)) + raw[at:]
    elif damage == "flip" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif damage == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif damage == "deep":
        depth = draw(st.sampled_from([10, 1000, 1023, 1024, 1025, 5000, 100_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        if draw(st.booleans()):  # the whole event nested
            raw = opener * depth + raw + closer * depth
        else:  # a deep value in a field the decoder reads
            raw = b'{"embedding": ' + opener * depth + b"0" + closer * depth + b"}"
    elif damage == "raw":
        raw = draw(st.binary(max_size=64))
    return raw


@st.composite
def setups(draw: st.DrawFn) -> Setup:
    window = draw(st.sampled_from(WINDOWS))
    near = int(NOW) // window * window
    return Setup(
        window_s=window,
        lateness_s=window * draw(st.integers(0, 2)),
        max_event_bytes=draw(st.sampled_from([1 << 20, 4096, 512])),
        fields=draw(st.sampled_from(FIELD_MAPS)),
        segment_keys=draw(st.sampled_from(SEGMENT_KEYS)),
        max_future_s=draw(st.sampled_from([3600.0, None, 0.0, 60.0])),
        chunk=draw(st.integers(1, 8)),
        checkpoint_through=draw(st.none() | st.integers(-3, 3).map(lambda k: near + k * window)),
        persisted_start=draw(st.none() | st.integers(-3, 1).map(lambda k: near + k * window)),
        caps=draw(st.sampled_from(CAPS)),
        close_limit=draw(st.none() | st.integers(1, 3)),
        revoke_at=draw(st.none() | st.integers(1, 4)),
    )


record_ms = st.sampled_from(RECORD_MS) | st.integers(-(2**63), 2**63 - 1)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Setup, list[RawRecord]]:
    """A setup and up to 12 hostile records over two partitions, in offset order."""
    setup = draw(setups())
    counters = [0, 0]
    records = []
    for _ in range(draw(st.integers(0, 12))):
        partition = draw(st.integers(0, 1))
        value = (
            None
            if draw(st.integers(0, 15)) == 0
            else draw(encoded(draw(hostile_events(setup.fields))))
        )
        records.append(RawRecord(value, draw(record_ms), partition, counters[partition], "events"))
        counters[partition] += 1
    return setup, records


def _assert_accounted(tally: Tally) -> None:
    assert tally.accepted + sum(tally.rejected.values()) == tally.records
    assert set(tally.rejected) <= set(REJECT_REASONS)
    assert tally.added + tally.late + tally.skipped + tally.refused == tally.accepted
    assert tally.in_windows == tally.added


# --- the fuzz tests ----------------------------------------------------------------------


@FUZZ
@given(scenarios())
def test_hostile_events_are_accepted_or_counted_under_a_reason(
    scenario: tuple[Setup, list[RawRecord]],
) -> None:
    setup, records = scenario
    _assert_accounted(check(records, setup))


@FUZZ
@given(
    st.sampled_from(seeds()),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.binary(max_size=8)), max_size=6),
)
def test_damaged_harness_inputs_are_accepted_or_counted(
    seed: bytes, edits: list[tuple[int, bytes]]
) -> None:
    """The atheris harness's own input format, its seeds damaged at random byte positions."""
    data = bytearray(seed)
    for at, chunk in edits:
        at %= len(data) + 1
        data[at : at + len(chunk) // 2] = chunk
    setup, records = parse_input(bytes(data))
    _assert_accounted(check(records, setup))


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_harness_bytes_are_accepted_or_counted(data: bytes) -> None:
    setup, records = parse_input(data)
    _assert_accounted(check(records, setup))


SECRET = st.text("abcdefghjkmnpqrstuvwxyz0123456789", min_size=10, max_size=30).map(
    lambda s: f"ssn{s}"
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    SECRET,
    st.sampled_from(sorted(FIELD_VALUES)),
    st.sampled_from(
        [
            lambda s: s,
            lambda s: [s],
            lambda s: {"k": s},
            lambda s: {"region": s},
            lambda s: s * 10,
            lambda s: s + "\n",
            lambda s: [s, 1, 2, 3],
            lambda s: [1.0, 2.0, 3.0, s],
        ]
    ),
    st.sampled_from(["as_is", "broken", "bad_utf8"]),
)
def test_a_secret_in_any_field_never_reaches_a_reject_detail(
    secret: str, name: str, shape: Callable[[str], Any], damage: str
) -> None:
    event: dict[str, Any] = {"embedding": [0.0] * DIM, "timestamp": NOW}
    event[name] = shape(secret)
    raw = json.dumps(event).encode()
    if damage == "broken":
        raw = raw.replace(secret.encode(), secret.encode() + b'" oops "', 1)
    elif damage == "bad_utf8":
        raw = raw.replace(secret.encode(), secret.encode() + b"\xff", 1)
    decoder = Decoder(DIM, segment_keys=["region"], max_event_bytes=256, clock=lambda: NOW)
    out = decoder.decode([RawRecord(raw, None)])
    for reject in out.rejects:
        assert secret not in reject.detail and secret[3:13] not in reject.detail, reject


# --- deterministic consequences ----------------------------------------------------------


def _event(timestamp: float) -> bytes:
    return json.dumps({"embedding": [1.0, 0.0, 0.0, 0.0], "timestamp": timestamp}).encode()


@pytest.mark.parametrize(("max_future_s", "expected"), [(3600.0, (10, 0)), (None, (1, 10))])
def test_a_far_future_event_is_no_poison_pill(
    max_future_s: float | None, expected: tuple[int, int]
) -> None:
    """One event stamped in year 3000, then ten of now: rejected, it cannot make them late.

    Accepted (the check off), it is added, and advances the watermark past all ten.
    """
    values = [_event(YEAR_3000)] + [_event(NOW - 50 + i) for i in range(10)]
    records = [RawRecord(v, None, 0, i) for i, v in enumerate(values)]
    decoder = Decoder(DIM, clock=lambda: NOW, max_future_s=max_future_s)
    store: WindowStore[Any, EventBatch] = WindowStore(
        window=timedelta(minutes=1), factory=real_profile
    )
    store.assign(("events", 0), None)
    added = late_seen = 0
    for start in range(0, len(records), 3):
        decoded = decoder.decode(records[start : start + 3])
        groups = [(g.model, g.segment, g.batch, g.offsets) for g in decoded.groups]
        for result in store.add_groups(("events", 0), groups):
            added, late_seen = added + result.added, late_seen + result.late
    assert (added, late_seen) == expected


def test_every_seed_of_the_harness_passes() -> None:
    for data in seeds():
        setup, records = parse_input(data)
        _assert_accounted(check(records, setup))


def test_reject_reasons_are_the_documented_ones() -> None:
    """docs/contracts.md lists every reason of ``embmon_events_rejected_total``: the decoder's,
    then the window store's."""
    text = (ROOT / "docs" / "contracts.md").read_text()
    row = next(
        line for line in text.splitlines() if line.startswith("| `embmon_events_rejected_total`")
    )
    documented = re.findall(r"`([a-z_]+)`", row.split("reason", 1)[1])
    assert documented == [*REJECT_REASONS, "late", "too_many_windows"]


def test_distinct_segments_get_distinct_profile_files() -> None:
    """Segment labels were joined unescaped: these two shared a series and a profile file."""
    one = SegmentKey.of({"region": "eu,tier=gold"})
    two = SegmentKey.of({"region": "eu", "tier": "gold"})
    assert WindowKey("m", one, 0) != WindowKey("m", two, 0)
    sink = ProfileSink("/out")
    assert sink.path_for("m", one, 0) != sink.path_for("m", two, 0)


def test_a_reread_event_needs_no_room_after_a_revoke() -> None:
    """Found by the atheris harness: a re-read event whose window revoke() had dropped was
    refused for room, and, counted ``added`` the first time, landed in no window."""
    p0, p1 = ("events", 0), ("events", 1)

    def one(partition: int, when: float) -> Rows:
        batch = EventBatch.from_vectors(np.zeros((1, DIM)), when)
        return Rows(batch, np.array([partition << 32], dtype=np.int64))

    store: WindowStore[Tracked, Rows] = WindowStore(
        window=timedelta(minutes=1), factory=tracked_ids, caps=Caps(max_windows=1)
    )
    store.assign(p0, None)
    store.assign(p1, None)
    assert store.add(p1, "m", SegmentKey(), one(1, 0.0), [0]).added == 1  # window [0, 60)
    store.advance(p1, 1, caught_up=False)
    store.revoke([p1])  # set aside: it may come back
    assert store.add(p0, "m", SegmentKey(), one(0, 100.0), [0]).refused == 1  # [0, 60) holds
    store.assign(p1, Checkpoint(0))
    assert store.add(p1, "m", SegmentKey(), one(1, 0.0), [0]) == AddResult(again=1)
    held = sorted(i for w in store.close_all() for i in w.profile.ids)
    assert held == [1 << 32], "the event counted added once is in its window"


def test_a_due_window_is_not_lost_by_a_revoke() -> None:
    """Found by the atheris harness: revoke() dropped a window that was due but not yet
    closed by ``close_ready(limit)``; its re-read events were then behind ``closed_through``,
    and as re-reads counted nowhere."""
    p0 = ("events", 0)

    def rows(times: list[float], offsets: list[int]) -> Rows:
        batch = EventBatch(np.zeros((len(times), DIM), np.float32), np.array(times))
        return Rows(batch, np.array(offsets, dtype=np.int64))

    store: WindowStore[Tracked, Rows] = WindowStore(
        window=timedelta(minutes=1), factory=tracked_ids
    )
    store.assign(p0, None)
    assert store.add(p0, "m", SegmentKey(), rows([0, 70, 200], [0, 1, 2]), [0, 1, 2]).added == 3
    store.advance(p0, 3, caught_up=True)
    first = store.close_ready(limit=1)  # [0, 60) closes; [60, 120) is due, left for later
    assert [w.key.start for w in first] == [0]
    committed = store.commit_offsets()[p0]
    assert committed == Checkpoint(1, 60)
    store.revoke([p0])  # an eager rebalance gives the partition straight back
    store.assign(p0, committed)
    again = store.add(p0, "m", SegmentKey(), rows([70, 200], [1, 2]), [1, 2])
    assert again.again == 2
    store.advance(p0, 3, caught_up=True)
    held = {w.key.start: w.profile.ids for w in first + store.close_all()}
    assert held == {0: [0], 60: [1], 180: [2]}, "the event at offset 1 is in no window"


# --- the coverage-guided fuzzer -----------------------------------------------------------


def test_atheris_harness_runs_clean(tmp_path: Path) -> None:
    """``tests/fuzz_decode_atheris.py`` for 20k runs or 20 s, whichever ends first (atheris
    is a dev dependency: without it the harness fails, and so does this test)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    run = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            "-runs=20000",
            "-max_total_time=20",
            "-rss_limit_mb=4096",
            "-print_final_stats=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Done" in run.stderr, run.stderr[-2000:]
