"""The ``embmon`` command: reference build / fetch, replay, run, demo, report."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from sketches.batch import EventBatch
from sketches.errors import EmbmonError
from sketches.geometry import DEFAULT_PROBES
from sketches.reference import METHODS, Method, Reference, build_reference

from .allocator import keep_freed_memory
from .config import add_settings_flags
from .durations import parse_duration
from .fields import FieldMap
from .progress import Progress
from .window_caps import Caps

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embmon", description="Embedding drift monitoring: Kafka in, Prometheus out."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    ref = commands.add_parser("reference", help="build a reference, or fetch a built one")
    ref_commands = ref.add_subparsers(dest="reference_command", required=True)
    build = ref_commands.add_parser(
        "build", help="fit centroids and PCA, profile, calibrate thresholds"
    )
    build.add_argument("--input", required=True, help=".npy matrix, or .jsonl/.parquet events")
    build.add_argument("--labels", help=".npy (or one-per-line .txt) labels of the .npy rows")
    build.add_argument(
        "--field", action="append", default=[], help="event field mapping NAME=PATH (events input)"
    )
    build.add_argument(
        "--label-field", default="target", help="event field holding the label (events input)"
    )
    build.add_argument("--method", choices=METHODS, default="pca-centroids")
    build.add_argument("--components", type=int, default=20, help="PCA components")
    build.add_argument(
        "--probes",
        type=int,
        default=DEFAULT_PROBES,
        help="random projections of the residual off the PCA subspace kept in each window's "
        "sample (0: none; each costs 2 kB a window)",
    )
    build.add_argument("--clusters", type=int, default=8, help="clusters for kmeans / pca-kmeans")
    build.add_argument("--centroids", help=".npy centroid matrix for --method manual")
    build.add_argument("--distance", choices=("cosine", "euclidean"), default="cosine")
    build.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="false-alarm rate per window (all metrics together)",
    )
    build.add_argument(
        "--statistic",
        choices=("hellinger", "psi", "jensen_shannon"),
        default="hellinger",
        help="statistic for categorical distributions",
    )
    build.add_argument(
        "--rounds", type=int, default=300, help="bootstrap windows per calibrated size"
    )
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", required=True, help="directory to write the reference to")
    _fetch_flags(
        ref_commands.add_parser("fetch", help="download, verify and unpack a reference .tar.gz")
    )

    rep = commands.add_parser("replay", help="window a file of events against a reference")
    rep.add_argument("--reference", required=True)
    rep.add_argument("--input", required=True, help=".jsonl[.gz] or .parquet events")
    rep.add_argument("--window", default="1d")
    rep.add_argument("--lateness", help="allowed lateness (default: one window)")
    rep.add_argument("--out", required=True)
    rep.add_argument("--field", action="append", default=[], help="event field mapping NAME=PATH")
    rep.add_argument("--segment-keys", default="", help="comma-separated segment keys to keep")
    rep.add_argument(
        "--openmetrics", help="also write the series with timestamps to this OpenMetrics file"
    )
    rep.add_argument(
        "--no-term-labels",
        dest="term_labels",
        action="store_false",
        help="write no frequent terms as label values to --openmetrics (no event text leaves)",
    )
    rep.add_argument("--quiet", action="store_true", help="no table, no progress")
    caps = Caps()
    rep.add_argument(
        "--max-models", type=int, default=caps.max_models, help="models windowed, then 'other'"
    )
    rep.add_argument(
        "--max-segments",
        type=int,
        default=caps.max_segments,
        help="segments windowed per model, then 'other'",
    )
    rep.add_argument(
        "--max-open-windows",
        type=int,
        default=caps.max_windows,
        help="windows open at once; events needing more are rejected",
    )
    rerun = rep.add_mutually_exclusive_group()
    rerun.add_argument(
        "--overwrite", action="store_true", help="replace the output of an earlier run in --out"
    )
    rerun.add_argument(
        "--resume", action="store_true", help="continue the earlier run whose output is in --out"
    )

    run = commands.add_parser("run", help="the streaming agent: Kafka in, Prometheus out")
    add_settings_flags(run)

    demo = commands.add_parser("demo", help="the seed article's story on an embedded broker")
    demo.add_argument("--out", default="embmon-demo")
    demo.add_argument(
        "--serve", action="store_true", help="keep /metrics up afterwards (Ctrl-C to stop)"
    )
    demo.add_argument("--metrics-port", type=int, default=9808)
    demo.add_argument("--docs-per-day", type=int, default=300)
    demo.add_argument("--quick", action="store_true", help="smaller data, same steps (tests)")

    report = commands.add_parser("report", help="HTML + PNG charts of a windows.jsonl")
    report.add_argument("--windows", required=True)
    report.add_argument("--out", required=True)
    return parser


def _fetch_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``embmon reference fetch`` (here, so that only a fetch imports urllib,
    http.client and tarfile: agent.reference_fetch)."""
    parser.add_argument("--url", required=True, help="http://, https:// or file:// .tar.gz")
    parser.add_argument("--out", required=True, help="directory to put the reference in")
    parser.add_argument("--sha256", help="expected sha256 of the archive (refused otherwise)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait on the server per read"
    )


