"""All seven benchmarks, one after the other (``make bench``); figures go to BENCHMARKS.md by hand.

Each benchmark runs in its own process with BLAS pinned to one thread (the agent is one Python
process; pinning makes runs on a shared machine comparable), prints its table, and writes its
raw result to ``--out`` (default ``.cache/bench/results``) as JSON.

usage: python bench/run_all.py [--quick] [--only sketch,kafka,memory,scaling,scale_out,detection,replay] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = {
    "sketch": "sketch_vs_whylogs.py",
    "kafka": "kafka_e2e.py",
    "memory": "memory.py",
    "scaling": "scaling.py",
    "scale_out": "scale_out.py",
    "detection": "detection.py",
    "replay": "replay_vs_whylogs.py",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated subset")
    parser.add_argument("--out", default=str(BENCH.parent / ".cache" / "bench" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ}
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    failed = []
    for name in args.only.split(","):
        cmd = [sys.executable, str(BENCH / SCRIPTS[name]), "--json", str(out / f"{name}.json")]
        if args.quick:
            cmd.append("--quick")
        print(f"\n=== {' '.join(cmd)}", flush=True)
        started = time.perf_counter()
        code = subprocess.run(cmd, env=env).returncode
        print(f"=== {name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
