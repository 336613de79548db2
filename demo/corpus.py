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

A document is one conversation (its utterances joined). The English documents of each topic
are dealt, in random order, into three pools that never share a document:

- training (40 %, at most 48 a topic, so no class outweighs another more than 4x): they train
  the classifier, fit the vectorizer, and fit the reference's PCA and centroids;
- reference (two thirds of the rest): one event each, which ``build_reference`` splits into the
  rows that profile the reference and the rows that calibrate its thresholds;
- traffic (the last third): the only English documents the seven days draw from.

So a clean day is scored on documents the reference has never seen, as in production: the
thresholds have to allow for a fresh sample of documents, not only for a fresh draw of the
same ones. The traffic pool is as large as the calibration rows, the sample the thresholds
were calibrated for. The Spanish documents, all of them, are traffic only.
One event per reference document (not a large sample drawn with replacement) keeps profile
and calibration rows apart too. A document that embeds like one of an earlier pool (its
distinguishing words are outside the training vocabulary) is dropped from the later one.
With 506 conversations in all the pools are small, so every conversation is used: the topic
mix is the corpus's (trivia is half of it) in the reference pool and in the traffic, and the
classifier is told that mix as its class prior, since its class-capped training set has
another.

>>> s = build_scenario(docs_per_day=200, seed=1, start=datetime(2026, 11, 20, tzinfo=UTC))
>>> s.label_names
('ai', 'emotion', 'money', 'psychology', 'trivia')
>>> [round(spanish_share(day), 2) for day in s.days]
[0.0, 0.0, 0.0, 0.0, 0.33, 0.66, 1.0]
>>> len(s.train_labels), len(s.reference_events)
(146, 237)
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
_TRAIN_FRACTION = 0.4
_MAX_TRAIN_PER_TOPIC = 48  # trivia has 261 conversations, money 30 (12 to train): within 4x
_REFERENCE_SHARE = 2 / 3  # of what training leaves; the rest is English traffic
# The seed's 0.01 lets one rare word decide a document; with ~150 training documents (the seed
# had thousands) more smoothing generalises better to documents it never saw.
_ALPHA = 0.1


