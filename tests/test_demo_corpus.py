"""The demo scenario tells the seed's story: deterministic, Spanish creeping in, F1 falling."""

from __future__ import annotations

import base64
import itertools
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.metrics import f1_score

from demo.corpus import (
    LANGUAGE_PERTURBATION_RATIO,
    Scenario,
    build_scenario,
    spanish_share,
    write_jsonl,
)

START = datetime(2026, 11, 20, tzinfo=UTC)
DOCS_PER_DAY = 300  # the demo's: a day's macro F1 then measures the classifier, not the draw
CONTRACT_FIELDS = {
    "event_id",
    "timestamp",
    "model",
    "embedding_b64",
    "tokens",
    "prediction",
    "target",
}


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario(docs_per_day=DOCS_PER_DAY, seed=3, start=START)


def _f1(events: list[dict[str, object]], labels: tuple[str, ...]) -> float:
    return float(
        f1_score(
            [e["target"] for e in events],
            [e["prediction"] for e in events],
            labels=list(labels),
            average="macro",
            zero_division=0,
        )
    )


def test_same_seed_same_scenario(scenario: Scenario) -> None:
    again = build_scenario(docs_per_day=DOCS_PER_DAY, seed=3, start=START)
    assert again.days == scenario.days
    assert again.reference_events == scenario.reference_events
    np.testing.assert_array_equal(again.train_vectors, scenario.train_vectors)
    other = build_scenario(docs_per_day=DOCS_PER_DAY, seed=4, start=START)
    assert other.days != scenario.days


def test_spanish_share_per_day_follows_the_seed(scenario: Scenario) -> None:
    assert len(scenario.days) == len(LANGUAGE_PERTURBATION_RATIO)
    for day, ratio in zip(scenario.days, LANGUAGE_PERTURBATION_RATIO, strict=True):
        assert int(len(day) * ratio) == sum(e["language"] == "es" for e in day)
        assert spanish_share(day) == pytest.approx(ratio, abs=1 / len(day))
    assert all(e["language"] == "en" for e in scenario.reference_events)


def test_each_reference_document_is_one_event(scenario: Scenario) -> None:
    # build_reference splits its rows into profile and calibration rows: a document drawn
    # twice could land on both sides, and the thresholds would miss the noise of a new sample
    embeddings = [e["embedding_b64"] for e in scenario.reference_events]
    assert len(embeddings) == len(set(embeddings))


def test_daily_volume_varies_like_the_seed(scenario: Scenario) -> None:
    sizes = [len(day) for day in scenario.days]
    assert all(0.8 * DOCS_PER_DAY - 1 <= n <= DOCS_PER_DAY for n in sizes)
    assert len(set(sizes)) > 1


def test_events_follow_the_contract(scenario: Scenario) -> None:
    for start, day in zip(scenario.day_starts, scenario.days, strict=True):
        lo = start.timestamp()
        times = [e["timestamp"] for e in day]
        assert times == sorted(times)
        assert all(lo <= t < lo + 86_400 for t in times)
        for event in day:
            assert event.keys() >= CONTRACT_FIELDS
            assert event["model"] == "news"
            vector = np.frombuffer(base64.b64decode(event["embedding_b64"]), dtype="<f4")
            assert vector.shape == (scenario.dim,)
            assert np.isfinite(vector).all()
            assert event["prediction"] in scenario.label_names
            assert event["target"] in scenario.label_names
            assert all(isinstance(token, str) for token in event["tokens"])
    day_before = START.timestamp() - 86_400
    assert all(day_before <= e["timestamp"] < START.timestamp() for e in scenario.reference_events)
    ids = [e["event_id"] for e in scenario.events + scenario.reference_events]
    assert len(ids) == len(set(ids))


def test_day_starts_are_consecutive_utc_midnights(scenario: Scenario) -> None:
    assert scenario.day_starts[0] == START
    assert all(
        (b - a).total_seconds() == 86_400 for a, b in itertools.pairwise(scenario.day_starts)
    )
    default = build_scenario(docs_per_day=5, seed=1)
    last_end = default.day_starts[-1].timestamp() + 86_400
    assert (
        last_end == datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    )


def test_reference_inputs(scenario: Scenario) -> None:
    assert scenario.train_vectors.dtype == np.float32
    assert scenario.train_vectors.shape == (len(scenario.train_labels), scenario.dim)
    assert 0 < scenario.dim <= 1024
    assert (
        set(scenario.train_labels)
        == set(scenario.label_names)
        == {"ai", "emotion", "money", "psychology", "trivia"}
    )
    counts = [int(np.sum(scenario.train_labels == name)) for name in scenario.label_names]
    assert max(counts) <= 4 * min(counts)
    # held out: no reference document was trained on
    assert not {e["embedding_b64"] for e in scenario.reference_events} & _trained(scenario)


def test_traffic_documents_are_unseen_by_the_reference(scenario: Scenario) -> None:
    # The clean days must be scored on documents no part of the reference saw: not those that
    # fitted the PCA and centroids (and trained the classifier), not those that profiled it,
    # not those that calibrated its thresholds; else the quiet days are an easy pass.
    seen = _trained(scenario) | {e["embedding_b64"] for e in scenario.reference_events}
    traffic = {e["embedding_b64"] for e in scenario.events if e["language"] == "en"}
    assert len(traffic) > 50
    assert not traffic & seen


def _trained(scenario: Scenario) -> set[str]:
    return {base64.b64encode(v.astype("<f4").tobytes()).decode() for v in scenario.train_vectors}


def test_f1_falls_on_the_spanish_days(scenario: Scenario) -> None:
    f1 = [_f1(day, scenario.label_names) for day in scenario.days]
    english, spanish = f1[:4], f1[5:]
    assert min(english) > 0.7
    assert min(english) > max(spanish)
    assert np.mean(english) - np.mean(spanish) > 0.25
    assert f1[6] < 0.5
    assert _f1(scenario.reference_events, scenario.label_names) > 0.7


def test_spanish_stop_words_top_the_terms_only_on_spanish_days(scenario: Scenario) -> None:
    def top(events: list[dict[str, object]]) -> set[str]:
        counts: dict[str, int] = {}
        for event in events:
            for token in event["tokens"]:  # type: ignore[attr-defined]
                counts[token] = counts.get(token, 0) + 1
        return set(sorted(counts, key=lambda t: -counts[t])[:5])

    spanish = {"de", "la", "que", "el", "en", "es", "los", "qué", "una"}
    assert not top(scenario.days[0]) & spanish
    assert len(top(scenario.days[6]) & spanish) >= 4


def test_write_jsonl_round_trips(scenario: Scenario, tmp_path: Path) -> None:
    path = write_jsonl(scenario.days[0], tmp_path / "sub" / "day0.jsonl")
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == scenario.days[0]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="docs_per_day"):
        build_scenario(docs_per_day=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        build_scenario(docs_per_day=5, start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="spanish_shares"):
        build_scenario(docs_per_day=5, spanish_shares=(0.0, 1.5))
