"""One path from source to window record: replay and run never disagree, re-runs are explicit,
names are safe, segment labels are canonical, series of silent models expire.

Windows here hold at most 150 events, so every KLL sketch (k=200) keeps all its items and two
runs over the same events must give the same ``windows.jsonl``: the same windows, counts, late
events and verdicts, exactly. Float read-outs agree to float32 rounding only: BLAS sums a
distance product of 1 row in another order than one of 500 rows.
"""

from __future__ import annotations

import functools
import math
import random
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from agent.accounting import Accounting
from agent.replay import replay
from exporters.openmetrics import openmetrics_text
from exporters.prometheus import EmbmonCollector
from sketches.profile import WindowProfile
from sketches.reference import Reference
from tests.agent_scenarios import T0, AgentProcess, _digits, digits_reference, produce_events
from tests.broker import new_topic

MINUTE = 60


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_reference(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(reference_dir: Path) -> Reference:
    return Reference.load(reference_dir)


def _events(
    seed: int, *, windows: int = 4, per_window: int = 100, late_every: int = 0
) -> list[bytes]:
    """Digits events over ``windows`` minutes, slightly out of order; some far behind if asked."""
    rng = random.Random(seed)
    test = _digits().test
    out = []
    t = float(T0)
    for i in range(windows * per_window):
        t += MINUTE / per_window
        when = max(t - rng.uniform(0, 5), T0)  # the first window starts at T0
        if late_every and i % late_every == late_every - 1:
            when = t - rng.uniform(60, 150)
        row = test[rng.randrange(len(test))]
        out.append(orjson.dumps({"timestamp": when, "embedding": row.tolist()}))
    return out


def _write(path: Path, values: Sequence[bytes]) -> Path:
    path.write_bytes(b"".join(v + b"\n" for v in values))
    return path


def _same_windows(left: bytes, right: bytes) -> bool:
    """Both ``windows.jsonl`` hold the same records, floats equal to float32 rounding."""
    a, b = left.splitlines(), right.splitlines()
    return len(a) == len(b) and all(
        _same(orjson.loads(x), orjson.loads(y)) for x, y in zip(a, b, strict=True)
    )


def _same(x: object, y: object) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(p, q) for p, q in zip(x, y, strict=True))
    return type(x) is type(y) and x == y


@functools.cache
def _load(path: Path) -> Reference:
    return Reference.load(path)


def _replay(reference: Reference, events: Path, out: Path, chunk_size: int) -> bytes:
    replay(
        reference,
        events,
        window=timedelta(minutes=1),
        lateness=timedelta(seconds=10),
        out_dir=out,
        chunk_size=chunk_size,
        show_progress=False,
    )
    return (out / "windows.jsonl").read_bytes()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), chunk_size=st.integers(1, 450))
def test_replay_gives_the_same_windows_at_any_chunk_size(
    reference_dir: Path, seed: int, chunk_size: int
) -> None:
    reference = _load(reference_dir)
    with tempfile.TemporaryDirectory() as tmp:
        events = _write(Path(tmp) / "events.jsonl", _events(seed, late_every=37))
        whole = _replay(reference, events, Path(tmp) / "whole", chunk_size=10_000)
        chunked = _replay(reference, events, Path(tmp) / "chunked", chunk_size=chunk_size)
    assert whole.count(b"\n") == 4
    assert _same_windows(chunked, whole)


