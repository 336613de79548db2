"""Benchmark 4: how cost grows with the work: centroids, dimensions, open windows.

One table, one row per configuration, each measured in a fresh process (so memory figures do
not inherit another configuration's heap):

  centroids 5 -> 200 (384-d)      sketch stage (WindowProfile.update), 5,000-row batches
  dimensions 64 -> 1536 (20 c.)   the same
  open windows 1 -> 1000          the agent's path (agent.driver.Driver over a Pipeline, fed
                                  2,000-record polls of 384-d embedding_b64 events) with the
                                  events of every poll spread over that many open windows, none
                                  closing until the end

Columns: throughput (vectors or events/s, best of ``--repeats``), memory per open window (RSS
growth while ``--profiles`` profiles of 2,000 events each are held, divided by their number;
for the open-windows rows, RSS growth with all windows open divided by their number), and the
serialised size of one window's profile.

usage: python bench/scaling.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

import numpy as np
import orjson
from common import T0, best_rate, emit, fmt, make_reference, mixture, rss_mb

from agent.source import ChunkSource

CENTROIDS = (5, 20, 50, 100, 200)
DIMS = (64, 128, 384, 768, 1536)
OPEN_WINDOWS = (1, 10, 100, 1000)


def sketch_stage(dim: int, centroids: int, repeats: int, profiles: int) -> dict[str, Any]:
    from sketches.batch import EventBatch

    ref = make_reference(dim, centroids)
    x, _ = mixture(50_000, dim, centroids, seed=3)

    def run() -> int:
        for start in range(0, len(x), 5_000):
            ref.new_profile().update(EventBatch.from_vectors(x[start : start + 5_000]))
        return len(x)

    # Memory first, in a fresh heap: held profiles must not reuse what a throughput run freed
    # (one update before, so its one-off buffers are not counted).
    ref.new_profile().update(EventBatch.from_vectors(x[:2_000]))
    gc.collect()
    before = rss_mb()
    held = []
    for i in range(profiles):
        profile = ref.new_profile()
        start = (i * 2_000) % (len(x) - 2_000)
        profile.update(EventBatch.from_vectors(x[start : start + 2_000]))
        held.append(profile)
    growth = rss_mb() - before
    size = len(held[0].to_bytes())
    del held
    rate, _ = best_rate(run, repeats)
    return {"rate": rate, "rss_growth_mib": growth, "windows": profiles, "bytes": size}


def open_windows(windows: int, repeats: int) -> dict[str, Any]:
    from agent.decode import Decoder
    from agent.driver import Driver
    from agent.ledger import prepare_out
    from agent.pipeline import Pipeline
    from agent.source import RawRecord

    ref = make_reference(384, 20)
    x, _ = mixture(4_000, 384, 20, seed=3)
    blobs = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in x]
    n = max(100_000, 40 * windows)
    rng = np.random.default_rng(5)
    hours = rng.integers(0, windows, n)
    partition = ("bench", 0)
    records = [
        RawRecord(
            orjson.dumps(
                {
                    "timestamp": T0 + 3600.0 * int(h) + float(i % 3600),
                    "embedding_b64": blobs[i % 4000],
                }
            ),
            timestamp=-1,
            offset=i,
            topic=partition[0],
        )
        for i, h in enumerate(hours.tolist())
    ]
    rss_open = 0.0

    def run() -> int:
        nonlocal rss_open
        with tempfile.TemporaryDirectory(prefix="embmon-bench-scale-") as out:
            pipeline = Pipeline(
                ref, Decoder(384), window=timedelta(hours=1), out_dir=prepare_out(out),
                lateness=timedelta(hours=windows + 1),
            )  # fmt: skip
            polls = (records[start : start + 2_000] for start in range(0, n, 2_000))
            source = ChunkSource(polls, partition)
            driver = Driver(pipeline, source, poll_timeout_ms=0)
            while source.position < n:
                driver.turn()
            assert pipeline.store.open_windows == windows, pipeline.store.open_windows
            rss_open = max(rss_open, rss_mb())
            driver.run()  # the source is exhausted: closes every window, commits
            assert source.finished() and pipeline.store.open_windows == 0
        return n

    gc.collect()
    before = rss_mb()
    rate, _ = best_rate(run, repeats)
    return {"rate": rate, "rss_growth_mib": rss_open - before, "windows": windows, "events": n}


def one(kind: str, value: int, repeats: int, profiles: int) -> None:
    if kind == "centroids":
        result = sketch_stage(384, value, repeats, profiles)
    elif kind == "dims":
        result = sketch_stage(value, 20, repeats, profiles)
    else:
        result = open_windows(value, repeats)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer points, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profiles", type=int, default=100, help="profiles held for memory")
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "VALUE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], int(args.one[1]), args.repeats, args.profiles)
        return
    grid = {"centroids": CENTROIDS, "dims": DIMS, "open windows": OPEN_WINDOWS}
    if args.quick:
        grid = {"centroids": (5, 50), "dims": (64, 768), "open windows": (1, 100)}
        args.repeats, args.profiles = 1, 20
    rows = []
    for kind, values in grid.items():
        for value in values:
            started = time.perf_counter()
            cmd = [sys.executable, __file__, "--one", kind.split()[0], str(value)]
            cmd += ["--repeats", str(args.repeats), "--profiles", str(args.profiles)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"kind": kind, "value": value, **result})
            print(f"{kind} {value}: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    print(
        f"\nScaling (best of {args.repeats}); sketch stage = WindowProfile.update on 5,000-row "
        "batches, open windows = Driver + Pipeline over 2,000-record polls (384-d, 20 centroids)"
    )
    print("| varied | value | fixed | throughput /s | µs per vector | RSS growth MiB (windows "
          "open) | MiB per open window | profile bytes |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    fixed = {"centroids": "384-d", "dims": "20 centroids", "open windows": "384-d, 20 c."}
    for r in rows:
        size = f"{r['bytes']:,}" if "bytes" in r else "-"
        print(
            f"| {r['kind']} | {r['value']:,} | {fixed[r['kind']]} | {fmt(r['rate'])} | "
            f"{1e6 / r['rate']:.2f} | {r['rss_growth_mib']:.1f} ({r['windows']:,}) | "
            f"{r['rss_growth_mib'] / r['windows']:.3f} | {size} |"
        )
    emit("scaling", {"args": vars(args), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
