"""Reference: what "normal" looks like, built once from training data, loaded by every agent.

A reference holds the embedding space (centroids with names, distance, PCA subspace), the
profile of reference traffic, and drift thresholds calibrated for every window size (see
:mod:`sketches.calibration`). Its version is a content hash, so windows always say which
reference judged them.

Rows are split three ways (stratified by label when there are labels): ``fit`` rows fit the PCA
and the centroids, ``profile`` rows make the reference profile, and ``holdout`` rows — used
for nothing else — calibrate the thresholds.

>>> import numpy as np
>>> from sketches.batch import EventBatch
>>> rng = np.random.default_rng(0)
>>> x = np.vstack([rng.normal(m, 1, (200, 8)) for m in (0, 3)]).astype(np.float32)
>>> y = np.repeat(["a", "b"], 200)
>>> ref = build_reference(EventBatch.from_vectors(x), y, method="pca-centroids",
...                       components=4, rounds=50, sizes=(10, 100))
>>> ref.space.labels, ref.dim, ref.version.startswith("sha256:")
(('a', 'b'), 8, True)
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import orjson

from .batch import EventBatch
from .calibration import DEFAULT_SIZES, Calibration, calibrate
from .drift import CategoricalStatistic
from .errors import FormatError, ReferenceError_
from .geometry import Distance, EmbeddingSpace, fit_pca, kmeans_centroids
from .profile import WindowProfile
from .serial import pack, unpack

__all__ = ["METHODS", "Reference", "build_reference"]

Method = Literal["pca-centroids", "kmeans", "pca-kmeans", "manual"]
METHODS: tuple[Method, ...] = ("pca-centroids", "kmeans", "pca-kmeans", "manual")
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
    labels: Sequence[str] | npt.NDArray[Any] | None, rows: int
) -> npt.NDArray[np.str_] | None:
    if labels is None:
        return None
    y = np.asarray([str(v) for v in labels])
    if y.shape[0] != rows:
        raise ReferenceError_(f"{rows} vectors but {y.shape[0]} labels")
    return y


def _split(
    rows: int, labels: npt.NDArray[np.str_] | None, holdout: float, profile_share: float, seed: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Stratified (by label, if any) fit / profile / holdout row indices."""
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(rows)]
        if labels is None
        else [np.flatnonzero(labels == v) for v in np.unique(labels)]
    )
    fit, prof, hold = [], [], []
    for group in groups:
        order = rng.permutation(group)
        n_hold = round(len(order) * holdout)
        n_prof = round(len(order) * profile_share)
        hold.append(order[:n_hold])
        prof.append(order[n_hold : n_hold + n_prof])
        fit.append(order[n_hold + n_prof :])
    return np.concatenate(fit), np.concatenate(prof), np.concatenate(hold)


def _centroids(
    method: Method,
    x: F32,
    labels: npt.NDArray[np.str_] | None,
    mean: F32,
    components: F32,
    clusters: int,
    distance: Distance,
    seed: int,
) -> tuple[F32, list[str]]:
    if method == "pca-centroids":
        if labels is None:
            raise ReferenceError_(
                "pca-centroids needs labels (--labels, or a label field of the events)"
            )
        names = [str(v) for v in np.unique(labels)]
        coords = (x - mean) @ components.T
        means = np.stack([coords[labels == name].mean(axis=0) for name in names])
        return (mean + means @ components).astype(np.float32), names
    names = [f"cluster-{i}" for i in range(clusters)]
    if method == "kmeans":
        data = (
            x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            if distance == "cosine"
            else x
        )
        return kmeans_centroids(data.astype(np.float32), clusters, seed), names
    if method == "pca-kmeans":
        coords = ((x - mean) @ components.T).astype(np.float32)
        return (mean + kmeans_centroids(coords, clusters, seed) @ components).astype(
            np.float32
        ), names
    raise ReferenceError_(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def build_reference(
    batch: EventBatch,
    labels: Sequence[str] | npt.NDArray[Any] | None = None,
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
    fit_labels: Sequence[str] | npt.NDArray[Any] | None = None,
) -> Reference:
    """Build a reference from training rows (embeddings, and tokens/predictions if any).

    ``labels`` (one per row) drive ``pca-centroids`` and stratify the split; ``manual`` takes
    ``centroids`` (and optional ``centroid_labels``) instead of fitting them. Pass ``fit_rows``
    (and ``fit_labels``), e.g. the model's training set, to fit the PCA and centroids on them;
    ``batch`` is then split into profile and holdout rows only.
    """
    x = _finite(batch.embeddings)
    y = _labels(labels, x.shape[0])
    if fit_rows is None:
        fit, prof, hold = _split(x.shape[0], y, holdout, profile_share, seed)
        x_fit, y_fit = x[fit], None if y is None else y[fit]
    else:
        share = holdout / (holdout + profile_share)
        fit, prof, hold = _split(x.shape[0], y, share, 1.0 - share, seed)
        x_fit = _finite(fit_rows.embeddings)
        y_fit = _labels(fit_labels, x_fit.shape[0])
    if min(x_fit.shape[0], len(prof), len(hold)) < 20:
        raise ReferenceError_(
            f"{x.shape[0]} rows are too few: each of the fit/profile/holdout parts needs at least 20"
        )
    mean, comps = fit_pca(x_fit, components, seed)
    if method == "manual":
        if centroids is None:
            raise ReferenceError_("method manual needs a centroids matrix (--centroids FILE.npy)")
        cents = np.asarray(centroids, dtype=np.float32)
        names = list(centroid_labels or [f"centroid-{i}" for i in range(cents.shape[0])])
    else:
        cents, names = _centroids(method, x_fit, y_fit, mean, comps, clusters, distance, seed)
    space = EmbeddingSpace(cents, tuple(names), distance, mean, comps)
    draft = WindowProfile.empty(space, "")
    draft.update(batch.take(prof))
    held = batch.take(hold)
    calibration = calibrate(
        lambda: WindowProfile.empty(space, ""),
        draft,
        space.features(held.embeddings),
        held,
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
        "rows": {"fit": int(x_fit.shape[0]), "profile": len(prof), "holdout": len(hold)},
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
