"""Benchmark 3: memory. Peak RSS after 100k and after 5M events through the same pipeline.

Events go through the agent's own path in-process: ``agent.driver.Driver`` over an
``agent.pipeline.Pipeline`` (decode, windows, profiles, closing, drift, windows.jsonl, profile
files and ledger, commits), fed raw records in polls by an in-memory source the way ``embmon
replay`` runs the driver over its file source (Kafka would only add its client's buffers,
which do not depend on how many events went before). Events are 384-d ``embedding_b64`` with text
(Zipf words from a 100k vocabulary), a prediction and a target, 1h windows of 50,000 events,
so 5M events open and close 100 windows (``--models 100``: spread round robin over 100
models, so 100 window profiles are open at once and 10,000 close). Peak RSS (VmHWM) and current RSS are read at each
checkpoint; the whole run is one process with one configuration, glibc's allocator tuned as
``embmon`` tunes it (:mod:`agent.allocator`: freed memory stays mapped).

usage: python bench/memory.py [--quick] [--events 5000000] [--json OUT]
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import orjson
from common import T0, emit, fmt, make_reference, mixture, peak_rss_mb, rss_mb

from agent.allocator import keep_freed_memory
from agent.decode import Decoder
from agent.driver import Driver
from agent.ledger import prepare_out
from agent.pipeline import Pipeline
from agent.source import ChunkSource, RawRecord
from agent.window_caps import Caps


class Events:
    """Raw records made on the fly from a pool of vectors and words (no 5M-event list)."""

    def __init__(
        self,
        dim: int,
        per_window: int,
        text: bool,
        models: int = 1,
        topic: str = "bench",
        seed: int = 7,
    ) -> None:
        rng = np.random.default_rng(seed)
        # A small pool (4,000 vectors): the benchmark's own set-up must not set the peak.
        vectors, labels = mixture(4_000, dim, 20, seed=seed)
        self.b64 = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        self.labels = labels.tolist()
        vocab = [f"w{i}" for i in range(100_000)]
        words = np.minimum(rng.zipf(1.3, size=100_000), 100_000) - 1
        self.words = [vocab[i] for i in words.tolist()]
        self.step = 3600.0 / per_window
        self.text = text
        self.models = models
        self.topic = topic

    def chunk(self, start: int, size: int) -> list[RawRecord]:
        out = []
        pool, words = len(self.b64), len(self.words)
        for i in range(start, start + size):
            j = i % pool
            event: dict[str, object] = {
                "event_id": f"e{i}",
                "timestamp": T0 + i * self.step,
                "embedding_b64": self.b64[j],
                "prediction": self.labels[(j * 7) % pool],
                "target": self.labels[j],
            }
            if self.models > 1:  # round robin: every model has a window open at once
                event["model"] = f"m{i % self.models}"
            if self.text:
                w = (i * 8) % (words - 8)
                event["text"] = " ".join(self.words[w : w + 8])
            out.append(RawRecord(orjson.dumps(event), timestamp=-1, offset=i, topic=self.topic))
        return out


def main() -> None:
    keep_freed_memory()  # as every embmon command does at start
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k and 500k events")
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--checkpoints", default="100000,1000000,2000000,5000000")
    parser.add_argument("--per-window", type=int, default=50_000, help="events per 1h window")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunk", type=int, default=2_000, help="records per poll")
    parser.add_argument("--no-text", action="store_true")
    parser.add_argument("--models", type=int, default=1, help="events spread over N models")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()
    if args.quick:
        args.events, args.checkpoints, args.per_window = 500_000, "100000,500000", 10_000
    checkpoints = sorted(int(c) for c in args.checkpoints.split(",") if int(c) <= args.events)

    reference = make_reference(args.dim, 20)
    events = Events(args.dim, args.per_window, not args.no_text, args.models)
    rows = [{"events": 0, "peak_rss_mb": peak_rss_mb(), "rss_mb": rss_mb(), "seconds": 0.0}]

    def polls() -> Iterator[list[RawRecord]]:
        """Chunks of ``--chunk`` records that end exactly at each checkpoint."""
        done = 0
        for target in checkpoints:
            while done < target:
                size = min(args.chunk, target - done)
                yield events.chunk(done, size)
                done += size

    with tempfile.TemporaryDirectory(prefix="embmon-bench-mem-") as out:
        pipeline = Pipeline(
            reference,
            Decoder(args.dim),
            window=timedelta(hours=1),
            out_dir=prepare_out(out),
            caps=Caps(max_models=max(Caps().max_models, args.models)),  # no model folded
        )
        source = ChunkSource(polls(), partition=(events.topic, 0))
        driver = Driver(pipeline, source, poll_timeout_ms=0)
        started = time.perf_counter()
        for target in checkpoints:
            while source.position < target:
                driver.turn()
            counted = pipeline.accounting.snapshot()
            rows.append(
                {
                    "events": source.position,
                    "profiled": int(sum(counted.events.values())),
                    "windows_closed": int(sum(counted.windows_closed.values())),
                    "open_windows": pipeline.store.open_windows,
                    "peak_rss_mb": peak_rss_mb(),
                    "rss_mb": rss_mb(),
                    "seconds": time.perf_counter() - started,
                }
            )
            print(
                f"{source.position:,} events: peak RSS {rows[-1]['peak_rss_mb']:.1f} MiB",
                file=sys.stderr,
            )
    base = next(r for r in rows if r["events"] == checkpoints[0])
    last = rows[-1]
    ratio = last["peak_rss_mb"] / base["peak_rss_mb"]
    print(
        f"\nMemory, one process through Driver + Pipeline (decode, windows, profiles, close, "
        "persist, commit); "
        f"{args.dim}-d b64 events{'' if args.no_text else ' with text'}, 1h windows of "
        f"{args.per_window:,} events, {args.models} model(s)"
    )
    print("| events | windows closed | peak RSS MiB | RSS now MiB | events/s so far |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = r["events"] / r["seconds"] if r["seconds"] else 0.0
        print(
            f"| {r['events']:,} | {r.get('windows_closed', 0)} | {r['peak_rss_mb']:.1f} | "
            f"{r['rss_mb']:.1f} | {fmt(rate) if rate else '-'} |"
        )
    print(
        f"\npeak RSS after {last['events']:,} / after {base['events']:,}: {ratio:.3f} "
        f"({100 * (ratio - 1):+.1f} %)"
    )
    emit("memory", {"args": vars(args), "rows": rows, "ratio": ratio}, args.json)


if __name__ == "__main__":
    main()
