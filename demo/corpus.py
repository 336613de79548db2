"""The seed article's story on real text, offline: an English topic classifier meets Spanish.

The seed (whylogs + SageMaker) trains a TF-IDF + naive Bayes classifier on English news, then
replays seven backdated days in which a growing share of documents is Spanish: the closest-topic
mix skews, Spanish stop words take over the frequent terms and F1 falls. The news data of the
seed needs the internet; the ``chatterbot-corpus`` wheel ships English topic files and Spanish
files on the same topics, so the same story runs here with no download.

As in the seed's code, the embedding is ``CountVectorizer() -> TfidfTransformer()`` (stop words
kept: with English stop words removed, most Spanish documents of this small corpus would embed
as all-zero vectors, which no distance can place) and the logged tokens are the analyzer's
tokens with English stop words removed (so Spanish stop words surface, as in the seed).

>>> s = build_scenario(docs_per_day=100, seed=1, start=datetime(2026, 11, 20, tzinfo=UTC))
>>> s.label_names
('ai', 'emotion', 'money', 'psychology', 'trivia')
>>> [round(spanish_share(day), 2) for day in s.days]
[0.0, 0.0, 0.0, 0.0, 0.33, 0.66, 1.0]
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import yaml
from chatterbot_corpus.corpus import DATA_DIRECTORY
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import Pipeline

__all__ = [
    "LANGUAGE_PERTURBATION_RATIO",
    "TOPICS",
    "Event",
    "Scenario",
    "build_scenario",
    "spanish_share",
    "write_jsonl",
]

Event = dict[str, Any]
"""One inference event in the DESIGN.md contract, plus ``language`` (ground truth, not read)."""

LANGUAGE_PERTURBATION_RATIO: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.33, 0.66, 1.0)
"""The seed's share of Spanish documents on each of the seven days."""

TOPICS: Mapping[str, tuple[str, str]] = {
    "ai": ("ai", "IA"),
    "emotion": ("emotion", "emociones"),
    "money": ("money", "dinero"),
    "psychology": ("psychology", "psicologia"),
    "trivia": ("trivia", "trivia"),
}
"""Label -> (English file, Spanish file) in chatterbot-corpus; only topics present in both."""

_DAY_SECONDS = 86_400
_TRAIN_FRACTION = 0.6  # the rest is held out: calibration events and English traffic
_MAX_PER_TOPIC = 110  # trivia has 261 conversations, money 30: keep classes within ~4x


@dataclass(frozen=True)
class Scenario:
    """Everything the demo needs: the reference's inputs and the days to replay.

    ``train_vectors``/``train_labels`` fit the reference's PCA and centroids (``embmon
    reference build``); ``reference_events`` are English events drawn from the held-out
    documents (never trained on) to profile the reference and calibrate its thresholds on;
    ``days[i]`` are the events of the day starting at ``day_starts[i]``, in time order.
    English traffic is drawn from the same held-out documents: with a corpus this small, a
    separate pool would differ from the reference by its sampling alone and English days
    would alarm; and a large sample (not each document once) keeps the reference profile's
    own noise, hence the calibrated thresholds, small.
    """

    train_vectors: npt.NDArray[np.float32]
    train_labels: npt.NDArray[np.str_]
    label_names: tuple[str, ...]
    reference_events: list[Event]
    days: list[list[Event]]
    day_starts: tuple[datetime, ...]

    @property
    def dim(self) -> int:
        return int(self.train_vectors.shape[1])

    @property
    def events(self) -> list[Event]:
        """All replayed events, day after day (what the demo produces to Kafka)."""
        return [event for day in self.days for event in day]


@dataclass(frozen=True)
class _Pool:
    """Documents of one language with their precomputed event fields."""

    labels: npt.NDArray[np.str_]
    embeddings_b64: list[str]
    tokens: list[list[str]]
    predictions: list[str]

    def rows_of(self, label: str) -> npt.NDArray[np.intp]:
        return np.flatnonzero(self.labels == label)


