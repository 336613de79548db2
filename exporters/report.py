"""HTML + PNG report of any run or replay, drawn from ``windows.jsonl`` alone.

The seed article makes its case with three charts (closest-centroid mix, frequent terms, F1);
this module draws them, plus each drift score against its threshold, for every (model, segment)
found in a windows log, so a backtest reads like the seed without a hosted dashboard. The page
is self-contained (PNGs inlined as base64) and the PNGs are also written next to it.

Each window is shown as its last record in the log (``windows_log.last_per_key``): a window an
evaluator emitted partial and later complete shows once, complete. A window whose last record
is still partial is marked ``partial`` in its table row and on the charts' window axis.

>>> import tempfile
>>> from exporters.records import SegmentKey
>>> from sketches.drift import DriftResult
>>> record = WindowRecord(
...     model="m", segment=SegmentKey(), start=1_795_132_800, end=1_795_219_200, events=3,
...     drift={"closest_centroid": DriftResult("hellinger", 0.1, 0.2, False)},
...     closest_centroid={"a": 0.5, "b": 0.5}, centroid_distance={}, reference="")
>>> out = Path(tempfile.mkdtemp())
>>> render_report([record], out).name
'index.html'
>>> sorted(p.name for p in out.glob("*.png"))
['m-closest_centroid.png', 'm-drift.png']
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
from matplotlib.figure import Figure

from exporters.records import WindowRecord
from exporters.report_charts import (
    Timeline,
    classification_chart,
    closest_centroid_chart,
    drift_chart,
    frequent_terms_chart,
    prediction_chart,
)
from exporters.windows_log import last_per_key, latest_windows
from sketches.errors import FormatError

__all__ = ["main", "render_report", "write_report"]

_CHARTS: tuple[tuple[str, str, str, Callable[[Timeline], Figure | None], str], ...] = (
    (
        "closest_centroid",
        "Closest centroid",
        "Share of events whose nearest reference centroid is each topic (the seed's Figure 3). "
        "A change in this mix is what the <code>closest_centroid</code> drift metric measures.",
        closest_centroid_chart,
        "No window carries closest-centroid shares.",
    ),
    (
        "predictions",
        "Predicted classes",
        "Share of events by predicted class: a drift signal that needs no ground truth.",
        prediction_chart,
        "No window carries predictions (events had no <code>prediction</code> field).",
    ),
    (
        "frequent_terms",
        "Frequent terms",
        "The most frequent terms across the period and how often each window used them "
        "(the seed's Figure 4). New terms at the top of the list are new vocabulary.",
        frequent_terms_chart,
        "No window carries frequent terms (events had no <code>text</code> or "
        "<code>tokens</code>).",
    ),
    (
        "classification",
        "Classification quality",
        "Macro F1 and accuracy per window, from events that carried both a prediction and a "
        "target (the seed's Figure 5).",
        classification_chart,
        "No window carries classification metrics (events had no <code>prediction</code> "
        "and <code>target</code> pair).",
    ),
    (
        "drift",
        "Drift scores",
        "Each drift metric's score per window against its calibrated threshold; red bars "
        "crossed it, grey bars had too few events to judge.",
        drift_chart,
        "No window carries drift results.",
    ),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.3rem;margin-top:2.5rem}
h3{margin:1.8rem 0 .3rem}.meta,.caption{color:#555}.note{color:#8a6d3b;background:#fcf8e3;
padding:.5rem .8rem;border-radius:4px}img{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:.88rem;margin:.8rem 0}
th,td{border-bottom:1px solid #e3e3e3;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.drifted td{background:#fdf1f1}.badge{color:#fff;background:#d62728;border-radius:3px;
padding:0 .35rem;font-size:.8rem}.badge.partial{background:#8a6d3b}tr.partial td{font-style:italic}
code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
"""


