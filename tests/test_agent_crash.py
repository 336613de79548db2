"""``embmon run`` killed with SIGKILL at seeded random moments, restarted with the same
``--out`` and group each time, then finished with ``--until-end``: every window is written
exactly once with exactly the produced count.

Tansu 0.6 drops commit metadata, so the resumed consumer gets no ``closed_through``: the ledger
(``windows.jsonl``) alone must catch re-read events of windows persisted before a kill
(``agent/windows.py`` has the argument). Kill moments come from the agent's own progress: a
random number of newly closed windows, then a random delay of at most a few polls.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.agent_scenarios import (
    HOUR,
    T0,
    AgentProcess,
    digits_events,
    digits_reference,
    expected_counts,
    iso,
    line_count,
    produce_events,
    wait_for,
    window_counts,
    window_records,
)
from tests.broker import new_topic

pytestmark = pytest.mark.kafka

PARTITIONS = 3
WINDOWS = 20
PER_WINDOW = 200
KILLS = 5
SEED = 20261120
# The backlog is read in fetches of ~50 records per partition (a real consumer's view of a
# backlog larger than its fetch size), so windows close one by one across many polls and a
# kill can land between any two of them; nothing is slowed down. Watermark-lead pausing is on
# (its default), so kills also land around pauses and resumes.
SMALL_FETCHES = (
    "--max-partition-fetch-bytes",
    "16384",
    "--max-poll-records",
    "100",
)


def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    reference = digits_reference(tmp_path_factory)
    events = digits_events(windows=WINDOWS, per_window=PER_WINDOW, window_s=HOUR, seed=SEED)
    topic = new_topic(kafka_bootstrap, PARTITIONS, prefix="crash")
    produce_events(kafka_bootstrap, topic, PARTITIONS, [e.value for e in events])
    out, gid = tmp_path / "out", f"g-{uuid.uuid4().hex[:8]}"
    rng = random.Random(SEED)

    def agent(name: str, until_end: bool = False) -> AgentProcess:
        return AgentProcess(
            bootstrap=kafka_bootstrap,
            topic=topic,
            group=gid,
            reference=reference,
            out=out,
            window="1h",
            lateness="0s",
            until_end=until_end,
            extra=SMALL_FETCHES,
            name=name,
        )

    kills: list[tuple[int, int, float]] = []  # (lines before, lines at kill, delay s)
    resumed_into_persisted = 0  # restarts whose committed offset lay inside a persisted window
    for k in range(KILLS):
        before = line_count(out / "windows.jsonl")
        persisted = {r["window_start"] for r in window_records(out)}
        with agent(f"run{k}") as run:
            if k == 0:
                # While the first polls are read: open windows only, nothing persisted yet.
                wait_for(
                    lambda: "partition assigned" in run.log_text(),
                    "partitions assigned",
                    agents=[run],
                    interval_s=0.01,
                )
                delay = rng.uniform(0.0, 0.3)
            else:
                # A few more windows closed (live, the newest one never closes), then at once,
                # within a commit's round trip, or a few polls later.
                target = min(before + rng.randint(1, 4), WINDOWS - 2)
                wait_for(
                    lambda: line_count(run.windows_path) >= target,  # noqa: B023
                    f"{target} closed windows",
                    agents=[run],
                    interval_s=0.001,
                )
                delay = rng.choice([0.0, rng.uniform(0.0, 0.003), rng.uniform(0.0, 0.05)])
            time.sleep(delay)  # the random kill delay itself, the one wait not on a condition
            run.kill()
        resumed = {iso(start_of(p, o)) for p, o in committed_offsets(run.log_text())}
        resumed_into_persisted += bool(resumed & persisted)
        kills.append((before, line_count(out / "windows.jsonl"), round(delay, 4)))

    with agent("final", until_end=True) as final:
        assert final.wait_exit(120) == 0, final.log_tail()

    records = window_records(out)
    keys = Counter((r["model"], r["window_start"]) for r in records)
    assert [key for key, n in keys.items() if n > 1] == [], f"windows written twice; kills {kills}"
    assert len(records) == WINDOWS
    assert window_counts(out) == expected_counts(events), f"kills {kills}"
    # The kills really landed mid-stream: at least one run was killed with windows left to close.
    assert any(at < WINDOWS - 1 for _, at, _ in kills), kills
    print(
        f"kills (lines before, lines at kill, delay s): {kills}; restarts resuming inside a "
        f"persisted window (re-reads the ledger skipped): {resumed_into_persisted}"
    )


_COMMITTED = re.compile(r"partition=(\d+)\) \(committed \((\d+),")


def committed_offsets(log: str) -> list[tuple[int, int]]:
    """(partition, committed offset) of each assignment the agent logged."""
    return [(int(p), int(o)) for p, o in _COMMITTED.findall(log)]


def start_of(partition: int, offset: int) -> int:
    """Window start of the event at ``offset`` of ``partition`` (round-robin production)."""
    index = offset * PARTITIONS + partition
    return T0 + (index // PER_WINDOW) * HOUR
