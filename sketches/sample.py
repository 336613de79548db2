"""CoordinateSample: a bounded, mergeable uniform sample of a window's PCA coordinates.

Each sampled row holds an event's PCA coordinates and, in references that have them, its
residual probes (:func:`sketches.geometry.residual_probes`): the "coordinates" below are both.

Quantile sketches see one number per event at a time; a two-sample test on the joint
distribution (:mod:`sketches.mmd`) needs whole rows. This keeps a bottom-k (priority) sample:
each event's priority is a 64-bit hash of its embedding's float32 bytes (:func:`row_keys`),
equal rows are one entry with a count, and the sample keeps the ``capacity`` entries of
smallest priority.

Guarantee: while a window has at most ``capacity`` distinct rows, the sample *is* the window
(every distinct row with its exact count). Beyond that it holds ``capacity`` distinct rows
drawn uniformly without replacement (as far as the hash behaves as a random function;
priority collisions, at about ``rows**2 / 2**64`` for rows differing in their low mantissa
bits and ``rows**2 / 2**32`` at worst, would merge two rows into one entry), each with its
exact count, so the count-weighted sample is a consistent estimate of the window's
distribution with an effective size of about ``capacity``. The priority depends on the row
only, so merging the samples of a split window gives exactly the sample one pass over the
whole window keeps (the bottom k of a union is the bottom k of the union of bottom k's):
merge is exact, commutative and associative, and the empty sample is its identity. Merging
samples of different capacities keeps the smaller one, which is still exact.

Memory: ``capacity * (4 * columns + 16)`` bytes: 49 kB at 512 x 20, 311 kB at 512 x (20 + 128
probes), a built reference's default.

>>> import numpy as np
>>> x = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
>>> s = CoordinateSample(components=2, capacity=8)
>>> s.update(row_keys(x), x)
>>> len(s), sorted(s.counts.tolist())
(2, [1, 2])
>>> int(CoordinateSample.from_bytes(s.to_bytes()).merge(s).counts.sum())
6
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import IncompatibleSketchError
from .serial import pack, reading, unpack

__all__ = ["DEFAULT_CAPACITY", "REFERENCE_CAPACITY", "CoordinateSample", "row_keys"]

DEFAULT_CAPACITY = 512
REFERENCE_CAPACITY = 2048  # a reference keeps more rows: its sample is the kernel test's baseline
Keys = npt.NDArray[np.uint64]
F32 = npt.NDArray[np.float32]


def row_keys(vectors: npt.NDArray[Any]) -> Keys:
    """The priority of each row: a hash of its float32 bytes.

    A function of the row's content only, so a row gets the same priority in whichever
    process, batch or partition it is sketched. The hash is linear in the row's 32-bit words
    with fixed odd 64-bit multipliers (exact integer arithmetic: one matrix product, ~0.4 µs a
    384-d row where a BLAKE2b call a row took ~2.2 µs), then splitmix64's finaliser, so rows
    that differ a little get unrelated priorities.

    >>> keys = row_keys(np.array([[1.0, 2.0], [2.0, 1.0], [1.0, 2.0]]))
    >>> keys[0] == keys[2] != keys[1], keys[0] == row_keys(np.array([[1.0, 2.0]]))[0]
    (np.True_, np.True_)
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    words = x.view(np.uint32).astype(np.uint64)
    return _finalise(words @ _multipliers(x.shape[1]))


