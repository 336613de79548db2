"""Soak: ``embmon run`` on a hostile mix at full speed for as long as asked; RSS and series flat.

The run of ``tests/test_soak.py`` (45 s in the test command), for longer: an embedded broker,
two partitions, and the mix of ``tests/soak.py`` (a flood of new model and segment names past
the caps, far-future and long-past timestamps, malformed records of every kind, good events
whose event time runs on at about one one-minute window per second of the run). It prints a
sample every ``--sample-every`` seconds and, at the end, the largest RSS and series count of the
last third of the run (median RSS, largest series count) against the middle part (after a 40 % warm-up), with the event rates.

usage: python bench/soak.py [--duration 600] [--sample-every 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import emit, reference_dir  # noqa: E402

from demo.broker import EmbeddedBroker  # noqa: E402
from tests.broker import new_topic  # noqa: E402
from tests.soak import AGENT_FLAGS, flat, soak  # noqa: E402

DIM = 64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--json", help="write the raw result here")
    args = parser.parse_args()
    reference = reference_dir(DIM, 10)
    print(f"agent flags: {' '.join(AGENT_FLAGS)}")
    print(f"{'t (s)':>8} {'RSS (MB)':>9} {'series':>7} {'models':>6} {'pairs':>6} {'handled':>10}")
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = new_topic(broker.bootstrap_servers, 2, prefix="soak")
        samples = []
        for sample in soak(
            bootstrap=broker.bootstrap_servers,
            topic=topic,
            partitions=2,
            reference=reference,
            dim=DIM,
            out=Path(tmp) / "out",
            duration_s=args.duration,
            sample_every_s=args.sample_every,
        ):
            samples.append(sample)
            print(
                f"{sample.at_s:8.0f} {sample.rss_mb:9.1f} {sample.series:7d} {sample.handled:10d}"
            )
    figures = flat(samples)
    print(
        f"RSS {figures['rss_mb_middle']:.1f} -> {figures['rss_mb_last']:.1f} MB "
        f"(x{figures['rss_mb_last'] / figures['rss_mb_middle']:.3f}); "
        f"series {figures['series_middle']:.0f} -> {figures['series_last']:.0f}; "
        f"{figures['rate_middle']:.0f} -> {figures['rate_last']:.0f} records/s"
    )
    emit(
        "soak",
        {"duration_s": args.duration, "figures": figures, "samples": [s.__dict__ for s in samples]},
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
