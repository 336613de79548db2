"""The whylogs side of bench/replay_vs_whylogs.py; runs INSIDE the whylogs 1.6.4 venv (numpy<2).

It never imports embmon. It does what ``embmon replay`` does with a JSONL file of events, the
way a competent whylogs user would write it: read the file line by line, decode each line's JSON
(orjson if importable, else the standard library's json; ``--json-lib`` to choose) and its
``embedding_b64`` (base64 of little-endian float32, checked to be ``--dim`` floats), group the
events into ``--window-s`` windows by ``timestamp`` (windows aligned to the epoch, as embmon's),
and close a window once event time has passed its end plus ``--lateness-s`` (embmon's default
lateness: one window), or at the end of the file. Closing a window is whylogs' best shot: the
window's raw float32 bytes joined into one matrix and one ``why.log(row={"emb": M})`` call with
the embedding metric against the reference centroids (``EmbeddingConfig``, cosine, exactly as
bench/whylogs_worker.py configures it), the profile serialised.

Prints one JSON line: events, windows (start, events), the JSON library, and where the time
went inside the process (decode vs whylogs, perf_counter).

usage: python whylogs_replay_worker.py --input FILE --centroids NPY --labels JSON --dim D
       [--window-s 3600] [--lateness-s 3600] [--json-lib auto|orjson|json]
"""

from __future__ import annotations

import argparse
import binascii
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--centroids", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--window-s", type=float, default=3600.0)
    parser.add_argument("--lateness-s", type=float, default=None, help="default: one window")
    parser.add_argument("--json-lib", choices=("auto", "orjson", "json"), default="auto")
    args = parser.parse_args()
    lateness = args.window_s if args.lateness_s is None else args.lateness_s

    if args.json_lib in ("auto", "orjson"):
        try:
            import orjson

            loads, json_lib = orjson.loads, f"orjson {orjson.__version__}"
        except ImportError:
            if args.json_lib == "orjson":
                raise
            loads, json_lib = json.loads, "json (stdlib)"
    else:
        loads, json_lib = json.loads, "json (stdlib)"

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import whylogs as why
    from whylogs.core.resolvers import MetricSpec, ResolverSpec
    from whylogs.core.schema import DeclarativeSchema
    from whylogs.experimental.extras.embedding_metric import (
        DistanceFunction,
        EmbeddingConfig,
        EmbeddingMetric,
    )

    refs = np.load(args.centroids)
    labels = json.loads(Path(args.labels).read_text())
    cfg = EmbeddingConfig(references=refs, labels=labels, distance_fn=DistanceFunction.cosine)
    schema = DeclarativeSchema(
        [ResolverSpec(column_name="emb", metrics=[MetricSpec(EmbeddingMetric, cfg)])]
    )
    imported = time.perf_counter()

    dim, width = args.dim, args.dim * 4
    a2b = binascii.a2b_base64
    open_windows: dict[float, list[bytes]] = {}
    closed: list[dict[str, Any]] = []
    log_s = 0.0
    first_view: Any = None

    def close(start: float) -> None:
        nonlocal log_s, first_view
        t = time.perf_counter()
        rows = open_windows.pop(start)
        matrix = np.frombuffer(b"".join(rows), dtype="<f4").reshape(len(rows), dim)
        view = why.log(row={"emb": matrix}, schema=schema).view()
        blob = view.serialize()
        log_s += time.perf_counter() - t
        if first_view is None:
            first_view = view
        closed.append({"start": start, "events": len(rows), "bytes": len(blob)})

    events = rejected = 0
    watermark = -math.inf
    with open(args.input, "rb") as lines:
        for line in lines:
            event = loads(line)
            raw = a2b(event["embedding_b64"])
            if len(raw) != width:
                rejected += 1
                continue
            ts = float(event["timestamp"])
            start = math.floor(ts / args.window_s) * args.window_s
            rows = open_windows.get(start)
            if rows is None:
                if start + args.window_s + lateness <= watermark:
                    rejected += 1  # late: its window is closed
                    continue
                rows = open_windows[start] = []
            rows.append(raw)
            events += 1
            if ts > watermark:
                watermark = ts
                for s in [s for s in open_windows if s + args.window_s + lateness <= ts]:
                    close(s)
    for s in sorted(open_windows):
        close(s)
    done = time.perf_counter()

    # whylogs saw every event of the first window (the count of one centroid's distances).
    metric = first_view.get_column("emb").get_metric("embedding")
    seen = metric.to_summary_dict()[f"{sorted(labels)[0]}_distance:distribution/n"]
    assert seen == closed[0]["events"], (seen, closed[0])
    print(
        json.dumps(
            {
                "whylogs": why.__version__,
                "numpy": np.__version__,
                "json_lib": json_lib,
                "events": events,
                "rejected": rejected,
                "windows": closed,
                "import_s": imported - started,
                "loop_s": done - imported,
                "whylogs_s": log_s,
                "read_decode_s": done - imported - log_s,
            }
        )
    )


if __name__ == "__main__":
    main()
