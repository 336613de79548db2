"""Reference: what "normal" looks like, built once from training data, loaded by every agent.

A reference holds the embedding space (centroids with names, distance, PCA subspace), the
profile of reference traffic, and drift thresholds calibrated for every window size (see
:mod:`sketches.calibration`). Its version is a content hash, so windows always say which
reference judged them.

The space is fitted on *all* the training rows given, so ``pca-centroids`` gives whylogs'
``PCACentroidsSelector`` centroids for the same input. The profile and the thresholds must
not come from rows scored by a fit that saw them: such rows sit closer to the subspace and
to the centroids than fresh traffic does, and thresholds calibrated on them alarm on clean
windows. So the rows are cross-fitted: they are dealt into ``folds`` folds (stratified by
label), and each fold is scored by the same recipe fitted on the other folds only (k-means
started from the final centroids, so cluster ``i`` keeps its meaning; coordinates mapped into
the final PCA basis). Every row thus gets the features a new row would get from a space fit
on (K-1)/K of the rows; that space is only slightly worse than the final one (the gap
shrinks like 1/K; on digits, 5 folds leave about a tenth of the fitted-row bias). Those out-of-fold rows are then split once more (stratified): the
``profile`` part makes the reference profile, and the ``holdout`` part, used for nothing
else, calibrates the thresholds against it, so the calibration also sees the profile's own
sampling error. Each part is about half the rows (``profile_share : holdout``), not a quarter.

With ``fit_rows`` (e.g. the model's own training set) the space is fitted on those rows
instead, and the rows given are not seen by the fit: they are scored directly and only split
into profile and holdout.

Numeric labels (``0, 1, ..., 10``, as numbers or digit strings) are ordered as numbers, like
whylogs' selector; other labels follow them in string order. Names are always strings.

>>> import numpy as np
>>> from sketches.batch import EventBatch
>>> rng = np.random.default_rng(0)
>>> x = np.vstack([rng.normal(m, 1, (200, 8)) for m in (0, 3)]).astype(np.float32)
>>> y = np.repeat(["a", "b"], 200)
>>> ref = build_reference(EventBatch.from_vectors(x), y, method="pca-centroids",
...                       components=4, rounds=50, sizes=(10, 100))
>>> ref.space.labels, ref.dim, ref.version.startswith("sha256:")
(('a', 'b'), 8, True)
>>> ref.info["rows"]
{'fit': 400, 'profile': 200, 'holdout': 200, 'folds': 5}
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson

from .batch import EventBatch
from .calibration import DEFAULT_SIZES, Calibration, calibrate
from .drift import CategoricalStatistic
from .errors import FormatError, ReferenceError_
from .geometry import (
    METHODS,
    Distance,
    EmbeddingFeatures,
    EmbeddingSpace,
    Method,
    SpaceFit,
    cross_fitted_features,
)
from .profile import WindowProfile
from .serial import pack, unpack
from .text import text_features

__all__ = ["METHODS", "Method", "Reference", "build_reference"]

FORMAT = "embmon-reference/1"
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Reference:
    """A built reference. Use :func:`build_reference` to make one, :meth:`load` to read one."""

    space: EmbeddingSpace
    profile: WindowProfile
    calibration: Calibration
    statistic: CategoricalStatistic
    method: str
    info: dict[str, Any] = field(default_factory=dict)
    profile_bytes: bytes = field(default=b"", repr=False, compare=False)
    """The exact profile bytes the version was computed over (sketch bytes are not canonical:
    reading a KLL sketch re-sorts it), written back unchanged by :meth:`save`."""

    @property
    def dim(self) -> int:
        return self.space.dim

    @property
    def labels(self) -> tuple[str, ...]:
        return self.space.labels

    @property
    def distance(self) -> Distance:
        return self.space.distance

    @property
    def version(self) -> str:
        return self.profile.reference_version

    @property
    def classification_f1(self) -> float | None:
        """Macro F1 of the reference rows, when they carried predictions and targets."""
        return self.profile.confusion.f1_macro() if self.profile.confusion.total else None

    def new_profile(self) -> WindowProfile:
        """An empty window profile bound to this reference."""
        return WindowProfile.empty(self.space, self.version)

    def threshold(self, metric: str, sample_size: int) -> float | None:
        return self.calibration.threshold(metric, sample_size)

    def save(self, directory: str | Path) -> Path:
        """Write ``reference.json``, ``arrays.npz`` and ``profile.bin`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "arrays.npz").write_bytes(_arrays_bytes(self.space))
        (out / "profile.bin").write_bytes(self.profile_bytes or self.profile.to_bytes())
        meta = {
            "format": FORMAT,
            "version": self.version,
            "method": self.method,
            "distance": self.space.distance,
            "statistic": self.statistic,
            "labels": list(self.space.labels),
            "dim": self.dim,
            "components": self.space.n_components,
            "calibration": self.calibration.to_dict(),
            "classification_f1": self.classification_f1,
            "info": self.info,
        }
        (out / "reference.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Reference:
        """Read a saved reference and check its content against its version hash."""
        src = Path(directory)
        try:
            meta = orjson.loads((src / "reference.json").read_bytes())
            profile_bytes = (src / "profile.bin").read_bytes()
            arrays_bytes = (src / "arrays.npz").read_bytes()
        except (OSError, ValueError) as exc:
            raise ReferenceError_(
                f"cannot read a reference from {src}: {exc}; build one with `embmon reference build`"
            ) from exc
        try:
            with np.load(io.BytesIO(arrays_bytes), allow_pickle=False) as arrays:
                centroids, mean, components = (
                    arrays["centroids"],
                    arrays["mean"],
                    arrays["components"],
                )
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise FormatError(f"{src}/reference.json is not an {FORMAT} file")
            space = EmbeddingSpace(
                centroids=centroids,
                labels=tuple(meta["labels"]),
                distance=meta["distance"],
                mean=mean,
                components=components,
            )
            calibration = Calibration.from_dict(meta["calibration"])
            version = _content_hash(space, calibration, meta["statistic"], profile_bytes)
            profile = WindowProfile.from_bytes(profile_bytes, space)
        except (KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise FormatError(f"reference in {src} is corrupt: {exc}") from exc
        if version != meta["version"] or profile.reference_version != version:
            raise FormatError(
                f"reference in {src} is corrupt: its content does not match {meta['version']}"
            )
        return cls(
            space,
            profile,
            calibration,
            meta["statistic"],
            meta["method"],
            meta.get("info", {}),
            profile_bytes,
        )


def _arrays_bytes(space: EmbeddingSpace) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, centroids=space.centroids, mean=space.mean, components=space.components)
    return buffer.getvalue()


def _content_hash(
    space: EmbeddingSpace, calibration: Calibration, statistic: str, profile_body: bytes
) -> str:
    digest = hashlib.sha256()
    for array in (space.centroids, space.mean, space.components):
        digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    digest.update(orjson.dumps([list(space.labels), space.distance, statistic]))
    digest.update(orjson.dumps(calibration.to_dict(), option=orjson.OPT_SORT_KEYS))
    digest.update(_without_version(profile_body))
    return "sha256:" + digest.hexdigest()[:32]


def _without_version(profile_bytes: bytes) -> bytes:
    """Profile bytes with the version blanked (the version is what is being computed)."""
    return _with_version(profile_bytes, "")


def _with_version(profile_bytes: bytes, version: str) -> bytes:
    """The same profile bytes with another version in the header; the sketch blobs untouched."""
    header, blobs = unpack(profile_bytes, "window_profile")
    return pack("window_profile", {**header, "reference": version}, blobs)


def _finite(vectors: npt.ArrayLike) -> F32:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ReferenceError_("reference vectors contain NaN or Inf; clean them first")
    return x


def _labels(
    labels: Sequence[Any] | npt.NDArray[Any] | None, rows: int
) -> npt.NDArray[np.str_] | None:
    """Labels as names (strings: ``3``, ``np.int64(3)`` and ``"3"`` are all ``"3"``)."""
    if labels is None:
        return None
    y = np.asarray([str(v) for v in labels])
    if y.shape[0] != rows:
        raise ReferenceError_(f"{rows} vectors but {y.shape[0]} labels")
    return y


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _label_key(name: str) -> tuple[int, Decimal, str]:
    """Numbers first, by value (exactly, as decimals), then the other names as strings."""
    if _NUMBER.fullmatch(name):
        return 0, Decimal(name), name
    return 1, Decimal(0), name


def _label_order(labels: npt.NDArray[np.str_]) -> tuple[str, ...]:
    """The distinct labels in centroid order: numeric labels in numeric order (``2 < 10``).

    Labels read from ``.npy``/``.txt``/JSON arrive as strings; sorting those as strings would
    put ``10`` before ``2``, unlike whylogs' selector on the same integer labels.

    >>> _label_order(np.array(["10", "2", "b", "0", "a", "-1.5"]))
    ('-1.5', '0', '2', '10', 'a', 'b')
    """
    return tuple(sorted((str(v) for v in np.unique(labels)), key=_label_key))


@dataclass(frozen=True)
class _Split:
    """Which rows make the profile, which calibrate, and the cross-fitting fold of each row."""

    profile: npt.NDArray[np.intp]
    holdout: npt.NDArray[np.intp]
    folds: npt.NDArray[np.intp]


def _groups(rows: int, labels: npt.NDArray[np.str_] | None) -> list[npt.NDArray[np.intp]]:
    if labels is None:
        return [np.arange(rows)]
    return [np.flatnonzero(labels == name) for name in _label_order(labels)]


def _split(
    rows: int, labels: npt.NDArray[np.str_] | None, holdout: float, folds: int, seed: int
) -> _Split:
    """Stratified (by label, if any) profile / holdout rows, and folds dealt round-robin.

    Each label's rows are shuffled once; the first ``holdout`` share of them calibrates, the
    rest profile, and consecutive rows go to consecutive folds (continuing across labels), so
    every fold holds every label and both parts spread evenly over the folds.
    """
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(rows, dtype=np.intp)
    prof, hold = [], []
    dealt = 0
    for group in _groups(rows, labels):
        order = rng.permutation(group)
        fold_of[order] = (dealt + np.arange(order.size)) % folds
        dealt += order.size
        n_hold = round(order.size * holdout)
        hold.append(order[:n_hold])
        prof.append(order[n_hold:])
    return _Split(np.concatenate(prof), np.concatenate(hold), fold_of)


def _recipe(
    method: Method,
    labels: npt.NDArray[np.str_] | None,
    *,
    components: int,
    clusters: int,
    distance: Distance,
    seed: int,
    centroids: npt.ArrayLike | None,
    centroid_labels: Sequence[str] | None,
) -> SpaceFit:
    """The fitting recipe of ``method``, checked before anything is fitted."""
    if method == "pca-centroids":
        if labels is None:
            raise ReferenceError_(
                "pca-centroids needs labels (--labels, or a label field of the events)"
            )
        return SpaceFit(method, _label_order(labels), components, distance, seed)
    if method == "manual":
        if centroids is None:
            raise ReferenceError_("method manual needs a centroids matrix (--centroids FILE.npy)")
        given = np.asarray(centroids, dtype=np.float32)
        names = tuple(centroid_labels or [f"centroid-{i}" for i in range(given.shape[0])])
        return SpaceFit(method, names, components, distance, seed, given)
    if method in ("kmeans", "pca-kmeans"):
        names = tuple(f"cluster-{i}" for i in range(clusters))
        return SpaceFit(method, names, components, distance, seed)
    raise ReferenceError_(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def _check_shares(holdout: float, profile_share: float, folds: int | None) -> None:
    """``folds`` is None when nothing is cross-fitted (the fit has its own rows)."""
    if holdout <= 0 or profile_share <= 0:
        raise ReferenceError_(
            f"holdout and profile_share must both be positive, got {holdout} and {profile_share}"
        )
    if folds is not None and folds < 2:
        raise ReferenceError_(f"cross-fitting needs at least 2 folds, got {folds}")


def _check_sizes(total: int, fit: int, split: _Split) -> None:
    if min(fit, len(split.profile), len(split.holdout)) < 20:
        raise ReferenceError_(
            f"{total} rows are too few: the fit, profile and holdout parts need at least 20 each"
            f" (got {fit}/{len(split.profile)}/{len(split.holdout)})"
        )


def _profile(
    space: EmbeddingSpace, features: EmbeddingFeatures, batch: EventBatch
) -> WindowProfile:
    """The reference profile of rows whose features are already computed (out of fold)."""
    profile = WindowProfile.empty(space, "")
    profile.update_features(
        features,
        text=None if batch.tokens is None else text_features(batch.tokens),
        predictions=batch.predictions,
        targets=batch.targets,
    )
    return profile


def build_reference(
    batch: EventBatch,
    labels: Sequence[Any] | npt.NDArray[Any] | None = None,
    *,
    method: Method = "pca-centroids",
    components: int = 20,
    clusters: int = 8,
    distance: Distance = "cosine",
    alpha: float = 0.01,
    statistic: CategoricalStatistic = "hellinger",
    centroids: F32 | None = None,
    centroid_labels: Sequence[str] | None = None,
    holdout: float = 0.25,
    profile_share: float = 0.25,
    rounds: int = 300,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    fit_rows: EventBatch | None = None,
    fit_labels: Sequence[Any] | npt.NDArray[Any] | None = None,
    folds: int = 5,
) -> Reference:
    """Build a reference from training rows (embeddings, and tokens/predictions if any).

    ``labels`` (one per row) drive ``pca-centroids`` and stratify the splits; ``manual``
    takes ``centroids`` (and optional ``centroid_labels``) instead of fitting them. The space
    is fitted on all of ``batch`` and its rows are scored out of fold (``folds`` folds); they
    are split into profile and holdout rows in the ratio ``profile_share : holdout``. Pass
    ``fit_rows`` (and ``fit_labels``), e.g. the model's training set, to fit the space on them
    instead; ``batch`` is then only scored and split (no cross-fitting: the fit never saw it).
    """
    x = _finite(batch.embeddings)
    y = _labels(labels, x.shape[0])
    cross_fit = fit_rows is None
    _check_shares(holdout, profile_share, folds if cross_fit else None)
    share = holdout / (holdout + profile_share)
    split = _split(x.shape[0], y, share, folds if cross_fit else 1, seed)
    x_fit, y_fit = x, y
    if fit_rows is not None:
        x_fit = _finite(fit_rows.embeddings)
        y_fit = _labels(fit_labels, x_fit.shape[0])
    _check_sizes(x.shape[0], x_fit.shape[0], split)
    recipe = _recipe(
        method,
        y_fit,
        components=components,
        clusters=clusters,
        distance=distance,
        seed=seed,
        centroids=centroids,
        centroid_labels=centroid_labels,
    )
    space = recipe.fit(x_fit, y_fit)
    features = (
        cross_fitted_features(recipe, space, x, y, split.folds) if cross_fit else space.features(x)
    )
    draft = _profile(space, features.take(split.profile), batch.take(split.profile))
    calibration = calibrate(
        lambda: WindowProfile.empty(space, ""),
        draft,
        features.take(split.holdout),
        batch.take(split.holdout),
        alpha=alpha,
        statistic=statistic,
        sizes=sizes,
        rounds=rounds,
        seed=seed,
        progress=progress,
    )
    draft_bytes = draft.to_bytes()
    version = _content_hash(space, calibration, statistic, draft_bytes)
    draft.reference_version = version
    info = {
        "rows": {
            "fit": int(x_fit.shape[0]),
            "profile": len(split.profile),
            "holdout": len(split.holdout),
            "folds": folds if cross_fit else 0,
        },
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    return Reference(
        space,
        draft,
        calibration,
        statistic,
        method,
        cast(dict[str, Any], info),
        _with_version(draft_bytes, version),
    )
