"""Benchmark 1: the sketch stage, embmon's WindowProfile.update against whylogs' EmbeddingMetric.

Same vectors (a seeded mixture of 20 clusters), same reference centroids (built by
``build_reference``, pca-centroids, cosine), same windows, for each dimension (384, 768, 1536):

  (a) whole windows as matrices: one ``update`` (embmon) / one ``why.log`` (whylogs) per window;
  (b) one event at a time, as a service would: embmon ``BufferedProfile.add`` per event (its
      per-request API: events reach the sketches in blocks), and for reference a bare
      ``WindowProfile.update`` with a 1-row ``EventBatch`` per event (the agent itself always
      hands a whole poll to ``update``); whylogs ``DatasetProfile.track(row=...)`` per event.

Every window starts from an empty profile and ends serialised (``to_bytes`` / whylogs'
``serialize``). whylogs needs numpy < 2, so it runs in its own venv (made here by
``bench/whylogs_env.sh``) through ``bench/whylogs_worker.py``; both sides run one after the
other on the same machine, with BLAS pinned to ``--threads`` threads on both sides.

usage: python bench/sketch_vs_whylogs.py [--quick] [--dims 384,768,1536] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, best_rate, emit, fmt, make_reference, mixture, side_python

from sketches.batch import EventBatch
from sketches.buffer import BufferedProfile
from sketches.reference import Reference


def whylogs_python(path: str | None) -> str:
    """The whylogs venv's interpreter, creating the venv (idempotent) unless one is given."""
    return side_python("whylogs_env.sh", "whylogs-venv", path)


def embmon_matrix(ref: Reference, x: np.ndarray, window: int) -> int:
    for start in range(0, len(x), window):
        profile = ref.new_profile()
        profile.update(EventBatch.from_vectors(x[start : start + window]))
        profile.to_bytes()
    return len(x)


def embmon_events(ref: Reference, x: np.ndarray, window: int) -> int:
    for start in range(0, len(x), window):
        buffered = BufferedProfile(ref.new_profile())
        for i in range(start, min(start + window, len(x))):
            buffered.add(x[i])
        buffered.profile.to_bytes()
    return len(x)


def embmon_events_unbuffered(ref: Reference, x: np.ndarray, window: int) -> int:
    for start in range(0, len(x), window):
        profile = ref.new_profile()
        for i in range(start, min(start + window, len(x))):
            profile.update(EventBatch.from_vectors(x[i : i + 1]))
        profile.to_bytes()
    return len(x)


