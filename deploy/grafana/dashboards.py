"""embmon's Grafana dashboards, generated as code for Grafana 11.6.

    pip install 'grafana-foundation-sdk==1769699379!11.6.0'
    python deploy/grafana/dashboards.py --out deploy/grafana/generated/

Two dashboards, linked to each other:

- ``embmon-drift.json`` ("embmon / embedding drift"): what the models' embeddings do, per model
  and segment: drift scores against their calibrated thresholds, the closest-centroid
  distribution, distances to centroids, frequent terms, F1 / accuracy against the reference.
- ``embmon-agent.json`` ("embmon / agent"): how the agent itself does: traffic, rejects,
  Kafka consumer lag, open windows and watermark, window freshness, and in the scaled layout
  (collectors and evaluators) whether the latest windows are complete.

Every panel and query reads the ``$datasource`` variable. A few panels read recording rules
from ``deploy/prometheus/embmon-rules.yaml`` (names with colons): load that file in Prometheus.
The JSON is written with sorted keys so that regenerating it is byte-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

__all__ = ["build_dashboards", "main", "render"]

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label selectors shared by the queries of each dashboard.
MODEL_SEGMENT = 'model=~"$model",segment=~"$segment"'
AGENT = 'job=~"$job",instance=~"$instance"'

# Keep equal to the margin of EmbmonClassificationF1Drop in deploy/prometheus/embmon-rules.yaml.
F1_ALERT_MARGIN = 0.10
# Keep equal to the reject-ratio threshold of EmbmonHighRejectRate.
REJECT_ALERT_RATIO = 0.05
# Keep equal to the lag floor of EmbmonConsumerLagGrowing.
LAG_ALERT_FLOOR = 1000.0

RULES_NOTE = "Reads a recording rule from deploy/prometheus/embmon-rules.yaml."


# --- building blocks ------------------------------------------------------------------------


def _query(expr: str, legend: str = "", ref_id: str = "A") -> prom.Dataquery:
    return (
        prom.Dataquery()
        .expr(expr)
        .legend_format(legend or "__auto")
        .ref_id(ref_id)
        .datasource(DATASOURCE)
    )


def _instant_query(expr: str, legend: str = "", ref_id: str = "A") -> prom.Dataquery:
    return _query(expr, legend, ref_id).instant()


def _thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def _timeseries(title: str, description: str, unit: str = "short") -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .line_width(2)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(True)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builder.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .thresholds(_thresholds((None, "green")))
    )


def _with_alert_line(panel: timeseries.Panel, value: float) -> timeseries.Panel:
    """Draws the alert threshold as a dashed red line."""
    return panel.thresholds(_thresholds((None, "transparent"), (value, "red"))).thresholds_style(
        common_builder.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
    )


def _stacked(panel: timeseries.Panel, mode: common.StackingMode) -> timeseries.Panel:
    return panel.fill_opacity(70).line_width(1).stacking(common_builder.StackingConfig().mode(mode))


def _dashed(ref_id: str) -> tuple[str, list[model.DynamicConfigValue]]:
    """An override drawing the series of query ``ref_id`` as a dashed line (thresholds, refs)."""
    return ref_id, [
        model.DynamicConfigValue(
            id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
        ),
        model.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
    ]


def _stat(title: str, description: str, expr: str, unit: str = "short") -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_instant_query(expr))
        .unit(unit)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
    )


def _query_variable(name: str, label: str, query: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(DATASOURCE)
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        # ".*" also matches an absent label (a model whose events carry no segment).
        .all_value(".*")
    )


def _datasource_variable() -> dash.DatasourceVariable:
    return dash.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _link_to_other_dashboards() -> dash.DashboardLink:
    return (
        dash.DashboardLink("embmon dashboards")
        .type(model.DashboardLinkType.DASHBOARDS)
        .tags(["embmon"])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )


def _number_panels(board: model.Dashboard) -> model.Dashboard:
    """Gives every panel and row a stable id (Grafana needs them for repeats and links)."""
    next_id = 1
    for panel in board.panels or []:
        panel.id_val = next_id
        next_id += 1
        if isinstance(panel, model.RowPanel):
            for inner in panel.panels:
                inner.id_val = next_id
                next_id += 1
    return board


# --- embmon / embedding drift ---------------------------------------------------------------


def _drift_overview(board: dash.Dashboard) -> dash.Dashboard:
    drifted = _stat(
        "Drifted windows",
        "Models and segments whose last closed window was flagged as drifted "
        "(embmon_window_drifted).",
        f"sum(embmon_window_drifted{{{MODEL_SEGMENT}}}) or vector(0)",
    ).thresholds(_thresholds((None, "green"), (1, "red")))
    events = _stat(
        "Events in the last closed windows",
        "Events profiled in the last closed window of the selected models and segments.",
        f"sum(embmon_window_events{{{MODEL_SEGMENT}}})",
    ).thresholds(_thresholds((None, "blue")))
    verdict = (
        statetimeline.Panel()
        .title("Drift verdict per window")
        .description(
            "Whether each closed window was flagged as drifted by at least one drift metric."
        )
        .datasource(DATASOURCE)
        .with_target(
            _query(
                f"max by (model, segment) (embmon_window_drifted{{{MODEL_SEGMENT}}})",
                "{{model}} {{segment}}",
            )
        )
        .mappings(
            [
                model.ValueMap(
                    options={
                        "0": model.ValueMappingResult(text="no drift", color="green", index=0),
                        "1": model.ValueMappingResult(text="drift", color="red", index=1),
                    }
                )
            ]
        )
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .thresholds(_thresholds((None, "green"), (1, "red")))
    )
    normalised = _with_alert_line(
        _timeseries(
            "Drift score relative to its threshold, every metric",
            "Each drift metric's score divided by its calibrated threshold: above 1 (red line) "
            "the metric has drifted and EmbmonEmbeddingDrift fires. " + RULES_NOTE,
        ).with_target(
            _query(
                "model_segment_metric:embmon_drift_score_to_threshold:ratio"
                f'{{{MODEL_SEGMENT},metric=~"$metric"}}',
                "{{model}} {{segment}} {{metric}}",
            )
        ),
        1.0,
    )
    return (
        board.with_row(dash.Row("Overview"))
        .with_panel(drifted.span(4).height(6))
        .with_panel(events.span(4).height(6))
        .with_panel(verdict.span(16).height(6))
        .with_panel(normalised.span(24).height(8))
    )


def _drift_per_metric(board: dash.Dashboard) -> dash.Dashboard:
    selector = f'{MODEL_SEGMENT},metric=~"$metric"'
    ref_id, dashed = _dashed("B")
    panel = (
        _timeseries(
            "Drift: $metric",
            "The drift score of the last closed window (solid) against its calibrated "
            "threshold (dashed). One panel per drift metric.",
        )
        .with_target(_query(f"embmon_drift_score{{{selector}}}", "{{model}} {{segment}} score"))
        .with_target(
            _query(f"embmon_drift_threshold{{{selector}}}", "{{model}} {{segment}} threshold", "B")
        )
        .override_by_query(ref_id, dashed)
        .repeat("metric")
        .repeat_direction("h")
        .max_per_row(3)
    )
    return board.with_row(dash.Row("Drift per metric")).with_panel(panel.span(8).height(8))


def _model_row(board: dash.Dashboard) -> dash.Dashboard:
    one_model = 'model=~"$model",segment=~"$segment"'
    closest = _stacked(
        _timeseries(
            "Closest centroid distribution",
            "Events of each closed window by their closest reference centroid, stacked to "
            "100 %. A new topic or language shows as one centroid's share growing.",
        ).with_target(
            _query(
                "sum by (centroid) (\n"
                f"    embmon_closest_centroid_ratio{{{one_model}}}\n"
                "  * ignoring (centroid) group_left ()\n"
                f"    embmon_window_events{{{one_model}}}\n"
                ")",
                "{{centroid}}",
            )
        ),
        common.StackingMode.PERCENT,
    )
    distance = _timeseries(
        "Median distance to each centroid",
        "Median distance of the window's events to each reference centroid "
        "(cosine or euclidean, as the reference was built).",
    ).with_target(
        _query(
            f'avg by (centroid) (embmon_centroid_distance{{{one_model},q="0.5"}})',
            "{{centroid}}",
        )
    )
    terms = _timeseries(
        "Frequent terms",
        "Share of all terms taken by the ten most frequent terms of each window.",
        "percentunit",
    ).with_target(
        _query(f"topk(10, avg by (term) (embmon_frequent_term_ratio{{{one_model}}}))", "{{term}}")
    )
    top_terms = (
        bargauge.Panel()
        .title("Top terms, last closed window")
        .description("The most frequent terms of the last closed window, as a share of all terms.")
        .datasource(DATASOURCE)
        .with_target(
            _instant_query(
                f"sort_desc(topk(15, avg by (term) (embmon_frequent_term_ratio{{{one_model}}})))",
                "{{term}}",
            )
        )
        .unit("percentunit")
        .min(0)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]))
        .thresholds(_thresholds((None, "blue")))
    )
    ref_id, dashed = _dashed("B")
    f1 = (
        _timeseries(
            "Macro F1 vs reference",
            "Macro F1 of each closed window (labelled events only) against the F1 measured on "
            f"the reference data (dashed). EmbmonClassificationF1Drop fires {F1_ALERT_MARGIN:.2f} "
            "below the reference.",
            "percentunit",
        )
        .with_target(_query(f"embmon_classification_f1{{{one_model}}}", "F1 {{segment}}"))
        .with_target(
            _query('embmon_reference_classification_f1{model=~"$model"}', "reference F1", "B")
        )
        .override_by_query(ref_id, dashed)
        .min(0)
        .max(1)
    )
    accuracy = (
        _timeseries(
            "Accuracy", "Accuracy of each closed window (labelled events only).", "percentunit"
        )
        .with_target(
            _query(f"embmon_classification_accuracy{{{one_model}}}", "accuracy {{segment}}")
        )
        .min(0)
        .max(1)
    )
    predictions = _stacked(
        _timeseries(
            "Prediction distribution",
            "Events of each closed window by predicted class, stacked to 100 % (needs no labels).",
        ).with_target(
            _query(
                "sum by (class) (\n"
                f"    embmon_prediction_ratio{{{one_model}}}\n"
                "  * ignoring (class) group_left ()\n"
                f"    embmon_window_events{{{one_model}}}\n"
                ")",
                "{{class}}",
            )
        ),
        common.StackingMode.PERCENT,
    )
    events = (
        _timeseries("Events per closed window", "Events profiled in each closed window.")
        .with_target(
            _query(f"sum by (segment) (embmon_window_events{{{one_model}}})", "{{segment}}")
        )
        .draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(60)
    )
    return (
        board.with_row(dash.Row("Model $model").repeat("model"))
        .with_panel(closest.span(12).height(9))
        .with_panel(distance.span(12).height(9))
        .with_panel(terms.span(12).height(9))
        .with_panel(top_terms.span(12).height(9))
        .with_panel(f1.span(8).height(8))
        .with_panel(accuracy.span(8).height(8))
        .with_panel(predictions.span(8).height(8))
        .with_panel(events.span(24).height(6))
    )


def drift_dashboard() -> model.Dashboard:
    board = (
        dash.Dashboard("embmon / embedding drift")
        .uid("embmon-drift")
        .description(
            "Embedding drift per model and segment, from embmon's last closed windows. "
            "Values change when a window closes."
        )
        .tags(["embmon"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("1m")
        .time("now-7d", "now")
        .timezone("utc")
        .link(_link_to_other_dashboards())
        .with_variable(_datasource_variable())
        .with_variable(
            _query_variable("model", "Model", "label_values(embmon_window_events, model)")
        )
        .with_variable(
            _query_variable(
                "segment",
                "Segment",
                'label_values(embmon_window_events{model=~"$model"}, segment)',
            )
        )
        .with_variable(
            _query_variable(
                "metric",
                "Drift metric",
                'label_values(embmon_drift_score{model=~"$model"}, metric)',
            )
        )
    )
    board = _model_row(_drift_per_metric(_drift_overview(board)))
    return _number_panels(board.build())


# --- embmon / agent -------------------------------------------------------------------------


def _agent_health(board: dash.Dashboard) -> dash.Dashboard:
    up = _stat(
        "Agents up",
        "Agents Prometheus scrapes successfully.",
        f"sum(up{{{AGENT}}})",
    ).thresholds(_thresholds((None, "red"), (1, "green")))
    open_windows = _stat(
        "Open windows",
        "Windows still accepting events, over all models and segments.",
        f"sum(embmon_open_windows{{{AGENT}}})",
    ).thresholds(_thresholds((None, "blue")))
    watermark = _stat(
        "Watermark behind wall clock",
        "How far event time (the watermark) trails the wall clock.",
        f"max(time() - embmon_watermark_timestamp_seconds{{{AGENT}}})",
        "s",
    ).thresholds(_thresholds((None, "blue")))
    build = (
        table.Panel()
        .title("Build and reference")
        .description("embmon version and reference (sha256) each agent runs with.")
        .datasource(DATASOURCE)
        .with_target(_instant_query(f"embmon_build_info{{{AGENT}}}").format(PromQueryFormat.TABLE))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True, "Value": True, "__name__": True},
                    "indexByName": {"instance": 0, "version": 1, "reference": 2, "job": 3},
                },
            )
        )
    )
    return (
        board.with_row(dash.Row("Health"))
        .with_panel(up.span(4).height(5))
        .with_panel(open_windows.span(4).height(5))
        .with_panel(watermark.span(4).height(5))
        .with_panel(build.span(12).height(5))
    )


def _agent_traffic(board: dash.Dashboard) -> dash.Dashboard:
    events = _timeseries(
        "Events accepted per second, by model",
        "Events decoded and routed to a window (embmon_events_total).",
        "cps",
    ).with_target(
        _query(
            "sum by (model) (rate(embmon_events_total"
            f'{{{AGENT},model=~"$model"}}[$__rate_interval]))',
            "{{model}}",
        )
    )
    rejects = _stacked(
        _timeseries(
            "Rejected records per second, by reason",
            "Records embmon could not use, by reason (embmon_events_rejected_total). "
            '"late" records arrived after their window closed.',
            "cps",
        ).with_target(
            _query(
                "sum by (reason) (rate(embmon_events_rejected_total"
                f"{{{AGENT}}}[$__rate_interval]))",
                "{{reason}}",
            )
        ),
        common.StackingMode.NORMAL,
    )
    ratios = _with_alert_line(
        _timeseries(
            "Rejected and late share of consumed records",
            "Malformed (every reason but late) and late records as a share of every record "
            f"consumed. EmbmonHighRejectRate fires above {REJECT_ALERT_RATIO:.0%} (red line). "
            + RULES_NOTE,
            "percentunit",
        )
        .with_target(
            _query(
                f"job_instance:embmon_events_rejected:ratio_rate5m{{{AGENT}}}",
                "rejected {{instance}}",
            )
        )
        .with_target(
            _query(
                f"job_instance:embmon_events_late:ratio_rate5m{{{AGENT}}}",
                "late {{instance}}",
                "B",
            )
        ),
        REJECT_ALERT_RATIO,
    )
    folded = _timeseries(
        'Label values folded into "other"',
        "Models, segments, centroids or terms beyond the configured bounds, counted in "
        "embmon_label_values_folded_total. Raise max_models / max_segments / max_terms if "
        "this is not zero.",
        "cps",
    ).with_target(
        _query(
            f"sum by (label) (rate(embmon_label_values_folded_total{{{AGENT}}}[$__rate_interval]))",
            "{{label}}",
        )
    )
    return (
        board.with_row(dash.Row("Traffic"))
        .with_panel(events.span(12).height(8))
        .with_panel(rejects.span(12).height(8))
        .with_panel(ratios.span(12).height(8))
        .with_panel(folded.span(12).height(8))
    )


def _agent_kafka(board: dash.Dashboard) -> dash.Dashboard:
    partitions = _timeseries(
        "Consumer lag by partition",
        "Records between the agent's position and the head of each partition.",
    ).with_target(
        _query(
            f"sum by (topic, partition) (embmon_consumer_lag_records{{{AGENT}}})",
            "{{topic}}/{{partition}}",
        )
    )
    topics = _with_alert_line(
        _timeseries(
            "Consumer lag by topic",
            "Lag over all partitions of each topic. EmbmonConsumerLagGrowing fires when it is "
            f"above {LAG_ALERT_FLOOR:.0f} records (red line) and growing. " + RULES_NOTE,
        ).with_target(
            _query('job_topic:embmon_consumer_lag_records:sum{job=~"$job"}', "{{topic}}")
        ),
        LAG_ALERT_FLOOR,
    )
    return (
        board.with_row(dash.Row("Kafka"))
        .with_panel(partitions.span(12).height(8))
        .with_panel(topics.span(12).height(8))
    )


def _agent_windows(board: dash.Dashboard) -> dash.Dashboard:
    open_windows = _timeseries(
        "Open windows", "Windows still accepting events, per agent."
    ).with_target(_query(f"sum by (instance) (embmon_open_windows{{{AGENT}}})", "{{instance}}"))
    watermark = _timeseries(
        "Watermark behind wall clock",
        "Event time (the watermark) against the wall clock. It grows when the agent lags or "
        "events stop arriving.",
        "s",
    ).with_target(_query(f"time() - embmon_watermark_timestamp_seconds{{{AGENT}}}", "{{instance}}"))
    closed = _timeseries(
        "Windows closed per hour, by model", "Closed (model, segment, window) profiles."
    ).with_target(
        _query(
            "sum by (model) (increase(embmon_windows_closed_total"
            f'{{{AGENT},model=~"$model"}}[1h]))',
            "{{model}}",
        )
    )
    ref_id, dashed = _dashed("B")
    age = (
        _timeseries(
            "Age of the last closed window",
            "Time since the end of each (model, segment)'s last closed window, against the "
            "limit of EmbmonWindowsStale: two windows plus the allowed lateness (dashed).",
            "s",
        )
        .with_target(
            _query(
                f'time() - embmon_last_window_end_timestamp_seconds{{{AGENT},model=~"$model"}}',
                "{{model}} {{segment}}",
            )
        )
        .with_target(
            _query(
                f"2 * embmon_window_size_seconds{{{AGENT}}}"
                f" + embmon_window_lateness_seconds{{{AGENT}}}",
                "stale limit {{instance}}",
                "B",
            )
        )
        .override_by_query(ref_id, dashed)
    )
    return (
        board.with_row(dash.Row("Windows"))
        .with_panel(open_windows.span(8).height(8))
        .with_panel(watermark.span(8).height(8))
        .with_panel(closed.span(8).height(8))
        .with_panel(age.span(24).height(8))
    )


def _agent_scaled_layout(board: dash.Dashboard) -> dash.Dashboard:
    """Collectors and evaluators (``--role collector|evaluator``): are the windows complete?

    Only series a single process exports too (``embmon_window_complete`` is 1 there), so
    every query of the dashboard returns data whatever the layout.
    """
    selector = f'{AGENT},model=~"$model"'
    partial = _stat(
        "Partial windows",
        "Series whose latest window is partial: written by an evaluator after --grace without "
        "some collector's part (embmon_window_complete 0). Always 0 with --role all.",
        f"count(embmon_window_complete{{{selector}}} == 0) or vector(0)",
    ).thresholds(_thresholds((None, "green"), (1, "orange")))
    completeness = (
        statetimeline.Panel()
        .title("Window completeness")
        .description(
            "Whether the latest window of each (model, segment) is complete or partial, per "
            "evaluator. A window stays partial while a collector's chunks are missing; "
            "EmbmonWindowIncomplete fires when it stays partial."
        )
        .datasource(DATASOURCE)
        .with_target(
            _query(
                f"embmon_window_complete{{{selector}}}",
                "{{model}} {{segment}} {{instance}}",
            )
        )
        .mappings(
            [
                model.ValueMap(
                    options={
                        "0": model.ValueMappingResult(text="partial", color="orange", index=0),
                        "1": model.ValueMappingResult(text="complete", color="green", index=1),
                    }
                )
            ]
        )
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .thresholds(_thresholds((None, "orange"), (1, "green")))
    )
    return (
        board.with_row(dash.Row("Scaled layout"))
        .with_panel(partial.span(4).height(6))
        .with_panel(completeness.span(20).height(6))
    )


def agent_dashboard() -> model.Dashboard:
    board = (
        dash.Dashboard("embmon / agent")
        .uid("embmon-agent")
        .description(
            "The embmon agent: traffic, rejected records, Kafka consumer lag, windows and "
            "watermark, and the completeness of windows in the scaled layout."
        )
        .tags(["embmon"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("utc")
        .link(_link_to_other_dashboards())
        .with_variable(_datasource_variable())
        .with_variable(_query_variable("job", "Job", "label_values(embmon_build_info, job)"))
        .with_variable(
            _query_variable(
                "instance", "Instance", 'label_values(embmon_build_info{job=~"$job"}, instance)'
            )
        )
        .with_variable(
            _query_variable(
                "model", "Model", f"label_values(embmon_events_total{{{AGENT}}}, model)"
            )
        )
    )
    board = _agent_scaled_layout(_agent_windows(_agent_kafka(_agent_traffic(_agent_health(board)))))
    return _number_panels(board.build())


# --- output ---------------------------------------------------------------------------------


def build_dashboards() -> dict[str, model.Dashboard]:
    """Every dashboard, keyed by the file name it is written to."""
    return {"embmon-drift.json": drift_dashboard(), "embmon-agent.json": agent_dashboard()}


def render(board: model.Dashboard) -> str:
    """The dashboard as Grafana JSON: sorted keys, two-space indent, final newline."""
    return json.dumps(json.loads(JSONEncoder().encode(board)), sort_keys=True, indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "generated",
        help="directory to write the dashboard JSON files to (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, board in build_dashboards().items():
        (out / name).write_text(render(board), encoding="utf-8")
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