def build_scenario(
    docs_per_day: int = 300,
    seed: int = 7,
    start: datetime | None = None,
    model: str = "news",
    spanish_shares: Sequence[float] = LANGUAGE_PERTURBATION_RATIO,
    max_features: int = 1024,
    reference_size: int = 2000,
) -> Scenario:
    """Train the seed's classifier on English topics and generate one event list per day.

    Each day draws about ``docs_per_day`` documents (times a random 0.8-1.0 volume factor,
    as in the seed), ``int(n * share)`` of them Spanish, the rest held-out English.
    Topics follow the training prior in both languages, so only the language drifts.
    ``reference_size`` English events, drawn the same way on the day before, are the sample
    the reference profile and its thresholds are built from.
    ``start`` is the first day's UTC midnight; by default the days end at today's midnight.
    The result depends only on the arguments (and on today's date when ``start`` is None).
    """
    if docs_per_day < 1 or reference_size < 1:
        raise ValueError(
            f"docs_per_day and reference_size must be at least 1, got {docs_per_day}, "
            f"{reference_size}"
        )
    if not all(0.0 <= share <= 1.0 for share in spanish_shares):
        raise ValueError(f"spanish_shares must lie in [0, 1], got {list(spanish_shares)}")
    first = _first_day(start, len(spanish_shares))
    rng = np.random.default_rng(seed)

    docs, labels = _english_corpus(rng)
    train, held_out = _stratified_split(labels, rng)
    vectorizer: Pipeline = Pipeline(
        [("vect", CountVectorizer(max_features=max_features)), ("tfidf", TfidfTransformer())]
    )
    train_vectors = _dense(vectorizer.fit_transform([docs[i] for i in train]))
    classifier = MultinomialNB(alpha=0.01).fit(train_vectors, labels[train])
    analyzer = CountVectorizer(stop_words="english").build_analyzer()

    def pool(texts: list[str], pool_labels: npt.NDArray[np.str_]) -> _Pool:
        vectors = _dense(vectorizer.transform(texts))
        return _Pool(
            labels=pool_labels,
            embeddings_b64=[_b64(row) for row in vectors],
            tokens=[list(analyzer(text)) for text in texts],
            predictions=[str(p) for p in classifier.predict(vectors)],
        )

    label_names = tuple(str(name) for name in classifier.classes_)
    prior = np.array([np.mean(labels[train] == name) for name in label_names])
    spanish_docs, spanish_labels = _spanish_corpus()
    pools = {
        "en": pool([docs[i] for i in held_out], labels[held_out]),
        "es": pool(spanish_docs, spanish_labels),
    }
    reference_day = first - timedelta(days=1)
    reference_events = _draw(
        pools,
        label_names,
        prior,
        reference_day,
        reference_size,
        0.0,
        f"{model}-reference",
        model,
        rng,
    )
    day_starts = tuple(first + timedelta(days=d) for d in range(len(spanish_shares)))
    days = [
        _draw(
            pools,
            label_names,
            prior,
            day_start,
            max(1, round(docs_per_day * rng.uniform(0.8, 1.0))),
            share,
            f"{model}-{day_start:%Y%m%d}",
            model,
            rng,
        )
        for day_start, share in zip(day_starts, spanish_shares, strict=True)
    ]
    return Scenario(
        train_vectors=train_vectors,
        train_labels=labels[train],
        label_names=label_names,
        reference_events=reference_events,
        days=days,
        day_starts=day_starts,
    )


def spanish_share(events: Sequence[Event]) -> float:
    """Fraction of events whose ground-truth language is Spanish (0 for no events)."""
    if not events:
        return 0.0
    return sum(1 for event in events if event["language"] == "es") / len(events)