def run_whylogs(
    py: str, data: Path, mode: str, window: int, events: int, repeats: int, threads: int
) -> dict[str, Any]:
    env = {**os.environ, **blas_env(threads)}
    cmd = [py, str(ROOT / "bench" / "whylogs_worker.py"), "--data", str(data), "--mode", mode]
    cmd += ["--window", str(window), "--events", str(events), "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def blas_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {"OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--dims", default="384,768,1536")
    parser.add_argument("--centroids", type=int, default=20)
    parser.add_argument("--window", type=int, default=5000, help="events per window")
    parser.add_argument("--event-window", type=int, default=1000, help="events per window, (b)")
    parser.add_argument("--matrix-events", type=int, default=100_000)
    parser.add_argument("--event-events", type=int, default=20_000, help="embmon, mode (b)")
    parser.add_argument("--whylogs-event-events", type=int, default=1_000, help="whylogs, (b)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads, both sides")
    parser.add_argument("--whylogs-python", default=os.environ.get("WHYLOGS_PYTHON"))
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()
    if args.quick:
        args.matrix_events, args.event_events, args.whylogs_event_events = 20_000, 4_000, 200
        args.window, args.event_window, args.repeats = 2_000, 200, 2
    if os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        # BLAS reads its thread count at import: re-run this script with it set.
        env = {**os.environ, **blas_env(args.threads)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    py = whylogs_python(args.whylogs_python)
    dims = [int(d) for d in args.dims.split(",")]
    rows = []
    for dim in dims:
        ref = make_reference(dim, args.centroids)
        n = max(args.matrix_events, args.event_events)
        x, _ = mixture(n, dim, args.centroids, seed=42)
        with tempfile.TemporaryDirectory(prefix="embmon-bench-") as tmp:
            data = Path(tmp)
            np.save(data / "vectors.npy", x)
            np.save(data / "centroids.npy", ref.space.centroids)
            (data / "labels.json").write_text(json.dumps(list(ref.space.labels)))
            wl_matrix = run_whylogs(
                py, data, "matrix", args.window, args.matrix_events, args.repeats, args.threads
            )
            wl_event = run_whylogs(
                py,
                data,
                "event",
                args.event_window,
                args.whylogs_event_events,
                args.repeats,
                args.threads,
            )
        xm, xe = x[: args.matrix_events], x[: args.event_events]
        em_matrix, em_matrix_all = best_rate(
            lambda xm=xm, ref=ref: embmon_matrix(ref, xm, args.window), args.repeats
        )
        em_event, em_event_all = best_rate(
            lambda xe=xe, ref=ref: embmon_events(ref, xe, args.event_window), args.repeats
        )
        xu = x[: args.event_events // 4]
        em_unbuffered, _ = best_rate(
            lambda xu=xu, ref=ref: embmon_events_unbuffered(ref, xu, args.event_window),
            args.repeats,
        )
        wl_m = max(wl_matrix["api"]["best"], wl_matrix["metric"]["best"])
        wl_e = max(wl_event["api"]["best"], wl_event["metric"]["best"])
        rows.append(
            {
                "dim": dim,
                "centroids": args.centroids,
                "window": args.window,
                "embmon_matrix": em_matrix,
                "embmon_matrix_rates": em_matrix_all,
                "whylogs_matrix_api": wl_matrix["api"]["best"],
                "whylogs_matrix_metric": wl_matrix["metric"]["best"],
                "ratio_matrix": em_matrix / wl_m,
                "embmon_event": em_event,
                "embmon_event_rates": em_event_all,
                "whylogs_event_api": wl_event["api"]["best"],
                "whylogs_event_metric": wl_event["metric"]["best"],
                "ratio_event": em_event / wl_e,
                "embmon_event_unbuffered": em_unbuffered,
                "ratio_event_unbuffered": em_unbuffered / wl_e,
                "whylogs_versions": {"whylogs": wl_matrix["whylogs"], "numpy": wl_matrix["numpy"]},
            }
        )
        print(f"d={dim} done", file=sys.stderr)

    print(
        f"\nSketch stage, vectors/s (best of {args.repeats}); {args.centroids} centroids, cosine, "
        f"windows of {args.window:,} (a) and {args.event_window:,} (b); BLAS threads {args.threads}; ratio = embmon / the faster "
        "whylogs call"
    )
    head = (
        "| dim | mode | embmon | whylogs why.log/track | whylogs EmbeddingMetric direct | ratio |"
    )
    print(head + "\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['dim']} | (a) whole windows | {fmt(r['embmon_matrix'])} | "
            f"{fmt(r['whylogs_matrix_api'])} | {fmt(r['whylogs_matrix_metric'])} | "
            f"{r['ratio_matrix']:.1f}x |"
        )
        print(
            f"| {r['dim']} | (b) one event at a time | {fmt(r['embmon_event'])} | "
            f"{fmt(r['whylogs_event_api'])} | {fmt(r['whylogs_event_metric'])} | "
            f"{r['ratio_event']:.0f}x |"
        )
        print(
            f"| {r['dim']} | (b) 1-row WindowProfile.update | {fmt(r['embmon_event_unbuffered'])} | "
            f"{fmt(r['whylogs_event_api'])} | {fmt(r['whylogs_event_metric'])} | "
            f"{r['ratio_event_unbuffered']:.0f}x |"
        )
    emit("sketch_vs_whylogs", {"args": vars(args), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
