"""The whylogs side of bench/sketch_vs_whylogs.py; runs INSIDE the whylogs 1.6.4 venv (numpy<2).

It never imports embmon. It reads the vectors and the reference centroids the embmon side wrote
(``.npy`` files, plus labels as JSON), profiles windows with whylogs' ``EmbeddingMetric``
exactly as embmon profiles them (same vectors, same centroids, cosine, same window size), and
prints one JSON line of rates. Each window ends with its profile serialised, as embmon's does.

Two ways to call whylogs, both timed:
  api     the documented API: ``why.log(row={"emb": M}, schema=...)`` for a whole window,
          a ``DatasetProfile.track(row={"emb": v})`` per event for one event at a time;
  metric  ``EmbeddingMetric.columnar_update`` called directly (no schema/profile layer):
          whylogs' own floor.

usage: python whylogs_worker.py --data DIR --mode matrix|event --window N --events N --repeats R
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--mode", choices=("matrix", "event"), required=True)
    parser.add_argument("--window", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import whylogs as why
    from whylogs.core import DatasetProfile
    from whylogs.core.preprocessing import PreprocessedColumn
    from whylogs.core.resolvers import MetricSpec, ResolverSpec
    from whylogs.core.schema import DeclarativeSchema
    from whylogs.experimental.extras.embedding_metric import (
        DistanceFunction,
        EmbeddingConfig,
        EmbeddingMetric,
    )

    data = Path(args.data)
    vectors = np.load(data / "vectors.npy")[: args.events]
    refs = np.load(data / "centroids.npy")
    labels = json.loads((data / "labels.json").read_text())
    cfg = EmbeddingConfig(references=refs, labels=labels, distance_fn=DistanceFunction.cosine)
    schema = DeclarativeSchema(
        [ResolverSpec(column_name="emb", metrics=[MetricSpec(EmbeddingMetric, cfg)])]
    )
    windows = [vectors[s : s + args.window] for s in range(0, len(vectors), args.window)]

    def api_matrix() -> int:
        for w in windows:
            why.log(row={"emb": w}, schema=schema).view().serialize()
        return len(vectors)

    def metric_matrix() -> int:
        for w in windows:
            metric = EmbeddingMetric.zero(cfg)
            metric.columnar_update(PreprocessedColumn.apply([w]))
            metric.to_protobuf().SerializeToString()
        return len(vectors)

    def api_event() -> int:
        for w in windows:
            profile = DatasetProfile(schema=schema)
            for v in w:
                profile.track(row={"emb": v})
            profile.view().serialize()
        return len(vectors)

    def metric_event() -> int:
        for w in windows:
            metric = EmbeddingMetric.zero(cfg)
            for v in w:
                metric.columnar_update(PreprocessedColumn.apply([v]))
            metric.to_protobuf().SerializeToString()
        return len(vectors)

    runs = (
        {"api": api_matrix, "metric": metric_matrix}
        if args.mode == "matrix"
        else {"api": api_event, "metric": metric_event}
    )
    # Check once that whylogs saw every vector (the count of one centroid's distances).
    check = EmbeddingMetric.zero(cfg)
    check.columnar_update(PreprocessedColumn.apply([windows[0]]))
    seen = check.to_summary_dict()[f"{sorted(labels)[0]}_distance:distribution/n"]
    assert seen == len(windows[0]), (seen, len(windows[0]))

    out: dict[str, object] = {
        "whylogs": why.__version__,
        "numpy": np.__version__,
        "events": len(vectors),
    }
    for name, run in runs.items():
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            n = run()
            rates.append(n / (time.perf_counter() - start))
        out[name] = {"best": max(rates), "rates": rates}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
