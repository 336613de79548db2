"""The report's charts: one matplotlib figure per question a reader asks of a run.

Figures are built with the object API (``matplotlib.figure.Figure``, rendered by Agg on save),
never pyplot, so drawing a report changes no global backend state and is safe in any process.
Every chart puts windows on the x axis in time order, and prints the dates of drifted windows
in red, so the charts of one (model, segment) line up with each other and with the drift chart;
a partial window's date (see ``WindowRecord.complete``) says "(partial)", in italics.
Each builder returns ``None`` when no window carries its data, for the page to say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter
from matplotlib.transforms import ScaledTranslation

from exporters.records import Classification, WindowRecord

__all__ = [
    "Timeline",
    "classification_chart",
    "closest_centroid_chart",
    "drift_chart",
    "frequent_terms_chart",
    "prediction_chart",
]

_DRIFT = "#d62728"
_OK = "#4c78a8"
_MUTED = "#b8b8b8"
_SHADE = "#fbe3e3"
# tab20 without its reds (drift) and greys ("other", muted): 8 strong colours, then 8 light ones
_CATEGORY_COLOURS = [
    colormaps["tab20"](i) for i in (0, 2, 4, 8, 10, 12, 16, 18, 1, 3, 5, 9, 11, 13, 17, 19)
]
_MAX_CATEGORIES = 9  # beyond this, stacked bars fold the smallest shares into "other"
_MAX_TERMS = 15
_ANNOTATE_UP_TO = 14  # windows; more and the numbers in cells become unreadable
_MAX_TICKS = 16


@dataclass(frozen=True)
class Timeline:
    """The windows of one (model, segment), sorted by start: what every chart draws from."""

    windows: Sequence[WindowRecord]

    @cached_property
    def ticks(self) -> list[str]:
        """Window start labels: dates for daily (or longer) windows, else date and time; a
        partial window's says so."""
        starts = [datetime.fromtimestamp(w.start, UTC) for w in self.windows]
        daily = all(s.hour == s.minute == s.second == 0 for s in starts) and all(
            w.end - w.start >= 86_400 for w in self.windows
        )
        return [
            s.strftime("%b %d" if daily else "%b %d\n%H:%M") + ("" if w.complete else "\n(partial)")
            for s, w in zip(starts, self.windows, strict=True)
        ]

    @cached_property
    def drifted(self) -> list[bool]:
        return [w.drifted for w in self.windows]

    @cached_property
    def colours(self) -> dict[str, Any]:
        """One colour per centroid/class name, shared by the closest-centroid and class charts."""
        names = sorted(
            {n for w in self.windows for n in (*w.closest_centroid, *(w.predictions or {}))}
        )
        strong = _CATEGORY_COLOURS[:8]
        palette = strong if len(names) <= len(strong) else _CATEGORY_COLOURS
        return {name: palette[i % len(palette)] for i, name in enumerate(names)}

    def __len__(self) -> int:
        return len(self.windows)


def closest_centroid_chart(t: Timeline) -> Figure | None:
    """The seed's Figure 3: which reference centroid events fall closest to, per window."""
    shares = [w.closest_centroid for w in t.windows]
    return _stacked(t, shares, "Share of events by closest reference centroid")


def prediction_chart(t: Timeline) -> Figure | None:
    """Predicted class mix per window: a drift signal that needs no ground truth."""
    shares = [w.predictions or {} for w in t.windows]
    return _stacked(t, shares, "Share of events by predicted class")


