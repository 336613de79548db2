"""``embmon demo``: the seed article's story in one command, on an embedded Kafka broker.

1. Train the seed's classifier (TF-IDF + MultinomialNB) on real English topic text.
2. Build the reference the seed's way: PCA with 20 components and per-topic centroids of the
   training vectors, euclidean distance; profile and calibrate on other English documents,
   each once (``demo.corpus`` says how the documents are split).
3. Start a real Kafka-protocol broker (Tansu) and produce seven backdated days of inference
   events whose Spanish share grows 0, 0, 0, 0, 0.33, 0.66, 1.
4. Run the agent over Kafka until the end, print one line per day, write ``windows.jsonl``
   and the HTML report, and (``--serve``) keep ``/metrics`` up for a local Prometheus.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import orjson
from kafka import KafkaProducer

from agent.config import Settings
from agent.file_source import load_events
from agent.ledger import prepare_out
from agent.progress import Progress
from agent.run import Agent
from exporters.http import MetricsServer
from exporters.records import WindowRecord, format_time
from exporters.report import write_report
from exporters.windows_log import read_windows
from sketches.batch import EventBatch
from sketches.reference import Reference, build_reference

from .broker import EmbeddedBroker, create_topic
from .corpus import Scenario, build_scenario, spanish_share, write_jsonl

__all__ = ["run_demo"]

TOPIC = "inference-events"
PARTITIONS = 3


def _say(text: str) -> None:
    print(text, flush=True)


def _reference(scenario: Scenario, out: Path, rounds: int) -> Reference:
    events = load_events(write_jsonl(scenario.reference_events, out / "reference-events.jsonl"))
    held_out = events.batch()
    progress = Progress("calibrating drift thresholds", total=1.0)
    reference = build_reference(
        held_out,
        [str(label) for label in events.labels or []],
        method="pca-centroids",
        components=20,
        distance="euclidean",
        fit_rows=EventBatch.from_vectors(scenario.train_vectors),
        fit_labels=scenario.train_labels,
        holdout=0.5,
        profile_share=0.5,
        rounds=rounds,
        progress=lambda done, total: progress.update(done / total),
    )
    progress.finish()
    reference.save(out / "reference")
    return reference


def _produce(bootstrap: str, scenario: Scenario) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    events = scenario.events
    progress = Progress(f"producing {len(events)} events to {TOPIC}", total=len(events))
    for i, event in enumerate(events):
        producer.send(TOPIC, orjson.dumps(event), partition=i % PARTITIONS)
        progress.update(i + 1)
    producer.flush()
    producer.close()
    progress.finish()
    return len(events)


def _table(records: list[WindowRecord], scenario: Scenario) -> None:
    shares = {
        int(start.timestamp()): spanish_share(day)
        for start, day in zip(scenario.day_starts, scenario.days, strict=True)
    }
    metrics = sorted({m for r in records for m in r.drift})
    _say("")
    _say(
        f"{'day':<10} {'events':>6} {'es':>4}  {'closest-centroid mix (top 3)':<34} {'F1':>5}  alert  drift score / threshold"
    )
    for r in records:
        day = format_time(r.start)[:10]
        mix = " ".join(
            f"{k} {v:.0%}" for k, v in sorted(r.closest_centroid.items(), key=lambda kv: -kv[1])[:3]
        )
        f1 = float("nan") if r.classification is None else r.classification.f1_macro
        drift = "  ".join(
            f"{m} {d.score:.2f}{'>' if d.drifted else '<='}{d.threshold:.2f}"
            for m in metrics
            if (d := r.drift.get(m)) is not None and d.threshold is not None
        )
        alert = "FIRE " if r.drifted else "-    "
        share = shares.get(r.start, float("nan"))
        _say(f"{day:<10} {r.events:>6} {share:>4.0%}  {mix:<34} {f1:>5.2f}  {alert}  {drift}")
        terms = ", ".join(term for term, _ in r.frequent_terms[:8])
        _say(f"{'':<10} top terms: {terms}")


def run_demo(
    *,
    out: Path,
    serve: bool = False,
    metrics_port: int = 9808,
    docs_per_day: int = 300,
    quick: bool = False,
) -> int:
    """Run the whole story; returns 0 when days 5–7 were flagged and days 1–4 were not."""
    prepare_out(out, overwrite=True)  # a demo is a fresh run: the last one's windows go
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("embmon").setLevel(logging.WARNING)
    _say("1/5 training the seed's classifier (TF-IDF + MultinomialNB) on English topic text…")
    # quick still needs 150 a day: with fewer, day 5's third of Spanish hides in the draw noise
    scenario = build_scenario(docs_per_day=150 if quick else docs_per_day)
    _say(
        f"    {len(scenario.train_labels)} training documents, topics: {', '.join(scenario.label_names)}; "
        f"embedding dimension {scenario.dim}"
    )
    _say(
        f"    {len(scenario.reference_events)} other documents profile and calibrate the reference; "
        "the days draw from documents neither has seen"
    )
    _say("2/5 building the reference: PCA(20) per-topic centroids, calibrated thresholds…")
    reference = _reference(scenario, out, rounds=120 if quick else 300)
    _say(f"    reference {reference.version} in {out / 'reference'}")
    with EmbeddedBroker() as broker:
        _say(
            f"3/5 embedded Kafka broker (Tansu) on {broker.bootstrap_servers}; producing 7 backdated days…"
        )
        create_topic(broker.bootstrap_servers, TOPIC, PARTITIONS)
        produced = _produce(broker.bootstrap_servers, scenario)
        _say(f"4/5 embmon run --until-end over {TOPIC} ({produced} events)…")
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            topics=(TOPIC,),
            group_id="embmon-demo",
            reference=str(out / "reference"),
            window="1d",
            out=str(out),
            until_end=True,
            metrics_port=0,
            log_level="WARNING",
        )
        agent = Agent(settings)
        agent.run()
    records = list(read_windows(out / "windows.jsonl"))
    _table(records, scenario)
    _say("5/5 writing the report…")
    index = write_report(out / "windows.jsonl", out / "report")
    _say(f"    {out / 'windows.jsonl'}\n    {index}")
    flagged = [r.drifted for r in records]
    expected = [False] * 4 + [True] * 3
    verdict = (
        "as in the seed: days 5–7 drifted, days 1–4 did not"
        if flagged == expected
        else f"unexpected drift pattern {flagged}"
    )
    _say(verdict)
    if serve:
        server = MetricsServer(agent.registry, agent.health, port=metrics_port).start()
        agent.health.tick()
        _say(
            f"serving the final metrics on http://localhost:{server.port}/metrics — Ctrl-C to stop"
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            server.stop()
    return 0 if flagged == expected else 1
