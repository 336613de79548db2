#!/usr/bin/env python3
"""Copy the files the embmon chart ships from their one source into helm/embmon/files/.

Helm reads only files inside the chart, so the PrometheusRule, the Grafana dashboards and the
Grafana alert rules come from byte-identical copies of the repository's sources (deploy/ is
the source; never edit a copy). Run it after changing a source:

    python3 helm/sync-files.py           # copy what changed
    python3 helm/sync-files.py --check   # only say which copies differ (exit 1 if any)

tests/test_helm.py fails while a copy differs from its source. Standard library only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "helm" / "embmon" / "files"

# Copy name in helm/embmon/files/ -> its source in the repository.
SOURCES = {
    "embmon-rules.yaml": "deploy/prometheus/embmon-rules.yaml",
    "embmon-drift.json": "deploy/grafana/generated/embmon-drift.json",
    "embmon-agent.json": "deploy/grafana/generated/embmon-agent.json",
    "embmon-alerts.yaml": "deploy/grafana/generated/embmon-alerts.yaml",
}


def stale() -> dict[str, str]:
    """Copies that differ from (or lack) their source: name -> why."""
    found = {}
    for name, source in SOURCES.items():
        src, copy = ROOT / source, FILES / name
        if not src.is_file():
            found[name] = f"its source {source} is missing"
        elif not copy.is_file():
            found[name] = "the copy is missing"
        elif copy.read_bytes() != src.read_bytes():
            found[name] = f"the copy differs from {source}"
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, copy nothing")
    args = parser.parse_args(argv)
    problems = stale()
    missing = 0
    for name, why in problems.items():
        source = ROOT / SOURCES[name]
        if args.check or not source.is_file():
            print(f"helm/embmon/files/{name}: {why}", file=sys.stderr)
            missing += 1
            continue
        FILES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, FILES / name)
        print(f"helm/embmon/files/{name} <- {SOURCES[name]}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
