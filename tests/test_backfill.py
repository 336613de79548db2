"""Backfill end to end: ``embmon replay --openmetrics`` -> ``promtool tsdb create-blocks-from
openmetrics`` -> a real Prometheus serving those blocks -> PromQL over the history.

A week of digits events (1-day windows) whose last three days are shifted (70 % of the vectors
reversed) is replayed; the OpenMetrics file is turned into TSDB blocks; Prometheus starts on
that data directory with a retention long enough for the old timestamps and a lookback delta
of one window, so that at any time of the history an instant query sees the last window that
had closed by then (as the live agent would have exported it). Drift must show on the shifted
days only, in ``embmon_window_drifted``, in ``embmon_drift_detected`` and in the drift alert's
own expression.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.e2e_services import (
    DAY,
    EMBMON,
    DigitsStream,
    prometheus_query,
    prometheus_query_range,
    require_binary,
    start_prometheus,
)

pytestmark = pytest.mark.e2e

T0 = 1_763_596_800  # 2025-11-20T00:00:00Z
DAYS = 7
SHIFTED_FROM = 4  # days 4, 5, 6 are shifted
PER_DAY = 300
STEP = 6 * 3600  # four points per window over the history


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Replays the week, backfills it, and starts Prometheus on the blocks."""
    work = tmp_path_factory.mktemp("backfill")
    stream = DigitsStream.load()
    reference = stream.build_reference(work / "reference")
    rng = np.random.default_rng(11)
    events = work / "events.jsonl"
    with events.open("wb") as f:
        for day in range(DAYS):
            for line in stream.events(rng, T0 + day * DAY, PER_DAY, shifted=day >= SHIFTED_FROM):
                f.write(line + b"\n")
    openmetrics = work / "embmon.om.txt"
    _run(
        EMBMON, "replay",
        "--reference", str(reference),
        "--input", str(events),
        "--window", "1d",
        "--out", str(work / "replay"),
        "--openmetrics", str(openmetrics),
        "--quiet",
    )  # fmt: skip
    data = work / "tsdb"
    promtool = require_binary("promtool")
    _run(promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data))
    windows = [
        json.loads(line) for line in (work / "replay" / "windows.jsonl").read_text().splitlines()
    ]
    prometheus = start_prometheus(
        work / "prometheus",
        {"global": {"evaluation_interval": "1m"}},
        data_dir=data,
        extra_args=(
            # The samples are a year old or more: keep them (retention is measured back
            # from the newest block, but be explicit), and let an instant query see the
            # window that closed up to one window earlier.
            "--storage.tsdb.retention.time=100y",
            "--query.lookback-delta=1d",
        ),
    )
    try:
        yield {"prometheus": prometheus, "windows": windows, "openmetrics": openmetrics}
    finally:
        prometheus.stop()


def _expected(windows: list[dict[str, Any]], t: float) -> float | None:
    """Whether the last window closed at or before ``t`` (within one window) drifted."""
    ended = [w for w in windows if _end(w) <= t < _end(w) + DAY]
    return float(ended[-1]["drifted"]) if ended else None


def _end(window: dict[str, Any]) -> float:
    from exporters.records import parse_time

    return parse_time(window["window_end"])


def _series_over_history(history: dict[str, Any], expr: str) -> dict[float, float]:
    windows = history["windows"]
    start, end = _end(windows[0]) - DAY, _end(windows[-1]) + DAY - STEP
    result = prometheus_query_range(history["prometheus"].url, expr, start, end, STEP)
    assert len(result) <= 1, result
    return {float(t): float(v) for t, v in (result[0]["values"] if result else [])}


def test_replay_drifts_on_shifted_days_only(history: dict[str, Any]) -> None:
    windows = history["windows"]
    assert [w["window_start"][:10] for w in windows] == [f"2025-11-{20 + d}" for d in range(DAYS)]
    assert [w["drifted"] for w in windows] == [d >= SHIFTED_FROM for d in range(DAYS)]
    assert history["openmetrics"].read_bytes().endswith(b"# EOF\n")


@pytest.mark.parametrize(
    "expr",
    [
        'max by (model) (embmon_window_drifted{model="digits"})',
        'max by (model) (embmon_drift_detected{model="digits"})',
        # the drift alert's own expression, over the backfilled history
        'max by (model) (embmon_drift_score{model="digits"} > bool embmon_drift_threshold)',
    ],
)
def test_drift_shows_on_shifted_days_only(history: dict[str, Any], expr: str) -> None:
    windows = history["windows"]
    series = _series_over_history(history, expr)
    expected = {
        t: _expected(windows, t)
        for t in np.arange(_end(windows[0]) - DAY, _end(windows[-1]) + DAY - STEP + 1, STEP)
    }
    # Before the first window closed there is nothing; afterwards every point has a value,
    # 1 exactly while the last closed window is a shifted day.
    assert {t for t, v in expected.items() if v is not None} == set(series)
    for t, value in series.items():
        assert expected[t] is not None, f"data at {t} before the first window closed"
        assert value == expected[t], f"at {t}: {value} != {expected[t]} ({expr})"
    drifted_days = sorted({int((t - T0) // DAY) - 1 for t, v in series.items() if v == 1})
    assert drifted_days == list(range(SHIFTED_FROM, DAYS))


def test_every_window_is_in_the_tsdb(history: dict[str, Any]) -> None:
    """One sample per window end: instant queries at each end give that window's values."""
    for window in history["windows"]:
        at = _end(window)
        result = prometheus_query(
            history["prometheus"].url, 'embmon_window_events{model="digits"}', at
        )["result"]
        assert [float(s["value"][1]) for s in result] == [float(window["events"])]
        detected = prometheus_query(
            history["prometheus"].url, 'embmon_drift_detected{model="digits"} == 1', at
        )["result"]
        assert {s["metric"]["metric"] for s in detected} == {
            m for m, r in window["drift"].items() if r["drifted"]
        }
