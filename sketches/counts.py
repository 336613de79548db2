"""Exact counters: category counts and the confusion matrix. Error bound: none (exact).

>>> c = CategoryCounts()
>>> c.update(["a", "b", "a"])
>>> c.ratios()
{'a': 0.6666666666666666, 'b': 0.3333333333333333}
>>> m = ConfusionMatrix()
>>> m.update(["x", "y", "y"], ["x", "x", "y"])
>>> round(m.accuracy(), 3), round(m.f1_macro(), 3)
(0.667, 0.667)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import orjson

from .serial import pack, reading, unpack

__all__ = ["CategoryCounts", "ConfusionMatrix"]


class CategoryCounts:
    """Exact count per category label (closest centroid, predicted class, …)."""

    __slots__ = ("_counts",)

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self._counts: Counter[str] = Counter(counts or {})

    def update(self, items: Iterable[str]) -> None:
        self._counts.update(map(str, items))  # numpy str_ keys would not serialise

    def update_counts(self, labels: Sequence[str], counts: Iterable[int]) -> None:
        """Add ``counts[i]`` to ``labels[i]`` (a vectorised ``bincount`` feeds this)."""
        for label, count in zip(labels, counts, strict=True):
            if count:
                self._counts[str(label)] += int(count)

    def merge(self, other: CategoryCounts) -> CategoryCounts:
        return CategoryCounts(dict(self._counts + other._counts))

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))

    def ratios(self) -> dict[str, float]:
        total = self.total
        return {k: v / total for k, v in sorted(self._counts.items())} if total else {}

    def to_bytes(self) -> bytes:
        return pack("category_counts", {"counts": self.counts()}, [])

    @classmethod
    def from_bytes(cls, data: bytes) -> CategoryCounts:
        with reading("category_counts"):
            header, _ = unpack(data, "category_counts")
            return cls({str(k): int(v) for k, v in header["counts"].items()})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CategoryCounts) and self.counts() == other.counts()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CategoryCounts({self.counts()})"


class ConfusionMatrix:
    """Exact (target, prediction) counts, hence accuracy, precision, recall and F1.

    Macro averages run over every class seen as a target or a prediction, with 0 for a class
    that has no predictions (precision) or no targets (recall), as scikit-learn's
    ``f1_score(average="macro", zero_division=0)`` does.
    """

    __slots__ = ("_cells",)

    def __init__(self, cells: dict[tuple[str, str], int] | None = None) -> None:
        self._cells: Counter[tuple[str, str]] = Counter(cells or {})

    def update(self, targets: Sequence[str | None], predictions: Sequence[str | None]) -> None:
        """Count rows that carry both a target and a prediction; others are skipped."""
        self._cells.update(
            (t, p)
            for t, p in zip(targets, predictions, strict=True)
            if t is not None and p is not None
        )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return ConfusionMatrix(dict(self._cells + other._cells))

    @property
    def total(self) -> int:
        return sum(self._cells.values())

    def classes(self) -> list[str]:
        return sorted({c for cell in self._cells for c in cell})

    def accuracy(self) -> float:
        total = self.total
        return sum(v for (t, p), v in self._cells.items() if t == p) / total if total else 0.0

    def per_class(self) -> dict[str, dict[str, float]]:
        """precision, recall, f1 and support per class."""
        predicted: Counter[str] = Counter()
        actual: Counter[str] = Counter()
        hits: Counter[str] = Counter()
        for (target, prediction), count in self._cells.items():
            actual[target] += count
            predicted[prediction] += count
            if target == prediction:
                hits[target] += count
        result = {}
        for label in self.classes():
            precision = hits[label] / predicted[label] if predicted[label] else 0.0
            recall = hits[label] / actual[label] if actual[label] else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            result[label] = {
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "support": float(actual[label]),
            }
        return result

    def _macro(self, key: str) -> float:
        rows = self.per_class()
        return sum(r[key] for r in rows.values()) / len(rows) if rows else 0.0

    def f1_macro(self) -> float:
        return self._macro("f1")

    def precision_macro(self) -> float:
        return self._macro("precision")

    def recall_macro(self) -> float:
        return self._macro("recall")

    def to_bytes(self) -> bytes:
        cells = sorted([t, p, v] for (t, p), v in self._cells.items())
        return pack("confusion", {}, [orjson.dumps(cells)])

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfusionMatrix:
        with reading("confusion"):
            _, (blob,) = unpack(data, "confusion")
            return cls({(str(t), str(p)): int(v) for t, p, v in orjson.loads(blob)})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfusionMatrix) and self._cells == other._cells

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ConfusionMatrix(total={self.total}, classes={self.classes()})"
