"""BufferedProfile: one event at a time gives the profile of the whole batch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sketches.batch import EventBatch
from sketches.buffer import BufferedProfile
from sketches.errors import IncompatibleSketchError
from sketches.geometry import EmbeddingSpace
from sketches.profile import WindowProfile

SPACE = EmbeddingSpace(
    centroids=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32),
    labels=("a", "b", "c"),
    distance="euclidean",
    mean=np.zeros(3, np.float32),
    components=np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32),
)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(min_value=0, max_value=150),
    block=st.integers(min_value=1, max_value=64),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_events_one_at_a_time_equal_the_whole_batch(rows: int, block: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    labels = [str(v) for v in rng.choice(["a", "b", "c"], size=rows)]
    tokens = [["de", "la"] if i % 3 else None for i in range(rows)]
    buffered = BufferedProfile(WindowProfile.empty(SPACE, "v"), block=block)
    for i in range(rows):
        buffered.add(x[i], timestamp=float(i), tokens=tokens[i], prediction=labels[i], target="a")
    whole = WindowProfile.empty(SPACE, "v")
    if rows:
        whole.update(
            EventBatch(
                x,
                np.arange(rows, dtype=np.float64),
                tokens=tokens,
                predictions=labels,
                targets=["a"] * rows,
            )
        )
    got = buffered.profile
    # fewer than k=200 values per column: the KLL sketches are exact, so everything is equal
    assert got == whole
    assert got.count == rows


def test_a_profile_read_from_bytes_cannot_be_buffered() -> None:
    profile = WindowProfile.from_bytes(WindowProfile.empty(SPACE, "v").to_bytes())
    with pytest.raises(IncompatibleSketchError):
        BufferedProfile(profile)
