"""Reference: what "normal" looks like, built once from training data, loaded by every agent.

A reference holds the embedding space (centroids with names, distance, PCA subspace, residual
probes, each coordinate's training range), the profile of reference traffic, and drift
thresholds calibrated for every window size (see :mod:`sketches.calibration`). Its version is
a content hash, so windows always say which reference judged them.

The space is fitted on *all* the training rows given, so ``pca-centroids`` gives whylogs'
``PCACentroidsSelector`` centroids for the same input. The profile and the thresholds come
from the same rows scored out of fold (each of ``folds`` folds by the recipe fitted on the
others), split once more into a ``profile`` part, which makes the reference profile, and a
``holdout`` part, which calibrates the thresholds against it: :mod:`sketches.crossfit`
explains why and how the rows are dealt.

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
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson

from .batch import EventBatch
from .calibration import DEFAULT_SIZES, Calibration, calibrate
from .crossfit import (
    check_shares,
    check_sizes,
    finite_vectors,
    label_names,
    space_recipe,
    split_rows,
)
from .drift import CategoricalStatistic
from .errors import FormatError, ReferenceError_
from .geometry import (
    DEFAULT_PROBES,
    METHODS,
    Distance,
    EmbeddingFeatures,
    EmbeddingSpace,
    Method,
    cross_fitted_features,
)
from .profile import WindowProfile
from .sample import REFERENCE_CAPACITY, CoordinateSample, row_keys
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
                probes = arrays["probes"] if "probes" in arrays.files else None
                low, high = (arrays[k] if k in arrays.files else None for k in ("low", "high"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise FormatError(f"{src}/reference.json is not an {FORMAT} file")
            space = EmbeddingSpace(
                centroids=centroids,
                labels=tuple(meta["labels"]),
                distance=meta["distance"],
                mean=mean,
                components=components,
                probes=probes,
                low=low,
                high=high,
            )
            calibration = Calibration.from_dict(meta["calibration"])
            version = _content_hash(space, calibration, meta["statistic"], profile_bytes)
            profile = WindowProfile.from_bytes(profile_bytes, space)
        except (
            KeyError,
            ValueError,
            TypeError,
            EOFError,
            NotImplementedError,  # zipfile, on a flipped compression-method field
            zipfile.BadZipFile,
        ) as exc:
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
    arrays = {"centroids": space.centroids, "mean": space.mean, "components": space.components}
    if space.probes is not None:
        arrays["probes"] = space.probes
    if space.low is not None and space.high is not None:
        arrays["low"], arrays["high"] = space.low, space.high
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def _content_hash(
    space: EmbeddingSpace, calibration: Calibration, statistic: str, profile_body: bytes
) -> str:
    digest = hashlib.sha256()
    arrays = [space.centroids, space.mean, space.components]
    arrays += [a for a in (space.probes, space.low, space.high) if a is not None]
    for array in arrays:
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


def _profile(
    space: EmbeddingSpace,
    features: EmbeddingFeatures,
    batch: EventBatch,
    rows: npt.NDArray[np.intp],
) -> WindowProfile:
    """The reference profile of ``rows``, whose features (like every row's) were computed out
    of fold.

    Its coordinate sample, the baseline of every window's kernel test, holds *all* the rows
    (up to ``REFERENCE_CAPACITY``), held-out ones too: the calibration draws that test's null
    from splits of the same rows (:func:`sketches.mmd.split_null`), and the larger the
    baseline, the smaller the differences the test can tell from chance. On the detection
    benchmark's text reference (1,129 rows) that took 15 % Portuguese at n = 300 to 20 of 20
    windows on both seeds (19 and 20 before) and 15 % Italian at n = 100 from 2 to 3 and 6.
    """
    part = batch.take(rows)
    keys = row_keys(batch.embeddings)
    profile = WindowProfile.empty(space, "", REFERENCE_CAPACITY)
    profile.update_features(
        features.take(rows),
        keys[rows],
        text=None if part.tokens is None else text_features(part.tokens),
        predictions=part.predictions,
        targets=part.targets,
    )
    profile.sample = CoordinateSample(profile.sample.components, REFERENCE_CAPACITY)
    profile.sample.update(keys, features.sample_rows())
    return profile


def build_reference(
    batch: EventBatch,
    labels: Sequence[Any] | npt.NDArray[Any] | None = None,
    *,
    method: Method = "pca-centroids",
    components: int = 20,
    probes: int = DEFAULT_PROBES,
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
    takes ``centroids`` (and optional ``centroid_labels``) instead of fitting them.
    ``probes`` residual probes (:func:`sketches.geometry.residual_probes`) join the PCA
    coordinates in every window's coordinate sample; 0 leaves the sample in the subspace. The space
    is fitted on all of ``batch`` and its rows are scored out of fold (``folds`` folds); they
    are split into profile and holdout rows in the ratio ``profile_share : holdout``. Pass
    ``fit_rows`` (and ``fit_labels``), e.g. the model's training set, to fit the space on them
    instead; ``batch`` is then only scored and split (no cross-fitting: the fit never saw it).
    """
    x = finite_vectors(batch.embeddings)
    y = label_names(labels, x.shape[0])
    cross_fit = fit_rows is None
    check_shares(holdout, profile_share, folds if cross_fit else None)
    share = holdout / (holdout + profile_share)
    split = split_rows(x.shape[0], y, share, folds if cross_fit else 1, seed)
    x_fit, y_fit = x, y
    if fit_rows is not None:
        x_fit = finite_vectors(fit_rows.embeddings)
        y_fit = label_names(fit_labels, x_fit.shape[0])
    check_sizes(x.shape[0], x_fit.shape[0], split)
    recipe = space_recipe(
        method,
        y_fit,
        components=components,
        probes=probes,
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
    draft = _profile(space, features, batch, split.profile)
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
