"""A soak run: ``embmon run`` fed a hostile mix at full speed, sampled for growth.

The mix is what an adversary (or a broken upstream) sends for ever: new model names and segment
values without end (a flood past the caps), events stamped far in the future or long past,
malformed records of every kind, and good events whose event time runs on, so windows keep
opening, closing and expiring. A producer thread keeps the topic a bounded backlog ahead of the
agent, so the agent is never idle and the broker's memory does not grow with the run. Every
``sample_every_s`` the agent's RSS (``/proc/PID/status``), its ``/metrics`` series count and its
counters are sampled. ``tests/test_soak.py`` runs it briefly; ``bench/soak.py`` for long.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaProducer

from tests.agent_scenarios import T0, AgentProcess, Metrics

__all__ = ["AGENT_FLAGS", "WINDOW", "HostileMix", "Sample", "flat", "soak"]

WINDOW = "1m"
"""One-minute windows, so that windows close (and series expire) often."""
AGENT_FLAGS = (
    "--segment-keys",
    "region",
    "--max-models",
    "8",
    "--max-segments",
    "8",
    "--max-open-windows",
    "300",
    "--series-expiry-windows",
    "5",
    "--max-future",
    "1h",
    "--term-labels",
)
"""The caps the mix floods past."""

_BACKLOG = 20_000  # records the producer keeps ahead of the agent
_STEP_S = 0.02  # event time per good event: a one-minute window holds about 3,000


@dataclass(frozen=True)
class Sample:
    """One look at the agent, ``at_s`` seconds into the run."""

    at_s: float
    rss_mb: float
    series: int
    models: int  # distinct model label values
    segments: int  # distinct (model, segment) label pairs
    handled: int  # events accepted plus records rejected, so far


class HostileMix:
    """Records of a hostile stream, made on the fly (seeded; event time runs on)."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        self._dim = dim
        self._rng = np.random.default_rng(seed)
        self._clock = float(T0)
        self._serial = 0
        self._pool = self._rng.normal(size=(512, dim)).round(4).tolist()

    def records(self, n: int) -> list[bytes]:
        return [self._one() for _ in range(n)]

    def _one(self) -> bytes:
        self._serial += 1
        roll = float(self._rng.random())
        if roll < 0.12:
            return self._malformed()
        if roll < 0.16:
            return self._event(timestamp=32_503_680_000.0)  # year 3000: future_timestamp
        if roll < 0.19:
            return self._event(timestamp=self._clock - 10 * 86_400)  # long past: late
        self._clock += _STEP_S
        return self._event(timestamp=self._clock)

    def _event(self, *, timestamp: float) -> bytes:
        rng, n = self._rng, self._serial
        roll = float(rng.random())
        model = "main" if roll < 0.5 else f"m{n % 5}" if roll < 0.8 else f"flood-{n}"
        region = f"r{n % 3}" if rng.random() < 0.7 else f"new-{n}"
        words = [f"w{int(w)}" for w in rng.zipf(1.5, size=6) if w < 10_000] + [f"u{n}"]
        event = {
            "event_id": f"e{n}",
            "timestamp": timestamp,
            "model": model,
            "segment": {"region": region},
            "embedding": self._pool[n % len(self._pool)],
            "prediction": str(n % 7),
            "target": str(n % 5),
            "tokens": words,
        }
        return orjson.dumps(event)

    def _malformed(self) -> bytes:
        n, dim = self._serial, self._dim
        kinds: Sequence[bytes] = (
            b'{"embedding": [1, 2,',
            b"\xff\xfe\xed\xa0\x80",
            b"[1, 2, 3]",
            orjson.dumps({"timestamp": self._clock, "embedding": [1.0] * (dim + 1)}),
            b'{"timestamp": %d, "embedding": [NaN]}' % int(self._clock),
            orjson.dumps({"timestamp": self._clock, "model": "x" * 300, "embedding": [0.5] * dim}),
            b'{"timestamp": 1%s, "embedding": [1]}' % (b"0" * 400),
            b"[" * 5000 + b"]" * 5000,
            orjson.dumps({"timestamp": "patient ssn-123", "embedding": [0.1] * dim}),
            orjson.dumps({"timestamp": self._clock, "embedding": list(range(5_000))}),
        )
        return kinds[n % len(kinds)]


