"""Where each part of an inference event lives in the user's JSON.

Producers rarely agree on field names, and many wrap the payload (``{"payload": {"vector":
[...]}}``), so every field the decoder reads is configurable, and a dotted path reaches into
nested objects. Paths are split once here so the per-record work in the decoder is a few
dictionary lookups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

__all__ = ["FieldMap", "get_path"]


@dataclass(frozen=True)
class FieldMap:
    """Configurable field names (dotted paths) of an event.

    The defaults are the names of the event contract. ``from_mapping`` builds one from the
    ``fields`` section of the configuration and refuses names it does not know, so a typo such
    as ``embeding`` fails at start-up instead of rejecting every event as ``missing_embedding``.

    >>> fm = FieldMap.from_mapping({"embedding": "payload.vector"})
    >>> fm.embedding, fm.text
    ('payload.vector', 'text')
    >>> fm.path("embedding")
    ('payload', 'vector')
    """

    event_id: str = "event_id"
    timestamp: str = "timestamp"
    model: str = "model"
    embedding: str = "embedding"
    embedding_b64: str = "embedding_b64"
    text: str = "text"
    tokens: str = "tokens"
    prediction: str = "prediction"
    target: str = "target"
    segment: str = "segment"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not all(value.split(".")):
                raise ValueError(
                    f"fields.{f.name} must be a field name or a dotted path such as "
                    f"'payload.vector', got {value!r}"
                )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str]) -> FieldMap:
        """A field map overriding the defaults with the given names (configuration ``fields``)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(
                f"unknown event field(s) {', '.join(unknown)} in 'fields'; "
                f"known fields are {', '.join(sorted(known))}"
            )
        return replace(cls(), **dict(mapping))

    def path(self, name: str) -> tuple[str, ...]:
        """The path of field ``name`` split into its keys."""
        return tuple(str(getattr(self, name)).split("."))


def get_path(obj: dict[str, object], path: tuple[str, ...]) -> object:
    """The value at ``path`` in a decoded JSON object, or ``None`` when any step is absent.

    A step into something that is not an object also counts as absent: the field is not where
    the mapping says, which is what "missing" means to the decoder. (JSON objects decode to
    ``dict``; checking for ``dict`` rather than ``Mapping`` keeps this hot path cheap.)

    >>> get_path({"payload": {"vector": [1, 2]}}, ("payload", "vector"))
    [1, 2]
    >>> get_path({"payload": 3}, ("payload", "vector")) is None
    True
    """
    value: object = obj
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
