"""The record of a closed window: what ``windows.jsonl`` holds and every output is built from.

One :class:`WindowRecord` per closed (model, segment, window); see docs/contracts.md for the
JSON. In the scaled layout (``embmon run --role evaluator``) a window not complete after its
grace period is emitted as a *partial* record (``complete`` false) and emitted again when the
missing part arrives, so a log may hold several records of one key: the last one stands
(``exporters.windows_log.latest_windows``). The Prometheus collector, the console table, the report and the OpenMetrics backfill all
read these records, so a replay and a live run can never disagree on what a window showed.
:class:`SegmentKey` computes a segment's label once, canonically (keys sorted), so the live
series and a backfilled history of one segment are the same Prometheus series.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sketches.drift import DriftResult
from sketches.errors import FormatError
from sketches.profile import WindowProfile

__all__ = [
    "DISTANCE_QUANTILES",
    "FORMAT_VERSION",
    "TOP_TERMS",
    "Classification",
    "SegmentKey",
    "TextSummary",
    "WindowRecord",
    "format_time",
    "parse_time",
]

FORMAT_VERSION = 1
DISTANCE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TOP_TERMS = 10


def format_time(epoch_seconds: float) -> str:
    """UTC ISO 8601 with a ``Z``, second precision when whole.

    >>> format_time(0), format_time(1.5)
    ('1970-01-01T00:00:00Z', '1970-01-01T00:00:01.500000Z')
    """
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Inverse of :func:`format_time` (any ISO 8601 with a zone; naive means UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class SegmentKey:
    """The kept segment keys of an event, sorted by key; ``label`` is ``k1=v1,k2=v2``.

    ``\\``, ``,`` and ``=`` in keys and values are escaped with a backslash, so distinct
    segments never share a label (it names a Prometheus series and a profile directory).

    >>> s = SegmentKey.of({"tier": "gold", "region": "eu"})
    >>> s.label, s.pairs == SegmentKey.of([("region", "eu"), ("tier", "gold")]).pairs
    ('region=eu,tier=gold', True)
    >>> SegmentKey.of({}).label, bool(SegmentKey.of({}))
    ('', False)
    >>> print(SegmentKey.of({"region": "eu,tier=gold"}).label)
    region=eu\\,tier\\=gold
    """

    pairs: tuple[tuple[str, str], ...] = ()
    label: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.pairs))
        if len({k for k, _ in ordered}) != len(ordered):
            raise ValueError(f"segment keys must be distinct, got {list(self.pairs)}")
        object.__setattr__(self, "pairs", ordered)
        label = ",".join(f"{_escape(k)}={_escape(v)}" for k, v in ordered)
        object.__setattr__(self, "label", label)

    @classmethod
    def of(cls, segment: Mapping[str, str] | Iterable[tuple[str, str]]) -> SegmentKey:
        items = segment.items() if isinstance(segment, Mapping) else segment
        return cls(tuple((str(k), str(v)) for k, v in items))

    def as_dict(self) -> dict[str, str]:
        return dict(self.pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


@dataclass(frozen=True)
class Classification:
    """Classification quality of a window's labelled events (macro averages over classes)."""

    labelled: int
    accuracy: float
    f1_macro: float
    precision_macro: float
    recall_macro: float
    per_class: Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class TextSummary:
    """Text statistics of a window whose events carried text or tokens."""

    documents: int
    terms: int
    doc_length_median: float
    term_length_median: float | None
    distinct_terms: float


