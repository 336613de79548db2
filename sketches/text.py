"""Text statistics of a window: document length, term length, frequent and distinct terms.

Error bounds: lengths are KLL sketches (rank error 1.33 % at k=200), frequent terms a
frequent-items sketch (count error <= 0.34 % of all terms), distinct terms an HLL (about 3 %
at two standard deviations). Document count is exact.

>>> t = TextSketch()
>>> t.update([["hola", "de", "de"], None, ["the"]])
>>> t.documents, t.terms.top(1), float(t.doc_length.quantiles(0, [1.0])[0])
(2, [('de', 2)], 3.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import numpy.typing as npt

from .frequent import DistinctCount, FrequentItems
from .quantiles import QuantileSketch
from .serial import pack, reading, unpack

__all__ = ["COMPARED_TERMS", "TextFeatures", "TextSketch", "text_features"]

Ints = npt.NDArray[np.int64]
COMPARED_TERMS = 50  # top terms of each side that a comparison of two windows' terms reads


@dataclass(frozen=True)
class TextFeatures:
    """Token lists as integer ids into ``vocab``: cheap to sample, count and concatenate."""

    doc_lengths: Ints  # terms per document, one entry per document
    term_ids: Ints  # all terms of all documents, flattened
    vocab: npt.NDArray[np.object_]  # Python str objects: numpy's fixed-width str drops NULs


def text_features(tokens: Sequence[Sequence[str] | None]) -> TextFeatures:
    """Encode the documents that carry tokens (``None`` rows are skipped)."""
    docs = [doc for doc in tokens if doc is not None]
    index: dict[str, int] = {}
    ids = [index.setdefault(term, len(index)) for term in chain.from_iterable(docs)]
    return TextFeatures(
        np.fromiter((len(doc) for doc in docs), dtype=np.int64, count=len(docs)),
        np.asarray(ids, dtype=np.int64),
        np.fromiter(index, dtype=object, count=len(index)),
    )


class TextSketch:
    """Mergeable text summary; empty (zero documents) when events carry no text."""

    __slots__ = ("distinct", "doc_length", "documents", "term_length", "terms")

    def __init__(self) -> None:
        self.documents = 0
        self.doc_length = QuantileSketch(1)
        self.term_length = QuantileSketch(1)
        self.terms = FrequentItems()
        self.distinct = DistinctCount()

    def update(self, tokens: Sequence[Sequence[str] | None]) -> None:
        self.update_features(text_features(tokens))

    def update_features(self, features: TextFeatures) -> None:
        if features.doc_lengths.size == 0:
            return
        self.documents += int(features.doc_lengths.size)
        self.doc_length.update(features.doc_lengths)
        if features.term_ids.size == 0:
            return
        counts = np.bincount(features.term_ids, minlength=features.vocab.size)
        present = np.flatnonzero(counts)
        terms = features.vocab[present].tolist()
        self.terms.update_counts(terms, counts[present].tolist())
        self.distinct.update(terms)
        lengths = np.fromiter(map(len, terms), dtype=np.int64, count=len(terms))
        self.term_length.update(np.repeat(lengths, counts[present]))

    def merge(self, other: TextSketch) -> TextSketch:
        merged = TextSketch()
        merged.documents = self.documents + other.documents
        merged.doc_length = self.doc_length.merge(other.doc_length)
        merged.term_length = self.term_length.merge(other.term_length)
        merged.terms = self.terms.merge(other.terms)
        merged.distinct = self.distinct.merge(other.distinct)
        return merged

    def to_bytes(self) -> bytes:
        parts = [
            self.doc_length.to_bytes(),
            self.term_length.to_bytes(),
            self.terms.to_bytes(),
            self.distinct.to_bytes(),
        ]
        return pack("text", {"documents": self.documents}, parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> TextSketch:
        with reading("text"):
            header, (doc_length, term_length, terms, distinct) = unpack(data, "text")
            sketch = cls()
            sketch.documents = int(header["documents"])
            sketch.doc_length = QuantileSketch.from_bytes(doc_length)
            sketch.term_length = QuantileSketch.from_bytes(term_length)
            sketch.terms = FrequentItems.from_bytes(terms)
            sketch.distinct = DistinctCount.from_bytes(distinct)
            return sketch

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSketch) and all(
            getattr(self, name) == getattr(other, name) for name in TextSketch.__slots__
        )

    __hash__ = None  # type: ignore[assignment]