def _field_map(pairs: list[str]) -> FieldMap:
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        raise EmbmonError(f"--field takes NAME=PATH, got {bad[0]!r}")
    return FieldMap.from_mapping(dict(pair.split("=", 1) for pair in pairs))


def _load_labels(path: str) -> np.ndarray[Any, Any]:
    if path.endswith(".npy"):
        return np.asarray(np.load(path, allow_pickle=False)).astype(str)
    return np.asarray(Path(path).read_text().splitlines())


def _reference_fetch(args: argparse.Namespace) -> int:
    """``embmon reference fetch``: one line saying what was placed (errors: the caller's)."""
    from .reference_fetch import fetch_reference, shown_url

    fetched = fetch_reference(args.url, args.out, sha256=args.sha256, timeout_s=args.timeout)
    check = "verified" if fetched.verified else "not verified: pin it with --sha256"
    print(
        f"reference {fetched.version} fetched from {shown_url(args.url)} into {fetched.path}: "
        f"{fetched.size:,} bytes, sha256 {fetched.sha256} ({check})"
    )
    return 0


def _reference_build(args: argparse.Namespace) -> int:
    from .file_source import load_events

    if args.input.endswith(".npy"):
        batch = EventBatch.from_vectors(np.load(args.input, allow_pickle=False))
        labels = None if args.labels is None else _load_labels(args.labels)
    else:
        events = load_events(
            args.input, fields=_field_map(args.field), label_field=args.label_field
        )
        if events.rejects:
            print(f"skipped bad events: {dict(events.rejects)}", file=sys.stderr)
        batch = events.batch()
        labels = None
        if events.labels is not None and args.method == "pca-centroids":
            if any(label is None for label in events.labels):
                raise EmbmonError(f"some events lack the label field {args.label_field!r}")
            labels = np.asarray(events.labels)
    centroids = None if args.centroids is None else np.load(args.centroids, allow_pickle=False)
    progress = Progress("calibrating thresholds", total=1.0)
    reference = build_reference(
        batch,
        labels,
        method=cast(Method, args.method),
        components=args.components,
        probes=args.probes,
        clusters=args.clusters,
        distance=args.distance,
        alpha=args.alpha,
        statistic=args.statistic,
        centroids=centroids,
        rounds=args.rounds,
        seed=args.seed,
        progress=lambda done, total: progress.update(done / total),
    )
    progress.finish()
    out = reference.save(args.out)
    rows = reference.info["rows"]
    folds = f", profile/holdout scored out of fold ({rows['folds']} folds)" if rows["folds"] else ""
    print(
        f"reference {reference.version} written to {out}: {len(reference.labels)} centroids "
        f"({', '.join(reference.labels[:8])}{', …' if len(reference.labels) > 8 else ''}), "
        f"dim {reference.dim}, {reference.space.n_components} PCA components, "
        f"{reference.space.n_probes} residual probes, {reference.distance} distance; "
        f"rows fit/profile/holdout {rows['fit']}/{rows['profile']}/{rows['holdout']}{folds}; alpha {args.alpha}"
    )
    return 0


def _replay(args: argparse.Namespace) -> int:
    from exporters.table import HEADER, format_row

    from .replay import replay

    reference = Reference.load(args.reference)
    fields = _field_map(args.field)
    if not args.quiet:
        print(HEADER)
    summary = replay(
        reference,
        args.input,
        window=parse_duration(args.window),
        out_dir=args.out,
        lateness=None if args.lateness is None else parse_duration(args.lateness),
        fields=fields,
        segment_keys=tuple(k for k in args.segment_keys.split(",") if k),
        overwrite=args.overwrite,
        resume=args.resume,
        on_close=None if args.quiet else (lambda record: print(format_row(record), flush=True)),
        show_progress=not args.quiet,
        caps=Caps(args.max_models, args.max_segments, args.max_open_windows),
    )
    drifted = sum(1 for w in summary.windows if w.drifted)
    print(
        f"{len(summary.windows)} windows ({drifted} drifted), {summary.events:,} events, "
        f"rejected {summary.rejected or 'none'}; wrote {summary.out / 'windows.jsonl'}"
    )
    if not summary.events and summary.rejected:
        raise EmbmonError(
            f"no event of {args.input} was accepted (rejected: {summary.rejected}); check the "
            f"field mapping (--field) and that the reference's dimension, {reference.dim}, is "
            "the events'"
        )
    if args.openmetrics:
        from exporters.openmetrics import write_openmetrics

        write_openmetrics(
            summary.windows,
            args.openmetrics,
            reference_f1=reference.classification_f1,
            term_labels=args.term_labels,
        )
        print(f"wrote {args.openmetrics}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from exporters.report import write_report

    index = write_report(Path(args.windows), Path(args.out))
    print(f"wrote {index}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    keep_freed_memory()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "reference":
            if args.reference_command == "fetch":
                return _reference_fetch(args)
            return _reference_build(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "report":
            return _report(args)
        if args.command == "run":
            from .run import run_from_args

            return run_from_args(vars(args))
        from demo.story import run_demo

        return run_demo(
            out=Path(args.out),
            serve=args.serve,
            metrics_port=args.metrics_port,
            docs_per_day=args.docs_per_day,
            quick=args.quick,
        )
    except (EmbmonError, ValueError, OSError) as exc:
        print(f"embmon: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
