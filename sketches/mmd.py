"""Kernel two-sample statistic between a window's coordinate sample and the reference's.

Per-column statistics (KS on distances and residuals, centroid mixes) miss a shift that moves
the joint distribution but few marginals, such as a new kind of input landing between known
centroids. The maximum mean discrepancy (Gretton et al., 2012) with a Gaussian kernel sees any
difference between two distributions. It is computed on the two
:class:`~sketches.sample.CoordinateSample` s (rows of PCA coordinates and residual probes),
over their *distinct* rows, one weight each:

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y),  k(a, b) = exp(-|a - b|^2 / (2 s^2))

with each within-sample term averaged over pairs of distinct rows (the unbiased form, so a
clean window scores about 0 whatever its size), and the bandwidth ``s`` the median distance
between the reference sample's rows (the median heuristic): a function of the reference alone,
fixed once it is built. No p-value is computed here: like every metric, the score is judged
by a threshold calibrated per window size (:mod:`sketches.calibration`), from the scores
:func:`split_null` draws.

Why distinct rows: repeats concentrate a window's weight on few rows, which widens the
statistic's spread well beyond a window of as many distinct rows, so a window drawn from a
small pool, or traffic with popular requests, would alarm though its rows are the reference's
kind. A stream that repeats one embedding (a broken upstream sending a default vector) still
shows in the count-based metrics (closest centroid, distances, residual).

Why its own null: the calibration's bootstrap windows repeat held-out rows (a window of 1,000
from 564 rows holds each about twice), and a resampled population adds its own deviation, so
their MMD scores spread several times wider than a fresh window's (on e5 chat embeddings,
clean windows of 1,000 scored at -0.8 to -0.4 of a bootstrap threshold). :func:`split_null`
is a permutation test's null instead: the reference sample's rows and held-out rows are one
pool of exchangeable rows (all scored out of fold), split at random into a pseudo-reference
and a window of distinct rows, as a window's sample holds them. A built reference's sample
holds its held-out rows too (:mod:`sketches.reference`), so the live test compares a window
with every reference row, and the null's pseudo-reference is what the pool leaves beside the
window: a little smaller, so a little wider (conservative).

Cost: one ``m x r`` and one ``m x m`` kernel matrix (``m``, ``r`` the sample sizes), a few
milliseconds at 512 x 1,129; the reference's own term and bandwidth are computed once and kept
in its sample's memo.

>>> import numpy as np
>>> from sketches.sample import CoordinateSample, row_keys
>>> def sample(x):
...     s = CoordinateSample(x.shape[1], capacity=1000)
...     s.update(row_keys(x), x)
...     return s
>>> rng = np.random.default_rng(0)
>>> ref = sample(rng.normal(0, 1, (400, 3)).astype(np.float32))
>>> same = sample(rng.normal(0, 1, (300, 3)).astype(np.float32))
>>> moved = sample(rng.normal(0.5, 1, (300, 3)).astype(np.float32))
>>> abs(sample_mmd(same, ref)) < 0.01 < sample_mmd(moved, ref)
True
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .blas import one_blas_thread
from .sample import CoordinateSample

__all__ = ["sample_mmd", "split_null"]

POOL_HOLDOUT_ROWS = 1024  # held-out rows in split_null's pool at most: its kernel is pool^2

F32 = npt.NDArray[np.float32]


def _kernel(a: F32, b: F32, bandwidth: float) -> F32:
    """Gaussian kernel matrix, in float32 (half the time of float64; scores need ~1e-6)."""
    k: F32 = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :]
    k -= 2.0 * (a @ b.T)
    np.maximum(k, 0.0, out=k)
    k *= np.float32(-0.5 / (bandwidth * bandwidth))
    return np.exp(k, out=k)


def _within(kernel: F32) -> float:
    """Mean kernel value over pairs of distinct rows (the diagonal, a row with itself, left out)."""
    rows = int(kernel.shape[0])
    if rows < 2:
        return 1.0
    return (float(kernel.sum(dtype=np.float64)) - rows) / (rows * (rows - 1))


def _reference_terms(reference: CoordinateSample) -> tuple[float, float]:
    """The bandwidth (median heuristic) and the reference's within term, computed once."""
    terms = reference.memo.get("mmd")
    if terms is None:
        y = reference.coords
        wide = y.astype(np.float64)
        squares = np.einsum("ij,ij->i", wide, wide)
        gram = squares[:, None] + squares[None, :] - 2.0 * (wide @ wide.T)  # m x m only:
        upper = np.triu(np.ones(gram.shape, dtype=bool), k=1)  # not one row per pair (40 MB)
        distances = np.sqrt(np.maximum(gram[upper], 0.0))
        median = float(np.median(distances)) if distances.size else 0.0
        bandwidth = median if median > 0 else 1.0
        terms = (bandwidth, _within(_kernel(y, y, bandwidth)))
        reference.memo["mmd"] = terms
    return terms


