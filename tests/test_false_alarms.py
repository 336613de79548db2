"""Calibrated thresholds keep their promise: clean windows are flagged at most ``alpha`` of the time.

The reference is built (at alpha = 0.05) from the build split of ``load_digits``: its PCA and
centroids are fitted on every build row, and its profile and thresholds come from the same
rows scored out of fold (cross-fitting), the case where calibrating on fitted rows would alarm
on clean data. Clean windows are drawn from the test split, rows ``build_reference`` never
saw, and a window counts as a false alarm when *any* metric fires. The assertion is a one-sided binomial test of the
observed count against ``alpha`` at p = 0.001, so a correct calibration fails it about once in
a thousand runs, while a rate of twice ``alpha`` is caught almost surely.

Small windows (30 events) are drawn without replacement from the test pool. Large windows
(3,000 events) are larger than the whole pool (629 rows), so they are drawn with replacement:
those windows are independent given the pool, and the test then checks the rate a user whose
production traffic looked like this pool would see.

Digits carry no text or predictions, so the same test runs on English chat lines too
(``tests/data/chat_e5.npz``): each event carries its words and the topic a classifier
predicts, so every metric, ``doc_length``, ``term_length``, ``frequent_terms`` and
``prediction`` included, is judged in windows of 30 and of 1,000.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import binomtest

from agent.values import tokenize
from sketches.batch import EventBatch
from sketches.calibration import Calibration
from sketches.drift import evaluate
from sketches.geometry import Distance
from sketches.reference import Reference, build_reference
from tests.sketch_helpers import chat, digits, drifted

ALPHA = 0.05
P_VALUE = 0.001
SIZES = (10, 30, 100, 300, 1000, 3000)
WINDOWS = {30: 1000, 3000: 400}  # window size: number of clean windows judged


@dataclass(frozen=True)
class Rate:
    size: int
    windows: int
    alarms: int
    by_metric: dict[str, int]

    @property
    def rate(self) -> float:
        return self.alarms / self.windows

    def __str__(self) -> str:
        return (
            f"n={self.size}: {self.alarms}/{self.windows} = {self.rate:.3f} clean windows "
            f"flagged (alpha {ALPHA}); by metric {dict(sorted(self.by_metric.items()))}"
        )


@functools.cache
def _reference(distance: Distance) -> Reference:
    d = digits()
    return build_reference(
        EventBatch.from_vectors(d.x[d.build]),
        d.y[d.build],
        distance=distance,
        alpha=ALPHA,
        sizes=SIZES,
        seed=0,
    )


@pytest.fixture(scope="module", params=["cosine", "euclidean"])
def reference(request: pytest.FixtureRequest) -> Reference:
    return _reference(request.param)


def _false_alarms(reference: Reference, size: int, windows: int, seed: int) -> Rate:
    d = digits()
    rng = np.random.default_rng(seed)
    alarms, by_metric = 0, Counter[str]()
    for _ in range(windows):
        rows = rng.choice(d.test, size, replace=size > d.test.size)
        window = reference.new_profile()
        window.update(EventBatch.from_vectors(d.x[rows]))
        fired = drifted(evaluate(window, reference))
        alarms += bool(fired)
        by_metric.update(fired)
    return Rate(size, windows, alarms, dict(by_metric))


@pytest.mark.parametrize("size", sorted(WINDOWS))
def test_clean_windows_are_flagged_at_most_alpha_of_the_time(
    reference: Reference, size: int
) -> None:
    assert reference.calibration.alpha == ALPHA
    assert reference.info["rows"]["fit"] == digits().build.size  # fitted on every build row
    assert reference.threshold("closest_centroid", size) is not None
    rate = _false_alarms(reference, size, WINDOWS[size], seed=size)
    p = binomtest(rate.alarms, rate.windows, ALPHA, alternative="greater").pvalue
    assert p > P_VALUE, f"{reference.distance}: {rate}; binomial p = {p:.2g}"


def test_the_smallest_windows_are_flagged_at_most_alpha_of_the_time() -> None:
    reference = _reference("cosine")
    rate = _false_alarms(reference, 10, 2000, seed=10)
    p = binomtest(rate.alarms, rate.windows, ALPHA, alternative="greater").pvalue
    assert p > P_VALUE, f"{reference.distance}: {rate}; binomial p = {p:.2g}"


def test_the_test_would_catch_a_miscalibrated_reference(reference: Reference) -> None:
    """The same check fails when every threshold is halved: the test can fail."""
    thresholds = {m: tuple(v / 2 for v in vs) for m, vs in reference.calibration.thresholds.items()}
    halved = Reference(
        reference.space,
        reference.profile,
        Calibration(
            ALPHA,
            reference.calibration.sizes,
            thresholds,
            reference.calibration.rounds,
            reference.calibration.rows,
        ),
        reference.statistic,
        reference.method,
    )
    rate = _false_alarms(halved, 30, WINDOWS[30], seed=30)
    p = binomtest(rate.alarms, rate.windows, ALPHA, alternative="greater").pvalue
    assert p <= P_VALUE, f"halved thresholds still pass: {rate}"


# ---------------------------------------------------------------------------------------------
# every metric, text and predictions included: chat lines with their words, and the topic a
# classifier predicts for each


CHAT_WINDOWS = {30: 600, 1000: 200}  # window size: clean windows judged (753 test lines)
TEXT_AND_PREDICTIONS = {"doc_length", "term_length", "frequent_terms", "prediction"}


@dataclass(frozen=True)
class ChatEvents:
    build: EventBatch
    test: EventBatch


@functools.cache
def _chat_events() -> ChatEvents:
    """English chat lines as events carrying their words (the agent's tokenizer), the topic a
    logistic regression predicts and the true topic. The build lines' predictions are
    cross-validated, as a model's predictions on data it did not train on are; the test lines'
    come from the model fitted on every build line."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    c = chat()
    model = LogisticRegression(max_iter=2000)
    x_build, y_build = c.x[c.build], c.topic[c.build]
    predicted = {
        "build": cross_val_predict(model, x_build, y_build, cv=5),
        "test": model.fit(x_build, y_build).predict(c.x[c.test]),
    }

    def events(part: str, rows: npt.NDArray[np.intp]) -> EventBatch:
        return EventBatch(
            c.x[rows],
            np.zeros(rows.size),
            tokens=[tokenize(str(s)) for s in c.sentences[rows]],
            predictions=[str(p) for p in predicted[part]],
            targets=[str(t) for t in c.topic[rows]],
        )

    return ChatEvents(events("build", c.build), events("test", c.test))


@functools.cache
def _chat_reference() -> Reference:
    return build_reference(
        _chat_events().build, None, method="pca-kmeans", alpha=ALPHA, sizes=SIZES[:-1], seed=0
    )


@pytest.mark.parametrize("size", sorted(CHAT_WINDOWS))
def test_clean_chat_with_text_and_predictions_is_flagged_at_most_alpha_of_the_time(
    size: int,
) -> None:
    reference, test = _chat_reference(), _chat_events().test
    rng = np.random.default_rng(size)
    alarms, by_metric, judged = 0, Counter[str](), set[str]()
    for _ in range(CHAT_WINDOWS[size]):
        window = reference.new_profile()
        window.update(test.take(rng.choice(len(test), size, replace=size > len(test))))
        results = evaluate(window, reference)
        judged |= {m for m, r in results.items() if r.threshold is not None}
        fired = drifted(results)
        alarms += bool(fired)
        by_metric.update(fired)
    rate = Rate(size, CHAT_WINDOWS[size], alarms, dict(by_metric))
    assert judged >= TEXT_AND_PREDICTIONS, judged
    p = binomtest(rate.alarms, rate.windows, ALPHA, alternative="greater").pvalue
    assert p > P_VALUE, f"chat: {rate}; binomial p = {p:.2g}"
