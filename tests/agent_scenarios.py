"""Shared helpers for the ``embmon run`` integration tests against a real broker.

A small digits reference (built once per session), seeded event streams whose later windows
are shifted, a producer, and the agent as a subprocess with its ``/metrics``, ``/healthz`` and
``/readyz`` endpoints. Waiting is always on a condition (an endpoint, a file, a metric), never
on a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters.windows_log import read_windows
from sketches.batch import EventBatch
from sketches.reference import build_reference
from tests.broker import produce

__all__ = [
    "DAY",
    "GROUP_TIMEOUTS",
    "HOUR",
    "MODEL",
    "T0",
    "AgentProcess",
    "Event",
    "Metrics",
    "digits_events",
    "digits_reference",
    "expected_counts",
    "iso",
    "line_count",
    "produce_events",
    "wait_for",
    "window_counts",
    "window_records",
]

HOUR = 3600
DAY = 86400
T0 = 1_763_596_800
"""2025-11-20T00:00:00Z, the first window of every scenario."""
MODEL = "digits"
REFERENCE_ROUNDS = 150
REFERENCE_SIZES = (10, 30, 100, 300, 1000)
GROUP_TIMEOUTS = (
    "--session-timeout-ms",
    "6000",
    "--heartbeat-interval-ms",
    "1000",
    "--max-poll-interval-ms",
    "10000",
)
_SPLIT_SEED = 3
_TRAIN_ROWS = 1200
_T = TypeVar("_T")


# --- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Digits:
    train: npt.NDArray[np.float32]
    train_labels: npt.NDArray[np.str_]
    test: npt.NDArray[np.float32]
    test_labels: npt.NDArray[np.str_]


@cache
def _digits() -> _Digits:
    """scikit-learn's bundled digits, split once: the reference sees none of the test rows."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(str)
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
    train, test = perm[:_TRAIN_ROWS], perm[_TRAIN_ROWS:]
    return _Digits(x[train], y[train], x[test], y[test])


_reference_dirs: dict[int, Path] = {}


def digits_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits reference directory, built at most once per session (about 2 s)."""
    key = id(tmp_path_factory)
    if key not in _reference_dirs:
        d = _digits()
        batch = EventBatch(embeddings=d.train, timestamps=np.zeros(len(d.train)))
        reference = build_reference(
            batch, d.train_labels, rounds=REFERENCE_ROUNDS, sizes=REFERENCE_SIZES, seed=0
        )
        out = tmp_path_factory.mktemp("digits-reference")
        reference.save(out)
        _reference_dirs[key] = out
    return _reference_dirs[key]


@dataclass(frozen=True)
class Event:
    """One produced event: its window (epoch seconds), whether it was corrupted, its bytes."""

    window_start: int
    shifted: bool
    value: bytes


def digits_events(
    *,
    windows: int,
    per_window: int,
    window_s: int = DAY,
    shifted_windows: Iterable[int] = (),
    shift_fraction: float = 0.5,
    seed: int = 0,
    start: int = T0,
    model: str = MODEL,
) -> list[Event]:
    """Held-out digits, ``per_window`` per window spread evenly over it, in time order.

    In ``shifted_windows`` (0-based) each event is, with probability ``shift_fraction``,
    corrupted the way a broken preprocessing step would: its pixels reversed. Events carry the
    true digit as ``target`` and a ``prediction`` that is right 95 % of the time on clean
    inputs and a guess on corrupted ones.
    """
    d = _digits()
    rng = np.random.default_rng(seed)
    shifted_set = set(shifted_windows)
    step = window_s / per_window
    events = []
    for w in range(windows):
        window_start = start + w * window_s
        rows = rng.integers(len(d.test), size=per_window)
        corrupt = rng.random(per_window) < shift_fraction
        guess = rng.random(per_window) < 0.05
        guesses = rng.integers(10, size=per_window)
        for i, row in enumerate(rows.tolist()):
            vector = d.test[row]
            target = str(d.test_labels[row])
            shifted = w in shifted_set and bool(corrupt[i])
            if shifted:
                vector = vector[::-1]
            event = {
                "event_id": f"{seed}-{w}-{i}",
                "timestamp": window_start + i * step,
                "model": model,
                "embedding": vector.tolist(),
                "prediction": str(guesses[i]) if shifted or guess[i] else target,
                "target": target,
            }
            events.append(Event(window_start, shifted, orjson.dumps(event)))
    return events


def iso(epoch_seconds: int) -> str:
    """UTC ISO 8601 with ``Z``, as ``windows.jsonl`` writes window bounds."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_counts(events: Iterable[Event], model: str = MODEL) -> Counter[tuple[str, str]]:
    """Produced events per ``(model, window_start)``."""
    return Counter((model, iso(e.window_start)) for e in events)


def produce_events(
    bootstrap: str, topic: str, partitions: int, values: Sequence[bytes]
) -> dict[int, int]:
    """Send ``values`` round-robin over ``partitions`` (each partition stays in time order).

    Returns how many records each partition got.
    """
    produce(bootstrap, topic, [(i % partitions, v, None) for i, v in enumerate(values)])
    return dict(Counter(i % partitions for i in range(len(values))))