@dataclass(frozen=True)
class WindowRecord:
    """A closed window of one (model, segment): its drift verdicts and its read-outs.

    ``start`` and ``end`` are epoch seconds; ``reference`` is the version of the reference that
    judged it. ``complete`` is false for a *partial* record: an evaluator judged the window
    after its grace period without every collector's part (a later record of the same
    :attr:`key` supersedes it). A single process always writes complete records.

    >>> from sketches.drift import DriftResult
    >>> r = WindowRecord("m", SegmentKey(), 0, 60, 5, {"closest_centroid":
    ...     DriftResult("hellinger", 0.1, 0.2, False)}, {"a": 1.0}, {}, "r", complete=False)
    >>> r.to_json()["complete"], WindowRecord.from_json(r.to_json()) == r
    (False, True)
    >>> old = r.to_json()
    >>> del old["complete"]
    >>> WindowRecord.from_json(old).complete  # written before the field existed
    True
    """

    model: str
    segment: SegmentKey
    start: int
    end: int
    events: int
    drift: Mapping[str, DriftResult]
    closest_centroid: Mapping[str, float]
    centroid_distance: Mapping[str, Mapping[str, float]]
    reference: str
    invalid: int = 0
    classification: Classification | None = None
    predictions: Mapping[str, float] | None = None
    frequent_terms: tuple[tuple[str, int], ...] = ()
    text: TextSummary | None = None
    complete: bool = True

    @property
    def drifted(self) -> bool:
        return any(result.drifted for result in self.drift.values())

    @property
    def key(self) -> tuple[str, SegmentKey, int]:
        """(model, segment, start): one window; the last record of a key in a log stands."""
        return self.model, self.segment, self.start

    @classmethod
    def from_profile(
        cls,
        model: str,
        segment: SegmentKey,
        start: int,
        end: int,
        profile: WindowProfile,
        drift: Mapping[str, DriftResult],
        *,
        complete: bool = True,
    ) -> WindowRecord:
        """The record of a closed window's final profile and its drift results (``complete``
        false: the profile lacks a part, see :class:`WindowRecord`)."""
        confusion, text = profile.confusion, profile.text
        classification = None
        if confusion.total:
            classification = Classification(
                labelled=confusion.total,
                accuracy=confusion.accuracy(),
                f1_macro=confusion.f1_macro(),
                precision_macro=confusion.precision_macro(),
                recall_macro=confusion.recall_macro(),
                per_class=confusion.per_class(),
            )
        summary = None
        if text.documents:
            summary = TextSummary(
                documents=text.documents,
                terms=int(text.terms.total_weight),
                doc_length_median=float(text.doc_length.quantiles(0, [0.5])[0]),
                term_length_median=(
                    float(text.term_length.quantiles(0, [0.5])[0])
                    if text.term_length.count
                    else None
                ),
                distinct_terms=float(text.distinct.estimate()),
            )
        return cls(
            model=model,
            segment=segment,
            start=start,
            end=end,
            events=profile.count,
            drift=dict(sorted(drift.items())),
            closest_centroid=profile.closest.ratios(),
            centroid_distance={
                label: {str(q): float(v) for q, v in zip(DISTANCE_QUANTILES, vals, strict=True)}
                for label, vals in profile.distance_quantiles(DISTANCE_QUANTILES).items()
            },
            reference=profile.reference_version,
            invalid=profile.invalid,
            classification=classification,
            predictions=profile.predictions.ratios() if profile.predictions.total else None,
            frequent_terms=tuple(text.terms.top(TOP_TERMS)) if text.documents else (),
            text=summary,
            complete=complete,
        )

    def to_json(self) -> dict[str, Any]:
        """The ``windows.jsonl`` object (docs/contracts.md), with its format version ``v``."""
        out: dict[str, Any] = {"v": FORMAT_VERSION, "model": self.model}
        if self.segment:
            out["segment"] = self.segment.as_dict()
        out.update(
            window_start=format_time(self.start),
            window_end=format_time(self.end),
            events=self.events,
            complete=self.complete,
            drifted=self.drifted,
            drift={name: result.to_dict() for name, result in self.drift.items()},
            closest_centroid=dict(self.closest_centroid),
            centroid_distance={k: dict(v) for k, v in self.centroid_distance.items()},
        )
        if self.invalid:
            out["invalid"] = self.invalid
        if self.classification is not None:
            c = self.classification
            out["classification"] = {
                "labelled": c.labelled,
                "accuracy": c.accuracy,
                "f1_macro": c.f1_macro,
                "precision_macro": c.precision_macro,
                "recall_macro": c.recall_macro,
                "per_class": {k: dict(v) for k, v in c.per_class.items()},
            }
        if self.predictions is not None:
            out["predictions"] = dict(self.predictions)
        if self.text is not None:
            out["frequent_terms"] = [[t, c] for t, c in self.frequent_terms]
            t = self.text
            out["text"] = {
                "documents": t.documents,
                "terms": t.terms,
                "doc_length_median": t.doc_length_median,
                "term_length_median": t.term_length_median,
                "distinct_terms": t.distinct_terms,
            }
        out["reference"] = self.reference
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> WindowRecord:
        """Read a ``windows.jsonl`` object; records without ``v`` are the first wave's format."""
        version = obj.get("v", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise FormatError(
                f"window record has format version {version!r}; this embmon reads version "
                f"{FORMAT_VERSION}: upgrade embmon to read it"
            )
        try:
            return cls._from_json(obj)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"not a window record ({exc!r}): {str(dict(obj))[:200]}") from exc

    @classmethod
    def _from_json(cls, obj: Mapping[str, Any]) -> WindowRecord:
        c, t = obj.get("classification"), obj.get("text")
        return cls(
            model=str(obj["model"]),
            segment=SegmentKey.of(obj.get("segment") or {}),
            start=round(parse_time(obj["window_start"])),
            end=round(parse_time(obj["window_end"])),
            events=int(obj["events"]),
            drift={
                name: DriftResult(
                    str(r["statistic"]),
                    float(r["score"]),
                    None if r.get("threshold") is None else float(r["threshold"]),
                    bool(r["drifted"]),
                    tuple((str(c["part"]), float(c["value"])) for c in r.get("contributors", ())),
                )
                for name, r in obj["drift"].items()
            },
            closest_centroid={str(k): float(v) for k, v in obj["closest_centroid"].items()},
            centroid_distance={
                str(k): {str(q): float(x) for q, x in v.items()}
                for k, v in obj.get("centroid_distance", {}).items()
            },
            reference=str(obj.get("reference", "")),
            invalid=int(obj.get("invalid", 0)),
            classification=None if c is None else Classification(**c),
            predictions=obj.get("predictions"),
            frequent_terms=tuple((str(term), int(n)) for term, n in obj.get("frequent_terms", [])),
            text=None if t is None else _text_summary(t),
            complete=_flag(obj.get("complete", True), "complete"),
        )


def _flag(value: object, name: str) -> bool:
    """A JSON boolean (``"false"`` or ``0`` is no flag: refused, not read as true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _text_summary(t: Mapping[str, Any]) -> TextSummary:
    """``text`` of a record; the first wave's records lack ``terms`` (then 0: no term ratios)."""
    median = t.get("term_length_median")
    return TextSummary(
        documents=int(t["documents"]),
        terms=int(t.get("terms", 0)),
        doc_length_median=float(t["doc_length_median"]),
        term_length_median=None if median is None else float(median),
        distinct_terms=float(t["distinct_terms"]),
    )
