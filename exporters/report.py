"""HTML + PNG report of any run or replay, drawn from ``windows.jsonl`` alone.

The seed article makes its case with three charts (closest-centroid mix, frequent terms, F1);
this module draws them, plus each drift score against its threshold, for every (model, segment)
found in a windows log, so a backtest reads like the seed without a hosted dashboard. The page
is self-contained (PNGs inlined as base64) and the PNGs are also written next to it.

>>> import tempfile
>>> record = {"model": "m", "window_start": "2026-11-20T00:00:00Z",
...           "window_end": "2026-11-21T00:00:00Z", "events": 3, "drifted": False,
...           "drift": {"closest_centroid": {"statistic": "hellinger", "score": 0.1,
...                                          "threshold": 0.2, "drifted": False}},
...           "closest_centroid": {"a": 0.5, "b": 0.5}}
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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from matplotlib.figure import Figure

from exporters.report_charts import (
    Timeline,
    classification_chart,
    closest_centroid_chart,
    drift_chart,
    frequent_terms_chart,
    prediction_chart,
)
from sketches.errors import FormatError

__all__ = ["Window", "load_windows", "main", "render_report", "write_report"]

Window = Mapping[str, Any]
"""One ``windows.jsonl`` record (docs/contracts.md)."""

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
padding:0 .35rem;font-size:.8rem}code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
"""


def load_windows(path: Path) -> list[dict[str, Any]]:
    """Read a ``windows.jsonl`` file (blank lines skipped; any other bad line is an error)."""
    records: list[dict[str, Any]] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise FormatError(
                    f"{path}:{number}: not valid JSON ({error}); is this a windows.jsonl file?"
                ) from error
            if not isinstance(record, dict) or "window_start" not in record:
                raise FormatError(
                    f"{path}:{number}: expected a window record with 'window_start' "
                    "(see docs/contracts.md)"
                )
            records.append(record)
    return records


def render_report(
    records: Iterable[Window], out_dir: Path, title: str = "embmon drift report"
) -> Path:
    """Write ``index.html`` and one PNG per chart and (model, segment) into ``out_dir``."""
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
    return render_report(
        load_windows(windows_jsonl), out_dir, f"embmon report: {windows_jsonl.name}"
    )


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


def _group(records: Iterable[Window]) -> dict[tuple[str, str], Timeline]:
    """Windows per (model, canonical segment), in time order; groups in first-seen order."""
    grouped: dict[tuple[str, str], list[Window]] = {}
    for record in records:
        if "window_start" not in record:
            raise FormatError("a window record lacks 'window_start' (see docs/contracts.md)")
        segment = record.get("segment") or {}
        key = (
            str(record.get("model") or "default"),
            ",".join(f"{k}={segment[k]}" for k in sorted(segment)),
        )
        grouped.setdefault(key, []).append(record)
    return {
        key: Timeline(sorted(windows, key=lambda w: datetime.fromisoformat(w["window_start"])))
        for key, windows in grouped.items()
    }


def _overview(groups: Mapping[tuple[str, str], Timeline]) -> str:
    windows = [w for t in groups.values() for w in t.windows]
    if not windows:
        return '<p class="note">The input holds no windows: nothing to chart yet.</p>'
    starts = [datetime.fromisoformat(w["window_start"]) for w in windows]
    ends = [
        datetime.fromisoformat(w["window_end"]) if "window_end" in w else s
        for w, s in zip(windows, starts, strict=True)
    ]
    drifted = sum(bool(w.get("drifted")) for w in windows)
    references = sorted({str(w["reference"]) for w in windows if w.get("reference")})
    lines = [
        f"{len(windows)} windows of {len(groups)} model/segment series, "
        f"{_stamp(min(starts))} to {_stamp(max(ends))}; "
        f"<strong>{drifted}</strong> drifted.",
        'Window dates printed in <span style="color:#d62728;font-weight:bold">red</span> '
        "are windows where at least one drift metric crossed its threshold.",
    ]
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
        drift = w.get("drift") or {}
        classification = w.get("classification") or {}
        closest = w.get("closest_centroid") or {}
        top = max(closest, key=lambda name: closest[name]) if closest else None
        terms = " ".join(str(term) for term, _ in (w.get("frequent_terms") or [])[:5])
        cells = [
            _cell(html.escape(_stamp(datetime.fromisoformat(w["window_start"])))),
            _cell(str(int(w.get("events") or 0)), numeric=True),
            _cell('<span class="badge">drift</span>' if w.get("drifted") else ""),
            _cell(html.escape(", ".join(m for m, r in drift.items() if (r or {}).get("drifted")))),
            _cell(_fmt(classification.get("f1_macro")), numeric=True),
            _cell(_fmt(classification.get("accuracy")), numeric=True),
            _cell(html.escape(f"{top} ({closest[top]:.0%})") if top is not None else "–"),
            _cell(html.escape(terms) or "–"),
        ]
        klass = ' class="drifted"' if w.get("drifted") else ""
        rows.append(f"<tr{klass}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _cell(content: str, numeric: bool = False) -> str:
    return f'<td class="num">{content}</td>' if numeric else f"<td>{content}</td>"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "–"


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


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") + (
        " UTC" if moment.utcoffset() == timedelta(0) else ""
    )


if __name__ == "__main__":
    raise SystemExit(main())