@dataclass(frozen=True)
class Scenario:
    """Everything the demo needs: the reference's inputs and the days to replay.

    ``train_vectors``/``train_labels`` (the training documents) fit the reference's PCA and
    centroids; ``reference_events`` (each reference document once, on the day before the
    first) profile the reference and calibrate its thresholds; ``days[i]`` are the events of
    the day starting at ``day_starts[i]``, in time order, drawn from the traffic documents
    and the Spanish ones, which neither of the others has seen (see the module docstring).
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
) -> Scenario:
    """Train the seed's classifier on English topics and generate one event list per day.

    Each day draws about ``docs_per_day`` documents (times a random 0.8-1.0 volume factor,
    as in the seed), ``int(n * share)`` of them Spanish, the rest English traffic documents.
    Topics follow the reference documents' mix in both languages, so only the language drifts.
    ``start`` is the first day's UTC midnight; by default the days end at today's midnight.
    The result depends only on the arguments (and on today's date when ``start`` is None).
    """
    if docs_per_day < 1:
        raise ValueError(f"docs_per_day must be at least 1, got {docs_per_day}")
    if not all(0.0 <= share <= 1.0 for share in spanish_shares):
        raise ValueError(f"spanish_shares must lie in [0, 1], got {list(spanish_shares)}")
    first = _first_day(start, len(spanish_shares))
    rng = np.random.default_rng(seed)

    docs, labels = _corpus("english")
    train, reference, traffic = _split(labels, rng)
    vectorizer: Pipeline = Pipeline(
        [("vect", CountVectorizer(max_features=max_features)), ("tfidf", TfidfTransformer())]
    )
    train_vectors = _dense(vectorizer.fit_transform([docs[i] for i in train]))
    seen = {row.tobytes() for row in train_vectors}
    reference, traffic = (
        _unseen(rows, _dense(vectorizer.transform([docs[i] for i in rows])), seen)
        for rows in (reference, traffic)
    )
    label_names = tuple(str(name) for name in np.unique(labels))
    prior = np.array([np.mean(labels[reference] == name) for name in label_names])
    classifier = MultinomialNB(alpha=_ALPHA, class_prior=prior).fit(train_vectors, labels[train])
    analyzer = CountVectorizer(stop_words="english").build_analyzer()

    def pool(texts: list[str], pool_labels: npt.NDArray[np.str_]) -> _Pool:
        vectors = _dense(vectorizer.transform(texts))
        return _Pool(
            labels=pool_labels,
            embeddings_b64=[_b64(row) for row in vectors],
            tokens=[list(analyzer(text)) for text in texts],
            predictions=[str(p) for p in classifier.predict(vectors)],
        )

    spanish_docs, spanish_labels = _corpus("spanish")
    pools = {
        "en": pool([docs[i] for i in traffic], labels[traffic]),
        "es": pool(spanish_docs, spanish_labels),
    }
    reference_events = _once_each(
        pool([docs[i] for i in reference], labels[reference]),
        first - timedelta(days=1),
        f"{model}-reference",
        model,
        rng,
    )
    day_starts = tuple(first + timedelta(days=d) for d in range(len(spanish_shares)))
    turns = _Turns(pools, rng)
    days = [
        _draw(
            turns,
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


class _Turns:
    """Each pool's documents of a topic in turn, reshuffled once every one has come up.

    Drawn independently, the few documents of a small topic come up unevenly: one
    misclassified money document drawn five times in a day moves its macro F1 by points.
    Taken in turn, every traffic document weighs alike, day after day.
    """

    def __init__(self, pools: Mapping[str, _Pool], rng: np.random.Generator) -> None:
        self.pools = pools
        self._rng = rng
        self._queues: dict[tuple[str, str], list[int]] = {}

    def next(self, language: str, label: str) -> int:
        queue = self._queues.setdefault((language, label), [])
        if not queue:
            queue.extend(self._rng.permutation(self.pools[language].rows_of(label)).tolist())
        return queue.pop()


def _draw(
    turns: _Turns,
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
        row = turns.next(str(language), label_names[target])
        event = _event(
            turns.pools[str(language)], row, str(language), f"{id_prefix}-{i:05d}", ts, model
        )
        events.append(event)
    return events


def _once_each(
    pool: _Pool, day_start: datetime, id_prefix: str, model: str, rng: np.random.Generator
) -> list[Event]:
    """One English event per document of ``pool``, in random order over one day."""
    rows = rng.permutation(len(pool.labels))
    times = _timestamps(day_start, len(rows), rng)
    return [
        _event(pool, int(row), "en", f"{id_prefix}-{i:05d}", ts, model)
        for i, (row, ts) in enumerate(zip(rows, times, strict=True))
    ]


def _first_day(start: datetime | None, days: int) -> datetime:
    if start is None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=days)
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
    return start.astimezone(UTC)


def _corpus(language: str) -> tuple[list[str], npt.NDArray[np.str_]]:
    """One document per conversation of each topic's file, deduplicated on its words.

    Two conversations with the same words embed alike whatever the vocabulary: kept both, one
    could train the classifier while the other, as traffic, would be a document already seen.
    """
    column = 0 if language == "english" else 1
    words = CountVectorizer().build_analyzer()
    seen: set[str] = set()
    docs: list[str] = []
    labels: list[str] = []
    for label, files in TOPICS.items():
        path = Path(DATA_DIRECTORY) / language / f"{files[column]}.yml"
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            text = " ".join(str(utterance).strip() for utterance in conversation)
            key = " ".join(sorted(words(text)))
            if key not in seen:
                seen.add(key)
                docs.append(text)
                labels.append(label)
    return docs, np.array(labels)


def _split(
    labels: npt.NDArray[np.str_], rng: np.random.Generator
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Per-topic training / reference / traffic indices, disjoint, every topic in all three."""
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_train = min(round(len(rows) * _TRAIN_FRACTION), _MAX_TRAIN_PER_TOPIC)
        n_reference = round((len(rows) - n_train) * _REFERENCE_SHARE)
        cuts = [n_train, n_train + n_reference]
        for part, chunk in zip(parts, np.split(rows, cuts), strict=True):
            part.extend(chunk.tolist())
    train, reference, traffic = (np.array(sorted(part), dtype=np.intp) for part in parts)
    return train, reference, traffic


def _unseen(
    rows: npt.NDArray[np.intp], vectors: npt.NDArray[np.float32], seen: set[bytes]
) -> npt.NDArray[np.intp]:
    """The ``rows`` whose embedding is not in ``seen`` yet (and adds theirs to it).

    Distinct conversations can embed alike when the words that tell them apart are outside the
    training vocabulary; to the monitor such a document is one it has already seen.
    """
    keep = []
    for row, vector in zip(rows, vectors, strict=True):
        key = vector.tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(row)
    return np.array(keep, dtype=np.intp)


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