@pytest.mark.kafka
@pytest.mark.parametrize("partitions", [1, 3])
def test_the_kafka_driver_gives_replay_s_windows_at_any_partitioning(
    kafka_bootstrap: str, reference_dir: Path, tmp_path: Path, partitions: int
) -> None:
    values = _events(5, windows=3, per_window=150)  # in time order within 5 s: never late
    events = _write(tmp_path / "events.jsonl", values)
    replayed = tmp_path / "replayed"
    subprocess.run(
        [sys.executable, "-m", "agent.cli", "replay", "--reference", str(reference_dir),
         "--input", str(events), "--window", "1m", "--lateness", "10s",
         "--out", str(replayed), "--quiet"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    topic = new_topic(kafka_bootstrap, partitions, prefix="one-path")
    produce_events(kafka_bootstrap, topic, partitions, values)
    live = tmp_path / "live"
    with AgentProcess(
        bootstrap=kafka_bootstrap,
        topic=topic,
        group=f"g-{topic}",
        reference=reference_dir,
        out=live,
        window="1m",
        lateness="10s",
        until_end=True,
    ) as agent:
        assert agent.wait_exit(120) == 0, agent.log_tail()
    expected = (replayed / "windows.jsonl").read_bytes()
    assert expected.count(b"\n") == 3
    assert _same_windows((live / "windows.jsonl").read_bytes(), expected)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_a_replay_into_a_used_out_is_refused_unless_overwrite_or_resume(
    reference_dir: Path, tmp_path: Path
) -> None:
    events = _write(tmp_path / "events.jsonl", _events(1, windows=3))
    out = tmp_path / "out"
    args = ("replay", "--reference", str(reference_dir), "--input", str(events))
    args += ("--window", "1m", "--out", str(out), "--quiet")
    assert _cli(*args).returncode == 0
    first = (out / "windows.jsonl").read_bytes()
    assert first.count(b"\n") == 3

    again = _cli(*args)
    assert again.returncode == 2
    assert "--overwrite" in again.stderr and "--resume" in again.stderr
    assert (out / "windows.jsonl").read_bytes() == first

    rerun = _cli(*args, "--overwrite")
    assert rerun.returncode == 0, rerun.stderr
    assert "3 windows" in rerun.stdout
    assert (out / "windows.jsonl").read_bytes() == first  # replaced, not appended

    resumed = _cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "0 windows" in resumed.stdout  # every window is already in this run's ledger
    assert (out / "windows.jsonl").read_bytes() == first


def test_a_replay_that_accepts_no_event_fails_and_says_why(
    reference_dir: Path, tmp_path: Path
) -> None:
    short = [orjson.dumps({"timestamp": T0, "embedding": [0.0] * 8}) for _ in range(5)]
    result = _cli(
        "replay", "--reference", str(reference_dir), "--input",
        str(_write(tmp_path / "events.jsonl", short)), "--out", str(tmp_path / "out"), "--quiet",
    )  # fmt: skip
    assert result.returncode == 2
    assert "no event" in result.stderr and "'wrong_dimension': 5" in result.stderr
    assert "dimension, 64" in result.stderr


def test_hostile_model_names_keep_their_profiles_apart_and_inside_out(
    reference: Reference, tmp_path: Path
) -> None:
    names = ["..", "../../escaped", "a/b", "a_b", "/abs", "x" * 128]  # 128: the longest name
    values = []
    for i, line in enumerate(_events(2, windows=1, per_window=60)):
        event = orjson.loads(line)
        event["model"] = names[i % len(names)]
        values.append(orjson.dumps(event))
    out = tmp_path / "deep" / "out"
    summary = replay(
        reference,
        _write(tmp_path / "events.jsonl", values),
        window=timedelta(minutes=1),
        out_dir=out,
        show_progress=False,
    )
    assert sorted(w.model for w in summary.windows) == sorted(names)
    files = [p for p in tmp_path.rglob("*.bin")]
    assert len(files) == len(names)
    root = (out / "profiles").resolve()
    assert all(root in p.resolve().parents for p in files)
    assert all(len(part) < 80 for p in files for part in p.relative_to(root).parts)
    counts = sorted(WindowProfile.from_bytes(p.read_bytes()).count for p in files)
    assert counts == [10] * len(names)


def _scrape(records: Sequence[object], **accounting: int) -> CollectorRegistry:
    state = Accounting(window_seconds=60.0, **accounting)
    registry = CollectorRegistry()
    EmbmonCollector(state.snapshot).register(registry)
    state.closed(records, open_windows=0, watermark=None)  # type: ignore[arg-type]
    return registry


def test_a_segment_is_the_same_series_live_and_backfilled(
    reference: Reference, tmp_path: Path
) -> None:
    values = []
    for line in _events(3, windows=2, per_window=40):
        event = orjson.loads(line)
        event["segment"] = {"tier": "gold", "region": "eu"}
        values.append(orjson.dumps(event))
    summary = replay(
        reference,
        _write(tmp_path / "events.jsonl", values),
        window=timedelta(minutes=1),
        out_dir=tmp_path / "out",
        segment_keys=("tier", "region"),  # configured in another order than sorted
        show_progress=False,
    )
    last = summary.windows[-1]
    live = _scrape(summary.windows)
    labels = {"model": "default", "segment": "region=eu,tier=gold"}
    assert live.get_sample_value("embmon_window_events", labels) == last.events
    backfill = openmetrics_text(summary.windows).decode()
    sample = f'embmon_window_events{{model="default",segment="region=eu,tier=gold"}} {last.events}'
    assert sample in backfill
    assert "tier=gold,region=eu" not in backfill


def test_series_of_a_model_that_stopped_sending_expire(
    reference: Reference, tmp_path: Path
) -> None:
    values = []
    for i, line in enumerate(_events(4, windows=6, per_window=30)):
        event = orjson.loads(line)
        event["model"] = "quiet" if i < 30 and i % 2 else "busy"
        values.append(orjson.dumps(event))
    summary = replay(
        reference,
        _write(tmp_path / "events.jsonl", values),
        window=timedelta(minutes=1),
        out_dir=tmp_path / "out",
        show_progress=False,
    )
    ends = sorted({w.end for w in summary.windows})
    assert [w.model for w in summary.windows if w.end == ends[0]] == ["busy", "quiet"]

    def exported(records: Sequence[object], expire: int) -> set[str]:
        registry = _scrape(records, expire_after_windows=expire)
        return {
            s.labels["model"]
            for m in registry.collect()
            if m.name == "embmon_window_events"
            for s in m.samples
        }

    upto = [[w for w in summary.windows if w.end <= end] for end in ends]
    assert [exported(r, 2) for r in upto] == [{"busy", "quiet"}] * 3 + [{"busy"}] * 3
    assert exported(upto[-1], 0) == {"busy", "quiet"}  # 0: never expire


def test_window_records_round_trip_through_json(reference: Reference, tmp_path: Path) -> None:
    from exporters.records import WindowRecord
    from exporters.windows_log import read_windows

    summary = replay(
        reference,
        _write(tmp_path / "events.jsonl", _events(6, windows=2, per_window=50)),
        window=timedelta(minutes=1),
        out_dir=tmp_path / "out",
        show_progress=False,
    )
    read = list(read_windows(tmp_path / "out" / "windows.jsonl"))
    assert read == summary.windows
    assert all(WindowRecord.from_json(r.to_json()) == r for r in read)
    assert {r.to_json()["v"] for r in read} == {1}
    assert np.isclose(sum(read[0].closest_centroid.values()), 1.0)