def frequent_terms_chart(t: Timeline) -> Figure | None:
    """The seed's Figure 4: the most frequent terms overall, and how often each window used them.

    Rates are occurrences per event so that busy and quiet windows compare; a blank cell means
    the term was not among that window's frequent terms.
    """
    rates: list[dict[str, float]] = []
    counts: list[dict[str, int]] = []
    for w in t.windows:
        pairs = dict(w.frequent_terms)
        events = max(w.events, 1)
        counts.append(pairs)
        rates.append({term: count / events for term, count in pairs.items()})
    if not any(counts):
        return None
    totals: dict[str, float] = {}
    for window_rates in rates:
        for term, rate in window_rates.items():
            totals[term] = totals.get(term, 0.0) + rate
    terms = sorted(totals, key=lambda term: (-totals[term], term))[:_MAX_TERMS]
    matrix = np.ma.masked_invalid(
        np.array([[r.get(term, np.nan) for r in rates] for term in terms], dtype=float)
    )
    fig = Figure(figsize=(_width(len(t)), 1.4 + 0.34 * len(terms)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_facecolor("#f4f4f4")
    image = ax.imshow(matrix, aspect="auto", cmap="YlOrRd", vmin=0.0, interpolation="nearest")
    top = float(matrix.max()) if matrix.count() else 1.0
    if len(t) <= _ANNOTATE_UP_TO:
        for row, term in enumerate(terms):
            for col, window_counts in enumerate(counts):
                if term in window_counts:
                    dark = matrix[row, col] > 0.55 * top
                    ax.text(
                        col,
                        row,
                        str(window_counts[term]),
                        ha="center",
                        va="center",
                        fontsize=7.5,
                        color="white" if dark else "#333333",
                    )
    ax.set_yticks(range(len(terms)), terms, fontsize=9)
    _window_axis(ax, t)
    ax.tick_params(length=0)
    ax.set_title(
        f"Top {len(terms)} terms: occurrences per event (cell text: count)",
        loc="left",
        fontsize=11,
        pad=16,
    )
    fig.colorbar(image, ax=ax, label="occurrences per event", shrink=0.9, pad=0.01)
    return fig


def classification_chart(t: Timeline) -> Figure | None:
    """The seed's Figure 5: F1 and accuracy per window (precision and recall as context)."""
    series = {
        "f1_macro": _quality(t, lambda c: c.f1_macro),
        "accuracy": _quality(t, lambda c: c.accuracy),
        "precision_macro": _quality(t, lambda c: c.precision_macro),
        "recall_macro": _quality(t, lambda c: c.recall_macro),
    }
    if np.isnan(series["f1_macro"]).all() and np.isnan(series["accuracy"]).all():
        return None
    fig = Figure(figsize=(_width(len(t)), 4.0), layout="constrained")
    ax = fig.add_subplot()
    _shade_drifted(ax, t)
    x = np.arange(len(t))
    styles = {
        "f1_macro": ("F1 (macro)", "#d62728", "-", 2.4, "o"),
        "accuracy": ("accuracy", "#1f4e79", "-", 2.0, "s"),
        "precision_macro": ("precision (macro)", "#7f7f7f", "--", 1.1, None),
        "recall_macro": ("recall (macro)", "#7f7f7f", ":", 1.3, None),
    }
    for key, (label, colour, style, width, marker) in styles.items():
        if not np.isnan(series[key]).all():
            ax.plot(
                x,
                series[key],
                linestyle=style,
                linewidth=width,
                color=colour,
                marker=marker,
                markersize=5,
                label=label,
            )
    if len(t) <= _ANNOTATE_UP_TO:
        for i, value in enumerate(series["f1_macro"]):
            if not math.isnan(value):
                ax.annotate(
                    f"{value:.2f}",
                    (i, value),
                    textcoords="offset points",
                    xytext=(0, 9),
                    ha="center",
                    fontsize=8,
                    color="#d62728",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                    zorder=5,
                )
    ax.set_ylim(0.0, 1.08)
    ax.set_xlim(-0.5, len(t) - 0.5)
    ax.grid(axis="y", color="#e6e6e6")
    _window_axis(ax, t)
    handles, _ = ax.get_legend_handles_labels()
    if any(t.drifted):
        handles.append(Patch(color=_SHADE, label="drifted window"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Classification quality per window", loc="left", fontsize=11, pad=16)
    return fig


def drift_chart(t: Timeline) -> Figure | None:
    """Each drift metric's score against its (calibrated, per-window) threshold."""
    metrics: list[str] = []
    for w in t.windows:
        metrics += [m for m in w.drift if m not in metrics]
    if not metrics:
        return None
    metrics.sort(key=lambda m: m != "closest_centroid")
    cols = 1 if len(metrics) == 1 else 2
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(
        figsize=(_width(len(t)) * (1.0 if cols == 1 else 1.3), 0.4 + 2.6 * rows),
        layout="constrained",
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    used: set[str] = set()
    for ax, metric in zip(axes.flat, metrics, strict=False):
        used |= _drift_panel(ax, t, metric)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    legend = {
        _OK: "score",
        _DRIFT: "score (drifted)",
        _MUTED: "too few events to judge",
    }
    handles: list[Any] = [Patch(color=c, label=label) for c, label in legend.items() if c in used]
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.2, label="threshold"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), frameon=False)
    return fig


def _drift_panel(ax: Axes, t: Timeline, metric: str) -> set[str]:
    """Draw one metric's panel; returns the bar colours used, for the shared legend."""
    results = [w.drift.get(metric) for w in t.windows]
    scores = np.array([_number(None if r is None else r.score) for r in results])
    thresholds = np.array([_number(None if r is None else r.threshold) for r in results])
    colours = [
        _DRIFT
        if r is not None and r.drifted
        else _MUTED
        if r is None or r.threshold is None
        else _OK
        for r in results
    ]
    x = np.arange(len(t))
    ax.bar(x, np.nan_to_num(scores), color=colours, width=0.7)
    ax.stairs(
        thresholds,
        np.arange(len(t) + 1) - 0.5,
        baseline=None,
        color="black",
        linestyle="--",
        linewidth=1.2,
    )
    ceiling = np.nanmax(np.concatenate([scores, thresholds, [0.0]]))
    ax.set_ylim(0.0, (ceiling or 1.0) * 1.18)
    ax.set_xlim(-0.5, len(t) - 0.5)
    statistic = next((r.statistic for r in results if r is not None and r.statistic), "")
    ax.set_title(f"{metric} ({statistic})" if statistic else metric, loc="left", fontsize=10)
    ax.grid(axis="y", color="#e6e6e6")
    ax.set_axisbelow(True)
    _window_axis(ax, t, rug=False)
    return {c for c, r in zip(colours, results, strict=True) if r is not None}


def _stacked(t: Timeline, shares: Sequence[Mapping[str, float]], title: str) -> Figure | None:
    if not any(shares):
        return None
    names = sorted(
        {n for s in shares for n in s}, key=lambda n: -sum(s.get(n, 0.0) for s in shares)
    )
    shown = names if len(names) <= _MAX_CATEGORIES + 1 else names[:_MAX_CATEGORIES]
    columns = {name: np.array([s.get(name, 0.0) for s in shares]) for name in shown}
    if len(shown) < len(names):
        columns["other"] = np.array(
            [sum(v for n, v in s.items() if n not in shown) for s in shares]
        )
    fig = Figure(figsize=(_width(len(t)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(t))
    bottom = np.zeros(len(t))
    for name, values in columns.items():
        colour = t.colours.get(name, _MUTED)
        ax.bar(
            x,
            values,
            bottom=bottom,
            width=0.72,
            color=colour,
            label=name,
            edgecolor="white",
            linewidth=0.6,
        )
        if len(t) <= _ANNOTATE_UP_TO:
            text_colour = "white" if sum(to_rgb(colour)) < 1.8 else "#222222"
            for i, value in enumerate(values):
                if value >= 0.07:
                    ax.text(
                        i,
                        bottom[i] + value / 2,
                        f"{value:.0%}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color=text_colour,
                    )
        bottom += values
    for i, s in enumerate(shares):
        if not s:
            ax.text(i, 0.5, "no data", ha="center", va="center", rotation=90, color="#888888")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(-0.5, len(t) - 0.5)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    _window_axis(ax, t)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(
        handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    ax.set_title(title, loc="left", fontsize=11, pad=16)
    return fig


def _window_axis(ax: Axes, t: Timeline, rug: bool = True) -> None:
    """Window labels on x (thinned when many), drifted windows' labels in bold red, partial
    windows' in italics.

    With ``rug``, a red mark above the plot flags every drifted window, labelled or not.
    """
    if rug:
        drifted = [i for i, flag in enumerate(t.drifted) if flag]
        above = ax.get_xaxis_transform() + ScaledTranslation(0, 5 / 72, ax.figure.dpi_scale_trans)
        ax.plot(
            drifted,
            [1.0] * len(drifted),
            linestyle="none",
            marker="v",
            markersize=6,
            color=_DRIFT,
            transform=above,
            clip_on=False,
        )
    step = max(1, math.ceil(len(t) / _MAX_TICKS))
    positions = list(range(0, len(t), step))
    ax.set_xticks(positions, [t.ticks[i] for i in positions], fontsize=8.5)
    for label, i in zip(ax.get_xticklabels(), positions, strict=True):
        if t.drifted[i]:
            label.set_color(_DRIFT)
            label.set_fontweight("bold")
        if not t.windows[i].complete:
            label.set_fontstyle("italic")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _shade_drifted(ax: Axes, t: Timeline) -> None:
    for i, drifted in enumerate(t.drifted):
        if drifted:
            ax.axvspan(i - 0.5, i + 0.5, color=_SHADE, zorder=0, linewidth=0)


def _width(windows: int) -> float:
    return min(16.0, max(8.0, 3.0 + 0.6 * windows))


def _quality(t: Timeline, read: Callable[[Classification], float]) -> npt.NDArray[np.float64]:
    """One classification metric per window; NaN where a window had no labelled events."""
    return np.array(
        [_number(None if w.classification is None else read(w.classification)) for w in t.windows]
    )


def _number(value: float | None) -> float:
    return np.nan if value is None else float(value)