def sample_mmd(window: CoordinateSample, reference: CoordinateSample) -> float:
    """The unbiased squared MMD between the two samples' distinct rows."""
    with one_blas_thread():  # a 512 x 148 x 565 product: two threads only add a hand-off
        bandwidth, within_reference = _reference_terms(reference)
        x = window.coords
        cross = float(_kernel(x, reference.coords, bandwidth).mean(dtype=np.float64))
        return _within(_kernel(x, x, bandwidth)) + within_reference - 2.0 * cross


def split_null(
    reference: CoordinateSample,
    holdout: F32,
    holdout_keys: npt.NDArray[np.uint64],
    window_rows: int,
    rounds: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64] | None:
    """``rounds`` null scores of :func:`sample_mmd` for a window whose sample holds
    ``window_rows`` distinct rows, from random splits of the pool of reference and held-out
    rows; None when the pool is too small to split.

    Rows are distinct by their sample priority (held-out rows already in the reference sample,
    as a built reference's are, join once) and weigh one each. A split needs the
    pseudo-reference's rows plus the window's: the pseudo-reference takes the reference
    sample's size if the pool leaves that many beside the window, and fewer otherwise (a
    wider, conservative null: the live test compares with the full reference sample). Each
    round is two weight vectors over the pool's kernel: all rounds are two matrix products.

    >>> from sketches.sample import row_keys
    >>> rng = np.random.default_rng(0)
    >>> ref = CoordinateSample(2, capacity=300)
    >>> y = rng.normal(size=(200, 2)).astype(np.float32)
    >>> ref.update(row_keys(y), y)
    >>> x = rng.normal(size=(200, 2)).astype(np.float32)
    >>> null = split_null(ref, x, row_keys(x), 100, 500, rng)
    >>> null.shape, bool(abs(null.mean()) < 0.01 < np.quantile(null, 0.99))
    ((500,), True)
    """
    with one_blas_thread():
        bandwidth, _ = _reference_terms(reference)
        fresh = ~np.isin(holdout_keys, reference.keys)
        _, first = np.unique(holdout_keys[fresh], return_index=True)
        extra = np.asarray(holdout[fresh][first], dtype=np.float32)
        if len(extra) > POOL_HOLDOUT_ROWS:
            extra = extra[rng.choice(len(extra), POOL_HOLDOUT_ROWS, replace=False)]
        pool = np.concatenate([reference.coords, extra])
        w = min(window_rows, len(pool) // 2)
        m = min(len(reference), len(pool) - w)
        if m < 2 or w < 2:
            return None
        order = np.argsort(rng.random((rounds, len(pool))), axis=1)
        columns = np.arange(rounds)[:, None]
        a = np.zeros((len(pool), rounds), dtype=np.float32)
        b = np.zeros((len(pool), rounds), dtype=np.float32)
        a[order[:, :m], columns] = 1.0 / m
        b[order[:, m : m + w], columns] = 1.0 / w
        kernel = _kernel(pool, pool, bandwidth)
        ka, kb = kernel @ a, kernel @ b
        within_a = (np.einsum("ij,ij->j", a, ka) - 1.0 / m) / (1.0 - 1.0 / m)
        within_b = (np.einsum("ij,ij->j", b, kb) - 1.0 / w) / (1.0 - 1.0 / w)
        cross = np.einsum("ij,ij->j", a, kb)
        null: npt.NDArray[np.float64] = (within_a + within_b - 2.0 * cross).astype(np.float64)
        return null