class _Producer(threading.Thread):
    """Keeps the topic about ``_BACKLOG`` records ahead of what the agent has handled."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, mix: HostileMix) -> None:
        super().__init__(daemon=True, name="soak-producer")
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
        self._topic, self._partitions, self._mix = topic, partitions, mix
        self.produced = 0
        self.handled = 0  # updated by the sampler
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.produced - self.handled > _BACKLOG:
                    self.stop.wait(0.05)
                    continue
                for value in self._mix.records(1_000):
                    self._producer.send(
                        self._topic, value=value, partition=self.produced % self._partitions
                    )
                    self.produced += 1
                self._producer.flush()
        except BaseException as exc:  # reported by soak(), which fails the run
            self.error = exc
        finally:
            self._producer.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _series(metrics: Metrics) -> int:
    return sum(len(samples) for samples in metrics.samples.values())


def _labels(metrics: Metrics) -> tuple[int, int]:
    """Distinct model label values, and distinct (model, segment) pairs."""
    labels = [ls for samples in metrics.samples.values() for ls, _ in samples]
    models = {ls["model"] for ls in labels if "model" in ls}
    pairs = {(ls["model"], ls["segment"]) for ls in labels if "model" in ls and "segment" in ls}
    return len(models), len(pairs)


def _handled(metrics: Metrics) -> int:
    events = sum(v for _, v in metrics.samples.get("embmon_events_total", []))
    rejected = sum(v for _, v in metrics.samples.get("embmon_events_rejected_total", []))
    return int(events + rejected)


def soak(
    *,
    bootstrap: str,
    topic: str,
    partitions: int,
    reference: Path,
    dim: int,
    out: Path,
    duration_s: float,
    sample_every_s: float = 1.0,
) -> Iterator[Sample]:
    """Run the agent on the hostile mix for ``duration_s`` and yield a sample per interval.

    Raises if the agent exits or the producer fails during the run.
    """
    producer = _Producer(bootstrap, topic, partitions, HostileMix(dim))
    with AgentProcess(
        bootstrap=bootstrap,
        topic=topic,
        group=f"{topic}-soak",
        reference=reference,
        out=out,
        window=WINDOW,
        extra=AGENT_FLAGS,
    ) as agent:
        agent.wait_ready()
        producer.start()
        start = time.monotonic()
        try:
            while (elapsed := time.monotonic() - start) < duration_s:
                if agent.returncode is not None or producer.error is not None:
                    raise RuntimeError(
                        f"soak ended early: agent exit {agent.returncode}, producer "
                        f"{producer.error!r}\n{agent.log_tail()}"
                    )
                metrics = agent.metrics()
                producer.handled = _handled(metrics)
                models, segments = _labels(metrics)
                rss = _rss_mb(agent.process.pid)
                yield Sample(elapsed, rss, _series(metrics), models, segments, producer.handled)
                time.sleep(sample_every_s)
        finally:
            producer.stop.set()
            producer.join(timeout=30)


def flat(samples: Sequence[Sample], *, warmup: float = 0.4) -> dict[str, float]:
    """Growth after ``warmup`` (a fraction of the run): the median RSS and the largest series
    count of the last third against those of the middle part, and the rate of each part.

    Medians, because RSS swings with what the consumer has fetched and not yet handled.
    """
    end = samples[-1].at_s
    middle = [s for s in samples if warmup * end <= s.at_s < (2 / 3) * end]
    last = [s for s in samples if s.at_s >= (2 / 3) * end]
    if len(middle) < 3 or len(last) < 3:
        raise ValueError(f"too few samples after the warm-up: {len(samples)}")

    def rate(part: list[Sample]) -> float:
        return (part[-1].handled - part[0].handled) / (part[-1].at_s - part[0].at_s)

    return {
        "rss_mb_middle": statistics.median(s.rss_mb for s in middle),
        "rss_mb_last": statistics.median(s.rss_mb for s in last),
        "series_middle": max(s.series for s in middle),
        "series_last": max(s.series for s in last),
        "rate_middle": rate(middle),
        "rate_last": rate(last),
    }