@functools.cache
def _multipliers(width: int) -> Keys:
    """Odd 64-bit constants, one per column: splitmix64's stream from 0, fixed for ever."""
    keys = _finalise(np.arange(1, width + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    keys |= np.uint64(1)
    keys.flags.writeable = False
    return keys


def _finalise(z: Keys) -> Keys:
    """splitmix64's finaliser (wrapping uint64 arithmetic): every input bit moves every output bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class CoordinateSample:
    """The ``capacity`` distinct rows of smallest priority, with their counts."""

    __slots__ = ("_memo", "capacity", "coords", "counts", "keys")

    def __init__(self, components: int, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a CoordinateSample needs a capacity of at least one row")
        self.capacity = capacity
        self.keys: Keys = np.zeros(0, dtype=np.uint64)
        self.counts = np.zeros(0, dtype=np.int64)
        self.coords: F32 = np.zeros((0, components), dtype=np.float32)
        self._memo: dict[str, Any] = {}

    @property
    def components(self) -> int:
        return int(self.coords.shape[1])

    @property
    def memo(self) -> dict[str, Any]:
        """Values derived from this sample (e.g. kernel terms); cleared when it changes."""
        return self._memo

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def entering(self, keys: Keys) -> npt.NDArray[np.bool_]:
        """Which of these priorities the sample could keep now: all while it has room, else
        those no larger than its largest kept one (equal ones add to a kept row's count)."""
        if len(self) < self.capacity:
            return np.ones(len(keys), dtype=bool)
        entering: npt.NDArray[np.bool_] = np.asarray(keys, dtype=np.uint64) <= self.keys[-1]
        return entering

    def update(self, keys: Keys, coords: F32) -> None:
        """Add events: their priorities (:func:`row_keys`) and PCA coordinates.

        Only rows that can enter are merged in: once the sample is full most batches have none,
        and then nothing is copied (a full 512 x 148 sample is 300 kB).
        """
        if coords.ndim != 2 or coords.shape[1] != self.components or len(keys) != len(coords):
            raise ValueError(f"expected one key per row of {self.components} coordinates")
        keys = np.asarray(keys, dtype=np.uint64)
        entering = self.entering(keys)
        if not entering.all():
            keys, coords = keys[entering], coords[entering]
        if len(keys) == 0:
            return
        self._set(
            *_bottom(
                np.concatenate([self.keys, keys]),
                np.concatenate([self.counts, np.ones(len(keys), dtype=np.int64)]),
                np.concatenate([self.coords, np.asarray(coords, dtype=np.float32)]),
                self.capacity,
            )
        )

    def merge(self, other: CoordinateSample) -> CoordinateSample:
        """A new sample of both windows' events; neither input changes."""
        if other.components != self.components:
            raise IncompatibleSketchError(
                f"coordinate samples differ in components ({self.components} vs {other.components})"
            )
        merged = CoordinateSample(self.components, min(self.capacity, other.capacity))
        merged._set(
            *_bottom(
                np.concatenate([self.keys, other.keys]),
                np.concatenate([self.counts, other.counts]),
                np.concatenate([self.coords, other.coords]),
                merged.capacity,
            )
        )
        return merged

    def _set(self, keys: Keys, counts: npt.NDArray[np.int64], coords: F32) -> None:
        self.keys, self.counts, self.coords = keys, counts, coords
        self._memo = {}

    def to_bytes(self) -> bytes:
        header = {"capacity": self.capacity, "components": self.components}
        blobs = [self.keys.tobytes(), self.counts.tobytes(), self.coords.tobytes()]
        return pack("coordinate_sample", header, blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> CoordinateSample:
        with reading("coordinate_sample"):
            header, (keys, counts, coords) = unpack(data, "coordinate_sample")
            sample = cls(int(header["components"]), int(header["capacity"]))
            k = np.frombuffer(keys, dtype=np.uint64).copy()
            n = np.frombuffer(counts, dtype=np.int64).copy()
            x = np.frombuffer(coords, dtype=np.float32).reshape(-1, sample.components).copy()
            if not len(k) == len(n) == len(x) <= sample.capacity or (n < 1).any():
                raise ValueError("entries disagree in length, exceed the capacity or count < 1")
            if len(k) > 1 and not (k[1:] > k[:-1]).all():
                raise ValueError("entries are not in increasing priority order")
            sample._set(k, n, x)
            return sample

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CoordinateSample) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CoordinateSample({len(self)} of {self.capacity} rows, {self.components} coords)"


def _bottom(
    keys: Keys, counts: npt.NDArray[np.int64], coords: F32, capacity: int
) -> tuple[Keys, npt.NDArray[np.int64], F32]:
    """Entries with equal keys combined (counts summed, the lexicographically smallest
    coordinates kept: the same row sketched in two batches may differ in its last bits), then
    the ``capacity`` smallest keys in increasing order: one canonical form for any input order."""
    order = np.argsort(keys, kind="stable")
    keys, counts, coords = keys[order], counts[order], coords[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    end = starts[capacity] if len(starts) > capacity else len(keys)
    keys, counts, coords = keys[:end], counts[:end], coords[:end]
    repeated = np.r_[keys[1:] == keys[:-1], False] | np.r_[False, keys[1:] == keys[:-1]]
    if repeated.any():  # order each run of equal keys by content (keys stay sorted)
        rows = np.flatnonzero(repeated)
        coords[rows] = coords[rows[np.lexsort((*coords[rows].T[::-1], keys[rows]))]]
    kept = starts[starts < end]
    return keys[kept], np.add.reduceat(counts, kept).astype(np.int64), coords[kept]
