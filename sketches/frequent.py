"""Term sketches: frequent items (DataSketches frequent_strings) and distinct count (HLL).

Error bounds: a frequent-items estimate is within ``epsilon * total_weight`` of the true count
(epsilon = 3.5/2**lg_max_k; 0.34 % of the weight at the default ``lg_max_k=10``), and exact
while fewer than 0.75 * 2**lg_max_k distinct items were seen. The HLL distinct count has a
relative standard error of about 1.04/sqrt(2**lg_k) (1.6 % at ``lg_k=12``).

>>> f = FrequentItems()
>>> f.update_counts(["de", "la", "de"], [3, 1, 2])
>>> f.top(1)
[('de', 5)]
>>> d = DistinctCount()
>>> d.update(["a", "b", "a"])
>>> round(d.estimate())
2
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import datasketches as ds

from .errors import IncompatibleSketchError
from .serial import pack, reading, unpack

__all__ = ["DistinctCount", "FrequentItems"]

_NO_FALSE_POSITIVES = ds.frequent_items_error_type.NO_FALSE_POSITIVES


class FrequentItems:
    """Heavy hitters over weighted string items."""

    __slots__ = ("_lg_max_k", "_sketch", "_total")

    def __init__(self, lg_max_k: int = 10) -> None:
        self._lg_max_k = lg_max_k
        self._sketch = ds.frequent_strings_sketch(lg_max_k)
        # Kept here, not read from the sketch: a DataSketches frequent-items sketch whose purge
        # cleared every counter serialises as empty and merges as nothing, losing its weight
        # (apache/datasketches-cpp#527).
        self._total = 0

    @property
    def total_weight(self) -> int:
        return self._total

    @property
    def error_bound(self) -> float:
        """Largest absolute error of any count estimate, given the weight seen so far."""
        return float(self._sketch.epsilon) * self.total_weight

    def update_counts(self, items: Sequence[str], counts: Iterable[int]) -> None:
        for item, count in zip(items, counts, strict=True):
            self._sketch.update(item, int(count))
            self._total += int(count)

    def merge(self, other: FrequentItems) -> FrequentItems:
        if other._lg_max_k != self._lg_max_k:
            raise IncompatibleSketchError("frequent-items sketches differ in lg_max_k")
        merged = FrequentItems.from_bytes(self.to_bytes())
        merged._sketch.merge(other._sketch)
        merged._total += other._total
        return merged

    def top(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` most frequent items with their estimated counts, most frequent first."""
        rows = self._sketch.get_frequent_items(_NO_FALSE_POSITIVES)
        rows.sort(key=lambda row: (-row[1], row[0]))
        return [(str(item), int(estimate)) for item, estimate, _, _ in rows[:n]]

    def estimate(self, item: str) -> int:
        return int(self._sketch.get_estimate(item))

    def to_bytes(self) -> bytes:
        header = {"lg_max_k": self._lg_max_k, "total": self._total}
        return pack("frequent_items", header, [bytes(self._sketch.serialize())])

    @classmethod
    def from_bytes(cls, data: bytes) -> FrequentItems:
        with reading("frequent_items"):
            header, (blob,) = unpack(data, "frequent_items")
            sketch = cls(int(header["lg_max_k"]))
            sketch._sketch = ds.frequent_strings_sketch.deserialize(blob)
            sketch._total = int(header["total"])
            return sketch

    def _content(self) -> tuple[int, int, list[tuple[str, int, int, int]]]:
        rows = self._sketch.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES)
        return self._lg_max_k, self.total_weight, sorted(rows)

    def __eq__(self, other: object) -> bool:
        # by content: the serialised map's slot order depends on the insertion history
        return isinstance(other, FrequentItems) and self._content() == other._content()

    __hash__ = None  # type: ignore[assignment]


class DistinctCount:
    """HyperLogLog estimate of the number of distinct strings."""

    __slots__ = ("_lg_k", "_sketch")

    def __init__(self, lg_k: int = 12) -> None:
        self._lg_k = lg_k
        self._sketch = ds.hll_sketch(lg_k)

    @property
    def relative_error(self) -> float:
        """Relative error bound at two standard deviations (about 95 % confidence)."""
        return abs(float(ds.hll_sketch.get_rel_err(True, True, self._lg_k, 2)))

    def update(self, items: Iterable[str]) -> None:
        for item in items:
            # a fixed prefix keeps items distinct and makes "" countable (HLL ignores "")
            self._sketch.update("\x1f" + item)

    def merge(self, other: DistinctCount) -> DistinctCount:
        if other._lg_k != self._lg_k:
            raise IncompatibleSketchError("distinct-count sketches differ in lg_k")
        union = ds.hll_union(self._lg_k)
        union.update(self._sketch)
        union.update(other._sketch)
        merged = DistinctCount(self._lg_k)
        merged._sketch = union.get_result()
        return merged

    def estimate(self) -> float:
        return float(self._sketch.get_estimate())

    def to_bytes(self) -> bytes:
        return pack("distinct", {"lg_k": self._lg_k}, [bytes(self._sketch.serialize_compact())])

    @classmethod
    def from_bytes(cls, data: bytes) -> DistinctCount:
        with reading("distinct"):
            header, (blob,) = unpack(data, "distinct")
            sketch = cls(int(header["lg_k"]))
            sketch._sketch = ds.hll_sketch.deserialize(blob)
            return sketch

    def __eq__(self, other: object) -> bool:
        # by estimate: HLL coupon storage order depends on the insertion history
        return (
            isinstance(other, DistinctCount)
            and self._lg_k == other._lg_k
            and self.estimate() == other.estimate()
        )

    __hash__ = None  # type: ignore[assignment]
