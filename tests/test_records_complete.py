"""Partial windows (the scaled layout): ``WindowRecord.complete`` in windows.jsonl, the last
record of each key as the one every display reads, and how the accounting counts them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from agent.accounting import Accounting
from exporters.records import SegmentKey, WindowRecord
from exporters.table import format_row
from exporters.windows_log import WindowsLog, last_per_key, latest_windows, read_windows
from sketches.drift import DriftResult, evaluate
from sketches.errors import FormatError
from sketches.reference import Reference
from tests.agent_scenarios import digits_reference
from tests.sketch_helpers import digits, profile_window

T0 = 1_800_000_000
EU = SegmentKey.of({"region": "eu"})


def _record(
    start: int = T0, *, events: int = 100, complete: bool = True, **kw: object
) -> WindowRecord:
    fields: dict[str, object] = {
        "model": "news",
        "segment": SegmentKey(),
        "start": start,
        "end": start + 3600,
        "events": events,
        "drift": {"closest_centroid": DriftResult("hellinger", 0.2, 0.1, True)},
        "closest_centroid": {"c0": 1.0},
        "centroid_distance": {},
        "reference": "r1",
        "complete": complete,
        **kw,
    }
    return WindowRecord(**fields)  # type: ignore[arg-type]


# --- the record ---------------------------------------------------------------------------------


def test_complete_is_always_written_and_read_back() -> None:
    partial = _record(complete=False)
    obj = partial.to_json()
    assert obj["complete"] is False
    line = orjson.dumps(obj)
    assert b'"complete":false' in line
    assert WindowRecord.from_json(orjson.loads(line)) == partial
    assert WindowRecord.from_json(orjson.loads(line)).complete is False
    whole = _record()
    assert whole.to_json()["complete"] is True
    assert WindowRecord.from_json(whole.to_json()).complete is True


def test_records_written_before_the_field_read_as_complete() -> None:
    obj = _record(complete=False).to_json()
    del obj["complete"]
    assert WindowRecord.from_json(obj).complete is True


@pytest.mark.parametrize("value", ["false", 0, None, 1])
def test_a_complete_that_is_not_a_boolean_is_refused(value: object) -> None:
    obj = {**_record().to_json(), "complete": value}
    with pytest.raises(FormatError, match="complete must be true or false"):
        WindowRecord.from_json(obj)


def test_the_default_keeps_existing_constructors_complete() -> None:
    positional = WindowRecord(
        "news", SegmentKey(), T0, T0 + 60, 1, {}, {}, {}, "r1", 0, None, None, (), None
    )
    assert positional.complete is True


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return Reference.load(digits_reference(tmp_path_factory))


def test_from_profile_takes_complete(reference: Reference) -> None:
    d = digits()
    profile = profile_window(reference, d.x[d.test[:50]])
    drift = evaluate(profile, reference)
    whole = WindowRecord.from_profile("m", EU, T0, T0 + 60, profile, drift)
    partial = WindowRecord.from_profile("m", EU, T0, T0 + 60, profile, drift, complete=False)
    assert whole.complete is True and partial.complete is False
    assert replace(partial, complete=True) == whole
    assert WindowRecord.from_json(partial.to_json()) == partial


# --- the log: the last record of each key -------------------------------------------------------


def test_latest_windows_takes_the_last_line_of_each_key(tmp_path: Path) -> None:
    log = WindowsLog(tmp_path)
    first = _record(T0, events=40, complete=False)
    eu = _record(T0, segment=EU, events=7)
    second = _record(T0 + 3600, events=90)
    again = _record(T0, events=70, complete=False)  # more of the missing part, still partial
    last = _record(T0, events=100)  # the window complete
    other_model = _record(T0, model="ads", complete=False)
    log.append([first, eu, second])
    log.append([again])
    log.append([other_model, last])

    assert list(read_windows(log.path)) == [first, eu, second, again, other_model, last]
    latest = latest_windows(log.path)
    # One record per key, each key where it first appeared, each the last written.
    assert latest == [last, eu, second, other_model]
    assert [r.complete for r in latest] == [True, True, True, False]
    assert latest_windows(log.path) == last_per_key(read_windows(log.path))


def test_latest_windows_of_a_log_with_one_line_per_key_is_every_line(tmp_path: Path) -> None:
    log = WindowsLog(tmp_path)
    records = [_record(T0 + 3600 * i, events=i + 1) for i in range(5)]
    log.append(records)
    assert latest_windows(log.path) == list(read_windows(log.path)) == records


def test_latest_windows_ignores_a_torn_last_line(tmp_path: Path) -> None:
    log = WindowsLog(tmp_path)
    log.append([_record(complete=False)])
    with log.path.open("ab") as out:
        out.write(orjson.dumps(_record().to_json())[:-5])  # the complete one, torn by a crash
    assert [r.complete for r in latest_windows(log.path)] == [False]


# --- the console table --------------------------------------------------------------------------


def test_the_console_row_of_a_partial_window_says_so() -> None:
    whole, partial = format_row(_record()), format_row(_record(events=40, complete=False))
    assert "partial" not in whole
    assert "   40  DRIFT  partial  closest_centroid 0.200>0.100" in partial


# --- the accounting -----------------------------------------------------------------------------


def test_a_window_emitted_partial_then_complete_is_one_window_closed() -> None:
    accounting = Accounting(window_seconds=3600.0)
    accounting.closed([_record(complete=False, events=40)], open_windows=0, watermark=None)
    accounting.closed([_record(complete=False, events=70)], open_windows=0, watermark=None)
    accounting.closed([_record(events=100)], open_windows=0, watermark=None)
    snapshot = accounting.snapshot()
    assert dict(snapshot.windows_closed) == {"news": 1}
    assert [(r.events, r.complete) for r in snapshot.latest] == [(100, True)]
    # Another window, and a complete window emitted again (crash recovery), each count.
    accounting.closed([_record(T0 + 3600), _record(T0 + 7200)], open_windows=0, watermark=None)
    accounting.closed([_record(T0 + 7200)], open_windows=0, watermark=None)
    assert dict(accounting.snapshot().windows_closed) == {"news": 4}


def test_an_older_window_emitted_again_leaves_the_newer_one_latest() -> None:
    accounting = Accounting(window_seconds=3600.0)
    accounting.closed(
        [_record(T0, complete=False), _record(T0 + 3600, events=5)], open_windows=0, watermark=None
    )
    accounting.closed([_record(T0, events=100)], open_windows=0, watermark=None)
    (latest,) = accounting.snapshot().latest
    assert (latest.start, latest.events, latest.complete) == (T0 + 3600, 5, True)


def test_the_scaled_counts_are_none_until_given() -> None:
    accounting = Accounting()
    snapshot = accounting.snapshot()
    assert snapshot.profiles is None and snapshot.partitions_owned is None
    accounting.count_profiles(published=2)
    profiles = accounting.snapshot().profiles
    assert profiles is not None
    assert (profiles.published, profiles.merged, profiles.pending) == (2, None, None)
    accounting.set_profiles_pending(3)
    profiles = accounting.snapshot().profiles
    assert profiles is not None
    assert (profiles.published, profiles.merged, profiles.duplicate, profiles.late) == (2, 0, 0, 0)
    assert profiles.pending == 3