def write_jsonl(events: Iterable[Event], path: Path) -> Path:
    """Write one JSON event per line (the format ``embmon replay`` and the demo producer read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for event in events:
            out.write(orjson.dumps(event) + b"\n")
    return path


def _draw(
    pools: Mapping[str, _Pool],
    label_names: tuple[str, ...],
    prior: npt.NDArray[np.float64],
    day_start: datetime,
    n: int,
    share: float,
    id_prefix: str,
    model: str,
    rng: np.random.Generator,
) -> list[Event]:
    """``n`` events over one day, ``int(n * share)`` Spanish, topics drawn from the prior."""
    n_spanish = int(n * share)
    languages = rng.permutation(["en"] * (n - n_spanish) + ["es"] * n_spanish)
    targets = rng.choice(len(label_names), size=n, p=prior)
    events = []
    for i, (language, target, ts) in enumerate(
        zip(languages, targets, _timestamps(day_start, n, rng), strict=True)
    ):
        chosen = pools[str(language)]
        row = int(rng.choice(chosen.rows_of(label_names[target])))
        events.append(_event(chosen, row, str(language), f"{id_prefix}-{i:05d}", ts, model))
    return events


def _first_day(start: datetime | None, days: int) -> datetime:
    if start is None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=days)
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
    return start.astimezone(UTC)


def _conversations(language: str, stem: str) -> list[str]:
    """One document per conversation (its utterances joined), deduplicated on normalised text."""
    path = Path(DATA_DIRECTORY) / language / f"{stem}.yml"
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    seen: dict[str, str] = {}
    for conversation in loaded["conversations"]:
        text = " ".join(str(utterance).strip() for utterance in conversation)
        seen.setdefault(" ".join(text.lower().split()), text)
    return list(seen.values())


def _english_corpus(rng: np.random.Generator) -> tuple[list[str], npt.NDArray[np.str_]]:
    docs: list[str] = []
    labels: list[str] = []
    for label, (english, _) in TOPICS.items():
        topic_docs = _conversations("english", english)
        if len(topic_docs) > _MAX_PER_TOPIC:
            keep = np.sort(rng.choice(len(topic_docs), _MAX_PER_TOPIC, replace=False))
            topic_docs = [topic_docs[i] for i in keep]
        docs += topic_docs
        labels += [label] * len(topic_docs)
    return docs, np.array(labels)


def _spanish_corpus() -> tuple[list[str], npt.NDArray[np.str_]]:
    docs: list[str] = []
    labels: list[str] = []
    for label, (_, spanish) in TOPICS.items():
        topic_docs = _conversations("spanish", spanish)
        docs += topic_docs
        labels += [label] * len(topic_docs)
    return docs, np.array(labels)


def _stratified_split(
    labels: npt.NDArray[np.str_], rng: np.random.Generator
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Per-topic train / held-out indices, so every topic is on both sides."""
    train: list[int] = []
    held_out: list[int] = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_train = round(len(rows) * _TRAIN_FRACTION)
        train.extend(rows[:n_train].tolist())
        held_out.extend(rows[n_train:].tolist())
    return np.array(sorted(train), dtype=np.intp), np.array(sorted(held_out), dtype=np.intp)


def _dense(matrix: Any) -> npt.NDArray[np.float32]:
    return np.asarray(matrix.toarray(), dtype=np.float32)


def _b64(vector: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


def _timestamps(day_start: datetime, n: int, rng: np.random.Generator) -> list[float]:
    """``n`` sorted epoch seconds spread uniformly over the day (millisecond resolution)."""
    offsets = np.sort(rng.uniform(0.0, _DAY_SECONDS, size=n))
    return [round(day_start.timestamp() + float(offset), 3) for offset in offsets]


def _event(pool: _Pool, row: int, language: str, event_id: str, ts: float, model: str) -> Event:
    return {
        "event_id": event_id,
        "timestamp": ts,
        "model": model,
        "embedding_b64": pool.embeddings_b64[row],
        "tokens": list(pool.tokens[row]),
        "prediction": pool.predictions[row],
        "target": str(pool.labels[row]),
        "language": language,
    }
