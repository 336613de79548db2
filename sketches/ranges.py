"""Events outside the training range: per coordinate, the span the reference rows cover.

A broken upstream transform (a unit change, a missing normalisation, values that were never
possible) puts coordinates where no training row ever had one, and a data-quality check of
any kind starts there. This sketch counts, per window, the events with at least one
coordinate outside ``[min, max]`` of the rows the reference space was fitted on, and how
often each coordinate was outside. Exact; merge adds.

In high dimensions clean events leave a narrow range now and then (a row of 384 continuous
coordinates is outside some coordinate's extremes about half the time): the calibrated
threshold absorbs that rate, so the metric speaks only when a window leaves the range far
more often than clean traffic does.

>>> import numpy as np
>>> counts = RangeCounts(2)
>>> counts.update(np.array([[False, False], [True, False], [True, True]]))
>>> counts.rows, counts.outside, round(counts.share(), 3), counts.per_coordinate.tolist()
(3, 2, 0.667, [2, 1])
>>> RangeCounts.from_bytes(counts.to_bytes()).merge(counts).outside
4
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .errors import IncompatibleSketchError
from .serial import pack, reading, unpack

__all__ = ["RangeCounts", "outside_range"]


def outside_range(
    x: npt.NDArray[np.float32], low: npt.NDArray[np.float32], high: npt.NDArray[np.float32]
) -> npt.NDArray[np.bool_]:
    """Which coordinates of each row lie outside ``[low, high]`` (NaN is never outside:
    rows with NaN are counted as invalid before they reach a sketch)."""
    outside: npt.NDArray[np.bool_] = np.less(x, low)
    outside |= np.greater(x, high)
    return outside


class RangeCounts:
    """Rows seen, rows with a coordinate out of range, and out-of-range counts per coordinate."""

    __slots__ = ("outside", "per_coordinate", "rows")

    def __init__(self, dims: int) -> None:
        self.rows = 0
        self.outside = 0
        self.per_coordinate = np.zeros(dims, dtype=np.int64)

    @property
    def dims(self) -> int:
        """Coordinates checked; 0 for a reference without a range (built before it existed)."""
        return int(self.per_coordinate.shape[0])

    def update(self, outside: npt.NDArray[np.bool_]) -> None:
        """Add rows given as their :func:`outside_range` mask, shape ``(n, dims)``."""
        if outside.shape[1] != self.dims:
            raise IncompatibleSketchError(
                f"range mask has {outside.shape[1]} coordinates, the sketch {self.dims}"
            )
        self.rows += int(outside.shape[0])
        if self.dims:
            self.outside += int(np.count_nonzero(outside.any(axis=1)))
            # a byte sum into uint32 (a batch has far fewer than 2**32 rows): twice as fast
            # as count_nonzero along an axis
            self.per_coordinate += outside.view(np.uint8).sum(axis=0, dtype=np.uint32)

    def share(self) -> float:
        """The share of rows with some coordinate out of range (0 for no rows)."""
        return self.outside / self.rows if self.rows else 0.0

    def merge(self, other: RangeCounts) -> RangeCounts:
        if other.dims != self.dims:
            raise IncompatibleSketchError(
                f"range counts of {self.dims} and {other.dims} coordinates cannot merge"
            )
        merged = RangeCounts(self.dims)
        merged.rows = self.rows + other.rows
        merged.outside = self.outside + other.outside
        merged.per_coordinate = self.per_coordinate + other.per_coordinate
        return merged

    def to_bytes(self) -> bytes:
        header = {"rows": self.rows, "outside": self.outside, "dims": self.dims}
        return pack("range_counts", header, [self.per_coordinate.tobytes()])

    @classmethod
    def from_bytes(cls, data: bytes) -> RangeCounts:
        with reading("range_counts"):
            header, (per_coordinate,) = unpack(data, "range_counts")
            counts = cls(int(header["dims"]))
            counts.rows = int(header["rows"])
            counts.outside = int(header["outside"])
            counts.per_coordinate = np.frombuffer(per_coordinate, dtype=np.int64).copy()
            if counts.per_coordinate.shape[0] != int(header["dims"]):
                raise ValueError("per-coordinate counts do not match the header's dims")
            return counts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeCounts) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]
