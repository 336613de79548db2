"""The records of the profiles topic: what collectors publish and evaluators merge.

A collector cuts each input partition into *chunks* of offsets ``[start, end)`` and publishes,
per chunk, one :class:`Piece` per window the chunk has events of (the window's profile over
those events only), then one :class:`Seal` on every partition of the profiles topic. A piece
goes to the profiles partition of its model (:func:`shard_of`: Kafka's default partitioner
for the model as key), so each evaluator sees every piece of the models it owns, in the order
published, and every seal. A seal says what the chunk covers, how many pieces it put on that
profiles partition, and the input partition's watermark at the chunk's end; an evaluator
applies a chunk's pieces only when its seal arrives, so a collector killed half-way through
publishing leaves nothing applied.

Chunks end where the input partition's watermark crosses a window boundary (``agent.collector``
says why this makes them the same whoever reads the partition), so a chunk published twice (a
crash after publishing, before committing) covers the same offsets twice and an evaluator drops
the second copy. A *tail* is the open chunk published as it stands (a caught-up partition, or
the end of a bounded run): provisional, replaced by the next tail or by the chunk of the same
start.

Both are :mod:`sketches.serial` bytes (a magic, a format version, a kind tag), so a foreign or
future record is refused with a clear error, never misread.

>>> span = Span("events", 3, 100, 250)
>>> seal = Seal(span, "a1", watermark=1_700_000_060.0, pieces=2, partitions=6)
>>> decode(seal.to_bytes()) == seal
True
>>> 0 <= shard_of("news", 6) < 6
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kafka.partitioner.default import murmur2

from exporters.records import SegmentKey
from sketches.errors import FormatError
from sketches.serial import pack, unpack

from .window_types import WindowKey

__all__ = ["Piece", "Seal", "Span", "decode", "shard_of"]

_PIECE = "partial_piece"
_SEAL = "partial_seal"


def shard_of(model: str, partitions: int) -> int:
    """The profiles partition of ``model``'s pieces: Kafka's default partitioner for the key."""
    return (int(murmur2(model.encode("utf-8", "surrogatepass"))) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, order=True)
class Span:
    """Offsets ``[start, end)`` of one input partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def source(self) -> tuple[str, int]:
        return self.topic, self.partition

    def _json(self) -> list[Any]:
        return [self.topic, self.partition, self.start, self.end]


@dataclass(frozen=True)
class Piece:
    """One window's profile over the events of one chunk; ``profile`` is its bytes."""

    span: Span
    attempt: str
    key: WindowKey
    events: int
    profile: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        header = {
            "span": self.span._json(),
            "attempt": self.attempt,
            "model": self.key.model,
            "segment": self.key.segment.as_dict(),
            "start": self.key.start,
            "events": self.events,
        }
        return pack(_PIECE, header, [self.profile])


@dataclass(frozen=True, eq=True)
class Seal:
    """The end of a chunk's publication on one profiles partition.

    ``pieces``: how many pieces of this chunk (this ``attempt``) precede it on that partition.
    ``watermark``: the largest event time of the input partition below ``span.end`` (None: no
    event yet). ``tail``: the chunk is still open (provisional). ``caught_up``: the partition
    had no backlog when sealed. ``final``: the collector stopped at its end offset
    (``--until-end``). ``rejected``: records of the chunk not in any piece, by reason (``late``
    included). ``partitions``: how many partitions the input topic has.
    """

    span: Span
    attempt: str
    watermark: float | None
    pieces: int
    partitions: int
    tail: bool = False
    caught_up: bool = False
    final: bool = False
    rejected: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def settles(self) -> bool:
        """Its events are accounted for good: a chunk's, or a final tail's (no chunk follows)."""
        return not self.tail or self.final

    def to_bytes(self) -> bytes:
        header = {
            "span": self.span._json(),
            "attempt": self.attempt,
            "watermark": self.watermark,
            "pieces": self.pieces,
            "partitions": self.partitions,
            "tail": self.tail,
            "caught_up": self.caught_up,
            "final": self.final,
            "rejected": dict(self.rejected),
        }
        return pack(_SEAL, header, [])


def decode(data: bytes) -> Piece | Seal:
    """A record of the profiles topic; :class:`FormatError` if it is not one."""
    kind = _kind(data)
    header, blobs = unpack(data, kind)
    try:
        span = Span(*header["span"])
        if kind == _PIECE:
            key = WindowKey(header["model"], SegmentKey.of(header["segment"]), header["start"])
            return Piece(span, header["attempt"], key, int(header["events"]), blobs[0])
        return Seal(
            span,
            header["attempt"],
            header["watermark"],
            int(header["pieces"]),
            int(header["partitions"]),
            tail=bool(header["tail"]),
            caught_up=bool(header["caught_up"]),
            final=bool(header["final"]),
            rejected=MappingProxyType({str(k): int(v) for k, v in header["rejected"].items()}),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FormatError(f"malformed {kind} record: {exc}") from exc


def _kind(data: bytes) -> str:
    """The kind tag of serial bytes (``unpack`` checks it again, with the magic and version)."""
    tag = bytes(data[6 : 6 + data[5]]) if len(data) > 6 else b""
    for kind in (_PIECE, _SEAL):
        if tag == kind.encode("ascii"):
            return kind
    raise FormatError(
        "not a record of the profiles topic (expected embmon partial-profile bytes); is "
        "--profiles-topic shared with something else?"
    )