# --- outputs --------------------------------------------------------------------------------


def window_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``out_dir/windows.jsonl`` as its JSON object (none if the file is absent)."""
    path = out_dir / "windows.jsonl"
    return [r.to_json() for r in read_windows(path)] if path.exists() else []


def window_counts(*out_dirs: Path) -> Counter[tuple[str, str]]:
    """Events per ``(model, window_start)`` summed over the ``windows.jsonl`` of ``out_dirs``."""
    counts: Counter[tuple[str, str]] = Counter()
    for out in out_dirs:
        for record in window_records(out):
            counts[(record["model"], record["window_start"])] += int(record["events"])
    return counts


def line_count(path: Path) -> int:
    """Complete lines in ``path`` (0 if absent); cheap enough to poll."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(
    condition: Callable[[], _T | None],
    what: str,
    *,
    timeout_s: float = 60.0,
    interval_s: float = 0.05,
    agents: Sequence[AgentProcess] = (),
) -> _T:
    """Poll ``condition`` until it returns a truthy value, and return that value.

    Fails after ``timeout_s`` with ``what`` and the log tails of ``agents``; fails at once if
    one of ``agents`` exited.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        for agent in agents:
            if agent.returncode is not None:
                pytest.fail(
                    f"{agent.name} exited with {agent.returncode} while waiting for {what}\n"
                    f"{agent.log_tail()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {a.name}:\n{a.log_tail()}" for a in agents)
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{logs}")
        time.sleep(interval_s)


# --- the agent ------------------------------------------------------------------------------


class Metrics:
    """One scrape of ``/metrics``: samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append(
                    (dict(sample.labels), float(sample.value))
                )

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the one sample of ``name`` whose labels include ``labels``."""
        found = [v for ls, v in self.samples.get(name, []) if labels.items() <= ls.items()]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} samples of {name} match {labels}")
        return found[0] if found else None

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Values of ``name`` keyed by ``label``, among samples whose labels include ``labels``."""
        return {
            ls[label]: v
            for ls, v in self.samples.get(name, [])
            if labels.items() <= ls.items() and label in ls
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _embmon() -> list[str]:
    script = Path(sys.executable).with_name("embmon")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())"]


class AgentProcess:
    """``embmon run`` as a subprocess with its own log file; a context manager (kills on exit).

    The endpoint listens on 127.0.0.1 at a port that was free just before the start
    (``--metrics-port 0`` means no endpoint at all).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        reference: Path,
        out: Path,
        window: str = "1d",
        lateness: str = "0s",
        until_end: bool = False,
        extra: Sequence[str] = (),
        name: str = "agent",
    ) -> None:
        self.name = name
        self.out = out
        self.port = _free_port()
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out.parent / f"{out.name}-{name}-{time.monotonic_ns()}.log"
        args = [
            *_embmon(),
            "run",
            "--bootstrap-servers",
            bootstrap,
            "--topic",
            topic,
            "--group-id",
            group,
            "--reference",
            str(reference),
            "--window",
            window,
            "--lateness",
            lateness,
            "--out",
            str(out),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(self.port),
            *GROUP_TIMEOUTS,
            *(["--until-end"] if until_end else []),
            *extra,
        ]
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def windows_path(self) -> Path:
        return self.out / "windows.jsonl"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of ``GET path`` on the agent's endpoint."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def metrics(self) -> Metrics:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}: {body}"
        return Metrics(body)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until ``/readyz`` answers 200 (the consumer is subscribed)."""

        def ready() -> bool:
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False

        wait_for(ready, f"{self.name} /readyz", timeout_s=timeout_s, agents=[self])

    def wait_metrics(
        self,
        condition: Callable[[Metrics], bool],
        what: str,
        timeout_s: float = 60.0,
        *,
        stall_s: float | None = None,
    ) -> Metrics:
        """Scrape until ``condition(scrape)`` holds; returns that scrape.

        With ``stall_s``, fails as soon as the consumer made no progress (same events total and
        lag) for that long while the condition does not hold.
        """
        last: list[object] = [None, time.monotonic()]

        def met() -> Metrics | None:
            scrape = self.metrics()
            if condition(scrape):
                return scrape
            if stall_s is not None:
                state = (
                    scrape.samples.get("embmon_events_total"),
                    scrape.samples.get("embmon_consumer_lag_records"),
                )
                if state != last[0]:
                    last[:] = [state, time.monotonic()]
                elif time.monotonic() - cast(float, last[1]) > stall_s:
                    pytest.fail(
                        f"{self.name} stalled for {stall_s} s waiting for {what}: events and lag "
                        f"unchanged at {state}\n{self.log_tail()}"
                    )
            return None

        return wait_for(met, what, timeout_s=timeout_s, interval_s=0.1, agents=[self])

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running after {timeout_s} s\n{self.log_tail()}")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        self._log.close()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