def render_report(
    records: Iterable[WindowRecord], out_dir: Path, title: str = "embmon drift report"
) -> Path:
    """Write ``index.html`` and one PNG per chart and (model, segment) into ``out_dir``.

    ``records`` may hold several records of a window (as a windows.jsonl may): the last stands.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _group(records)
    body: list[str] = [f"<h1>{html.escape(title)}</h1>", _overview(groups)]
    slugs: set[str] = set()
    sections = {
        key: (
            _unique(_slug(f"{key[0]}-{key[1]}" if key[1] else key[0]), slugs),
            html.escape(key[0] + (f" · {key[1]}" if key[1] else "")),
        )
        for key in groups
    }
    if len(groups) > 1:
        links = "".join(
            f'<li><a href="#{slug}">{heading}</a></li>' for slug, heading in sections.values()
        )
        body.append(f"<ul>{links}</ul>")
    for key, timeline in groups.items():
        slug, heading = sections[key]
        body.append(f'<h2 id="{slug}">Model {heading}</h2>')
        body.append(_summary_table(timeline))
        for name, chart_title, caption, build, missing in _CHARTS:
            body.append(f"<h3>{chart_title}</h3>")
            figure = build(timeline)
            if figure is None:
                body.append(f'<p class="note">{missing}</p>')
                continue
            png = _png(figure)
            (out_dir / f"{slug}-{name}.png").write_bytes(png)
            inline = base64.b64encode(png).decode("ascii")
            body.append(f'<p class="caption">{caption}</p>')
            body.append(
                f'<img alt="{chart_title}, {heading}" src="data:image/png;base64,{inline}">'
            )
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def write_report(windows_jsonl: Path, out_dir: Path) -> Path:
    """``embmon report``: the report of one windows log; returns the ``index.html`` path."""
    try:
        records = latest_windows(windows_jsonl)
    except orjson.JSONDecodeError as error:
        raise FormatError(
            f"{windows_jsonl}: a line is not valid JSON ({error}); is this a windows.jsonl file?"
        ) from error
    except FormatError as error:
        raise FormatError(f"{windows_jsonl}: {error}") from error
    return render_report(records, out_dir, f"embmon report: {windows_jsonl.name}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``embmon report`` (also ``python -m exporters.report``)."""
    parser = argparse.ArgumentParser(
        prog="embmon report", description="HTML + PNG charts of a run or replay's windows.jsonl."
    )
    parser.add_argument(
        "--windows",
        type=Path,
        default=os.environ.get("EMBMON_REPORT_WINDOWS"),
        required="EMBMON_REPORT_WINDOWS" not in os.environ,
        help="windows.jsonl written by `embmon run` or `embmon replay` (env EMBMON_REPORT_WINDOWS)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=os.environ.get("EMBMON_REPORT_OUT"),
        required="EMBMON_REPORT_OUT" not in os.environ,
        help="directory for index.html and the PNGs (env EMBMON_REPORT_OUT)",
    )
    args = parser.parse_args(argv)
    print(write_report(Path(args.windows), Path(args.out)))
    return 0


def _group(records: Iterable[WindowRecord]) -> dict[tuple[str, str], Timeline]:
    """Windows per (model, segment label), in time order, the last record of each window;
    groups in first-seen order."""
    grouped: dict[tuple[str, str], list[WindowRecord]] = {}
    for record in last_per_key(records):
        grouped.setdefault((record.model or "default", record.segment.label), []).append(record)
    return {
        key: Timeline(sorted(windows, key=lambda w: w.start)) for key, windows in grouped.items()
    }


def _overview(groups: Mapping[tuple[str, str], Timeline]) -> str:
    windows = [w for t in groups.values() for w in t.windows]
    if not windows:
        return '<p class="note">The input holds no windows: nothing to chart yet.</p>'
    drifted = sum(w.drifted for w in windows)
    partial = sum(not w.complete for w in windows)
    references = sorted({w.reference for w in windows if w.reference})
    lines = [
        f"{len(windows)} windows of {len(groups)} model/segment series, "
        f"{_stamp(min(w.start for w in windows))} to {_stamp(max(w.end for w in windows))}; "
        f"<strong>{drifted}</strong> drifted.",
        'Window dates printed in <span style="color:#d62728;font-weight:bold">red</span> '
        "are windows where at least one drift metric crossed its threshold.",
    ]
    if partial:
        lines.append(
            f"<strong>{partial}</strong> partial: evaluated after the grace period without every "
            "collector's part, so judged on fewer events than the window had "
            '(marked <span class="badge partial">partial</span>, and "(partial)" on the charts).'
        )
    if references:
        lines.append(
            "Reference: " + ", ".join(f"<code>{html.escape(r)}</code>" for r in references)
        )
    return "".join(f'<p class="meta">{line}</p>' for line in lines)


def _summary_table(t: Timeline) -> str:
    head = "".join(
        f"<th>{name}</th>"
        for name in (
            "window start",
            "events",
            "drift",
            "metrics over threshold",
            "F1",
            "accuracy",
            "most frequent closest centroid",
            "top terms",
        )
    )
    rows = []
    for w in t.windows:
        quality = w.classification
        closest = w.closest_centroid
        top = max(closest, key=lambda name: closest[name]) if closest else None
        terms = " ".join(term for term, _ in w.frequent_terms[:5])
        start = html.escape(_stamp(w.start))
        if not w.complete:
            start += ' <span class="badge partial">partial</span>'
        cells = [
            _cell(start),
            _cell(str(w.events), numeric=True),
            _cell('<span class="badge">drift</span>' if w.drifted else ""),
            _cell(html.escape(", ".join(m for m, r in w.drift.items() if r.drifted))),
            _cell(_fmt(None if quality is None else quality.f1_macro), numeric=True),
            _cell(_fmt(None if quality is None else quality.accuracy), numeric=True),
            _cell(html.escape(f"{top} ({closest[top]:.0%})") if top is not None else "–"),
            _cell(html.escape(terms) or "–"),
        ]
        classes = " ".join(
            name for name, on in (("drifted", w.drifted), ("partial", not w.complete)) if on
        )
        klass = f' class="{classes}"' if classes else ""
        rows.append(f"<tr{klass}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _cell(content: str, numeric: bool = False) -> str:
    return f'<td class="num">{content}</td>' if numeric else f"<td>{content}</td>"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, facecolor="white")
    return buffer.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def _unique(slug: str, taken: set[str]) -> str:
    candidate, n = slug, 1
    while candidate in taken:
        n += 1
        candidate = f"{slug}-{n}"
    taken.add(candidate)
    return candidate


def _stamp(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


if __name__ == "__main__":
    raise SystemExit(main())
